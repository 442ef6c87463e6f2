"""MotionLab web UI: a Gradio Blocks app mounted into the FastAPI app at ``/ui`` (one server, one port).

    motionlab serve                                   # API + UI + local workers: open http://127.0.0.1:8000/ui
    app = create_app(settings, mount_ui=True)         # backend.api.main calls webui.mount(app)

Tabs (one module each): Generate (``webui.generate``), Compare (``webui.compare``), Dashboard
(``webui.dashboard``), Runs (``webui.runs``), Study admin (``webui.study_admin``). The colour-wheel flow
visualization is ``webui.flow_viz`` (pure numpy); video work is ``webui.media``.

Access. The UI acts with an API key that the person pastes into the field at the top of the page; nothing is
created or filled in for them. ``motionlab serve`` prints an admin key the first time it starts; an admin can
create narrower keys with ``POST /v1/keys`` (e.g. scopes read + generate for a demo machine). The key is kept for
the browser tab; ticking "remember" also keeps it in the browser's local storage (until the server restarts, or
until it is cleared). Every action calls the ``/v1`` API in process with that key (``webui.client``), so the UI has
exactly the API's validation, limits, scopes and error messages. A few read-only look-ups use the backend's own
service code: who a key belongs to (``backend.security.authenticate``), a checkpoint's sampling schedule, the
worker's timing record of a video, and the files of a run or benchmark once the API has granted the key that run
or benchmark. Videos the UI shows are served by Gradio from its cache under unguessable URLs, like any Gradio app.

Tests: ``python -m pytest tests/webui -x -q`` (the browser tests drive headless Chromium against a real server).
"""

from __future__ import annotations

from typing import Any

UI_PATH = "/ui"


def build_ui(app: Any) -> Any:
    """The Blocks app; ``app`` is the FastAPI application whose API the UI calls."""
    import gradio as gr

    from webui import compare, dashboard, generate, runs, study_admin
    from webui.common import UiContext, status, whoami

    with gr.Blocks(title="MotionLab", delete_cache=(3600, 86400), analytics_enabled=False) as demo:
        gr.HTML('<h2 class="ml-title">MotionLab</h2><div class="ml-muted">Motion-centric post-training, evaluation '
                'and serving of few-step video diffusion models. API docs: <a href="/docs">/docs</a>.</div>')
        with gr.Row(equal_height=True):
            key = gr.Textbox(label="API key", type="password", placeholder="ml_…", elem_id="api-key", scale=4,
                             info="every action uses this key; the API checks its scopes and limits")
            remember = gr.Checkbox(False, label="Remember on this browser", elem_id="api-key-remember", scale=1,
                                   info="kept in local storage until the server restarts")
        key_state = gr.HTML(status("info", whoami(app, None)[1]), elem_id="key-status")
        stored = gr.BrowserState("", storage_key="motionlab_api_key")
        ctx = UiContext(app=app, key=key)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate.build(ctx)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare.build(ctx)
            with gr.Tab("Dashboard", id="dashboard", elem_id="tab-dashboard"):
                dashboard.build(ctx)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                runs.build(ctx)
            with gr.Tab("Study admin", id="studies", elem_id="tab-studies"):
                study_admin.build(ctx)

        def check_key(k: str, keep: bool):
            ok, text = whoami(app, k)
            kept = (k or "").strip() if (keep and ok) else ""
            return status("ok" if ok else ("info" if not (k or "").strip() else "error"), text), kept

        key.change(check_key, [key, remember], [key_state, stored], show_progress="hidden")
        remember.change(check_key, [key, remember], [key_state, stored], show_progress="hidden")

        def restore(saved: str):
            saved = (saved or "").strip()
            return (saved, True) if saved else (gr.update(), gr.update())

        demo.load(restore, [stored], [key, remember], show_progress="hidden")
    demo.queue(default_concurrency_limit=16)
    return demo


def mount(app: Any, path: str = UI_PATH) -> Any:
    """Mount the UI into ``app`` at ``path`` (called by ``backend.api.main.create_app(mount_ui=True)``)."""
    import gradio as gr

    from webui.common import CSS

    demo = build_ui(app)
    app.state.webui = demo
    # no run history (it would keep inputs, the API key among them, in the browser), no footer links to Gradio's
    # own API page: the MotionLab API is the documented one
    return gr.mount_gradio_app(app, demo, path=path, footer_links=[], run_history=False, css=CSS,
                               show_error=True, ssr_mode=False)


__all__ = ["UI_PATH", "build_ui", "mount"]
