"""Human preference study, pure: its design (``design``), assignment policy (``assignment``), statistics
(``statistics``), exports (``export``) and figures (``plots``).

The web/backend side stores studies and collects answers; nothing in this package touches the database.
"""
