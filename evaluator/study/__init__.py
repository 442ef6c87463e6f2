"""Human preference study: pure statistics (``statistics``) and figures (``plots``).

The web/backend side collects answers; this package only turns answer records into numbers and plots.
See METHODS.md, "Human preference study".
"""
