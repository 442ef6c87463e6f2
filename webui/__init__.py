"""MotionLab web UI: a Gradio Blocks app mounted into the FastAPI app at ``/ui`` (one server, one port).

    motionlab serve                                   # API + UI + local workers: open http://127.0.0.1:8000/ui
    app = create_app(settings, mount_ui=True)         # backend.api.main calls webui.mount(app)

The page is ``webui.app``, imported only when the UI is built (it loads gradio and the tabs); this module only
forwards to it, so the tabs never depend on the package they live in. Tabs (one module each): Generate
(``webui.generate``), Compare (``webui.compare``), Dashboard (``webui.dashboard``), Runs (``webui.runs``), Study
admin (``webui.study_admin``). The colour-wheel flow visualization is ``webui.flow_viz`` (pure numpy); video work
is ``webui.media``.

Access. The UI acts with an API key that the person pastes into the field at the top of the page; nothing is
created or filled in for them. ``motionlab serve`` prints an admin key the first time it starts; an admin can
create narrower keys with ``POST /v1/keys`` (e.g. scopes read + generate for a demo machine). The key is kept for
the browser tab; ticking "remember" also keeps it in the browser's local storage (until the server restarts, or
until it is cleared). Every action calls the ``/v1`` API in process with that key (``webui.client``), so the UI has
exactly the API's validation, limits, scopes and error messages. A few read-only look-ups use the backend's
service layer (``backend.services``, the only other module of ``backend`` the UI imports): who a key belongs to, a
run config check, a checkpoint's directory, and the worker's timing record of a video; the files of a run or
benchmark are read from the artifact store once the API has granted the key that run or benchmark. Videos the UI
shows are served by Gradio from its cache under unguessable URLs, like any Gradio app.

Tests: ``python -m pytest tests/webui -x -q`` (the browser tests drive headless Chromium against a real server).
"""

from __future__ import annotations

from typing import Any

UI_PATH = "/ui"


def build_ui(app: Any) -> Any:
    """The Blocks app; ``app`` is the FastAPI application whose API the UI calls (``webui.app.build_ui``)."""
    from webui.app import build_ui as build  # heavy: gradio and every tab, only when the UI is built

    return build(app)


def mount(app: Any, path: str = UI_PATH) -> Any:
    """Mount the UI into ``app`` at ``path`` (called by ``backend.api.main.create_app(mount_ui=True)``)."""
    from webui.app import mount as mount_app  # heavy: gradio and every tab, only when the UI is mounted

    return mount_app(app, path)


__all__ = ["UI_PATH", "build_ui", "mount"]
