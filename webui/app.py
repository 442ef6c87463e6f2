"""The web UI's Gradio app: the page (API-key field and one tab per module) and its mounting into the API server.

    demo = build_ui(app)               # the Blocks app; ``app`` is the FastAPI application whose API it calls
    mount(app, "/ui")                  # what ``webui.mount(app)`` does

Imports gradio and every tab, so it is imported only when the UI is built (``webui.mount`` does that).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui import compare, dashboard, generate, runs, study_admin
from webui.common import CSS, UiContext, status, whoami


def build_ui(app: Any) -> Any:
    """The Blocks app; ``app`` is the FastAPI application whose API the UI calls."""
    with gr.Blocks(title="MotionLab", delete_cache=(3600, 86400), analytics_enabled=False) as demo:
        gr.HTML(
            '<h2 class="ml-title">MotionLab</h2><div class="ml-muted">Motion-centric post-training, evaluation '
            'and serving of few-step video diffusion models. API docs: <a href="/docs">/docs</a>.</div>'
        )
        with gr.Row(equal_height=True):
            key = gr.Textbox(
                label="API key",
                type="password",
                placeholder="ml_…",
                elem_id="api-key",
                scale=4,
                info="every action uses this key; the API checks its scopes and limits",
            )
            remember = gr.Checkbox(
                False,
                label="Remember on this browser",
                elem_id="api-key-remember",
                scale=1,
                info="kept in local storage until the server restarts",
            )
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


def mount(app: Any, path: str) -> Any:
    """Mount the UI into ``app`` at ``path`` (through ``webui.mount``)."""
    demo = build_ui(app)
    app.state.webui = demo
    # no run history (it would keep inputs, the API key among them, in the browser), no footer links to Gradio's
    # own API page: the MotionLab API is the documented one
    return gr.mount_gradio_app(
        app, demo, path=path, footer_links=[], run_history=False, css=CSS, show_error=True, ssr_mode=False
    )


__all__ = ["build_ui", "mount"]
