"""Browser tests of the web UI: headless Chromium drives the real server (``motionlab serve``: API + UI + local
workers on this machine, nothing mocked) with random tiny checkpoints. Each test saves a screenshot to
``test-artifacts/webui_*.png``.

    python -m pytest tests/webui/test_browser.py -x -q

The tests share one server but not their data: what a test reads (a finished benchmark, a run with logged steps, an
answered study) comes from a module fixture made over the API, so each test passes alone and in any order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from trainer.methods import METHODS

pytestmark = pytest.mark.timeout(900)

RUN_NAME = "ui-test-sft"
LOGGED_RUN = "dash-logged-run"  # names that are no substring of another's: ``pick`` matches by text
ANSWERED_STUDY = "dash preference"
STUDY_ANSWERS = 2
SFT_TINY_STEPS = str(METHODS["sft"].defaults("tiny")["steps"])


# --- helpers --------------------------------------------------------------------------------------------------------


def fill(pg, elem_id: str, value) -> None:
    pg.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(str(value))


def pick(pg, elem_id: str, option: str) -> None:
    pg.click(f"#{elem_id} input")
    pg.locator("ul[role=listbox] li", has_text=option).first.click()
    pg.wait_for_timeout(200)


def text(pg, elem_id: str) -> str:
    return pg.inner_text(f"#{elem_id}")


def wait_for(pred: Callable[[], object], timeout: float, what: str, dump: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{dump()}")
        time.sleep(0.5)


def status_text(pg, elem_id: str) -> str:
    """The text of a status line (the UI's own message, without Gradio's pending-event overlay)."""
    loc = pg.locator(f"#{elem_id} .ml-status")
    return loc.first.inner_text().strip() if loc.count() else ""


def wait_status(pg, elem_id: str, pattern: str, timeout: float, server=None, stale: str | None = None) -> str:
    """Wait until the status element matches ``pattern``; fail at once on an error status that does not.
    ``stale``: the status before the action, ignored until it changes."""
    rx = re.compile(pattern)

    def check():
        t = status_text(pg, elem_id)
        if stale is not None and t == stale:
            return None
        if rx.search(t):
            return t
        if "⚠" in t:
            raise AssertionError(f"#{elem_id} shows an error: {t}")
        return None

    return wait_for(
        check,
        timeout,
        f"#{elem_id} to match {pattern!r}",
        lambda: f"#{elem_id}: {text(pg, elem_id)}\n{server.tail() if server else ''}",
    )


def open_ui(pg, server, key: str | None = None, tab: str | None = None) -> None:
    pg.goto(server.base + "/ui/")
    pg.wait_for_selector("#api-key input")
    fill(pg, "api-key", key or server.key)
    wait_for(lambda: "Using key" in text(pg, "key-status") or "unknown" in text(pg, "key-status"), 30, "the key")
    if tab:
        pg.click(f"button[role=tab]:has-text('{tab}')")
        pg.wait_for_timeout(500)


def table_rows(pg, elem_id: str) -> list[str]:
    """The body rows of a Gradio Dataframe as text (cells separated by newlines); the header row dropped."""
    rows = pg.eval_on_selector_all(f"#{elem_id} [role=row]", "trs => trs.map(t => t.innerText.trim())")
    return [r for r in rows[1:] if r]


def videos(pg, selector: str) -> list[dict]:
    return pg.eval_on_selector_all(
        selector,
        "els => els.map(v => ({ready: v.readyState, w: v.videoWidth, "
        "h: v.videoHeight, t: v.currentTime, paused: v.paused, "
        "d: v.duration}))",
    )


def show_frame(pg, selector: str, t: float = 0.6) -> None:
    """Pause every video at ``t`` seconds so the screenshot shows a decoded frame."""
    wait_for(
        lambda: all(v["ready"] >= 2 for v in videos(pg, selector)) and videos(pg, selector), 30, f"{selector} to load"
    )
    pg.eval_on_selector_all(selector, f"els => els.forEach(v => {{ v.pause(); v.currentTime = {t}; }})")
    pg.wait_for_timeout(600)


def no_traceback(pg) -> None:
    html = pg.content()
    assert "Traceback" not in html and 'File "/' not in html


# --- tests ----------------------------------------------------------------------------------------------------------


def test_generate_a_video_with_a_tiny_checkpoint(page, server, artifacts):
    pg = page
    open_ui(pg, server)
    wait_for(lambda: "checkpoints available" in text(pg, "gen-status"), 30, "the checkpoint list")
    pick(pg, "gen-checkpoint", "tiny-dmd")
    wait_for(lambda: "Few-step student: 3 steps" in text(pg, "gen-schedule"), 20, "the schedule")
    assert pg.input_value("#gen-frames input") == "17"  # the checkpoint's defaults are filled in
    fill(pg, "gen-prompt", "a red square moves to the right")
    pg.click("#gen-button")
    wait_for(
        lambda: "ml-busy" in pg.inner_html("#gen-status") or "Done" in text(pg, "gen-status"),
        30,
        "progress to be shown",
    )
    wait_status(pg, "gen-status", r"Done: 17 frames from tiny-dmd", 400, server)
    stats = text(pg, "gen-stats")
    assert "Network evaluations: 3 (few-step, 3 steps)" in stats, stats
    assert re.search(r"Generation time: [\d.]+ (ms|s) sampling", stats), stats
    assert re.search(r"Motion smoothness\s+0\.\d{3}", stats), stats
    assert "largest motion" in stats
    gen, flow = videos(pg, "#gen-video video"), videos(pg, "#gen-flow video")
    assert gen and flow
    show_frame(pg, "#gen-video video, #gen-flow video")
    gen, flow = videos(pg, "#gen-video video"), videos(pg, "#gen-flow video")
    assert (gen[0]["w"], gen[0]["h"]) == (32, 32) and (flow[0]["w"], flow[0]["h"]) == (32, 32)
    assert pg.is_visible("#gen-download")
    pg.screenshot(path=str(artifacts / "webui_generate.png"), full_page=True)

    # bad input: the API's limit comes back as a sentence, nothing is generated
    fill(pg, "gen-frames", 100000)
    pg.click("#gen-button")
    msg = wait_for(lambda: "⚠" in text(pg, "gen-status") and text(pg, "gen-status"), 60, "the error")
    assert "num_frames: must be <= 121 (got 100000)" in msg, msg
    no_traceback(pg)
    pg.locator("#gen-status").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts / "webui_generate_error.png"), full_page=False)

    # access control: a read-only key may look but not generate
    r = server.api("POST", "/v1/keys", json={"name": "viewer", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    other = pg.context.new_page()
    open_ui(other, server, key=r.json()["key"])
    wait_for(lambda: "checkpoints available" in text(other, "gen-status"), 30, "the checkpoint list")
    fill(other, "gen-prompt", "a ball")
    other.click("#gen-button")
    msg = wait_for(lambda: "⚠" in text(other, "gen-status") and text(other, "gen-status"), 60, "the scope error")
    assert "may not do this" in msg and "'generate'" in msg, msg
    other.close()


def test_compare_three_checkpoints(page, server, artifacts):
    pg = page
    open_ui(pg, server)
    # "remember": the key survives a reload of the page
    pg.click("#api-key-remember input")
    pg.wait_for_timeout(1000)
    pg.reload()
    wait_for(lambda: "Using key" in text(pg, "key-status"), 30, "the remembered key")
    pg.click("button[role=tab]:has-text('Compare')")
    pg.wait_for_timeout(500)
    for name in ("tiny-teacher", "tiny-dmd", "tiny-mogan"):
        pick(pg, "cmp-checkpoints", name)
    pg.keyboard.press("Escape")
    fill(pg, "cmp-prompt", "a ball bounces")
    fill(pg, "cmp-seed", 3)
    fill(pg, "cmp-teacher-steps", 2)  # the teacher's own schedule is 50 steps: keep the test fast
    pg.click("#cmp-button")
    wait_status(pg, "cmp-status", r"Done: 3 checkpoints on the same prompt and seed 3", 500, server)
    titles = [text(pg, f"cmp-title-{i}") for i in range(3)]
    assert titles == ["tiny-teacher", "tiny-dmd", "tiny-mogan"], titles
    assert not pg.is_visible("#cmp-title-3")
    # the teacher: 2 steps with classifier-free guidance = 4 network evaluations; the students: 3
    assert "4 network evaluations" in text(pg, "cmp-stats-0")
    assert "3 network evaluations" in text(pg, "cmp-stats-1") and "3 network evaluations" in text(pg, "cmp-stats-2")
    rows = table_rows(pg, "cmp-table")
    assert [r.split()[0] for r in rows] == ["tiny-teacher", "tiny-dmd", "tiny-mogan"], rows
    assert all(len(re.findall(r"\b[01]\.\d{3}\b", r)) >= 4 for r in rows), rows  # four metrics each
    pg.click("#cmp-sync")
    pg.wait_for_timeout(800)
    vs = videos(pg, "#cmp-grid video")
    assert len(vs) == 6 and all(v["w"] == 32 for v in vs), vs
    playing = [v for v in vs if not v["paused"]]
    assert len(playing) == 6, vs
    assert max(v["t"] for v in vs) - min(v["t"] for v in vs) < 0.5, vs  # restarted together
    comp = videos(pg, "#cmp-composite video")
    assert comp and comp[0]["w"] > 3 * 32  # three columns side by side (upscaled for display)
    show_frame(pg, "#cmp-grid video, #cmp-composite video")
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_compare.png"), full_page=True)


@pytest.fixture(scope="module")
def benchmark_id(server) -> str:
    """A small benchmark of the three tiny checkpoints, queued on the eval worker (not waited for: it runs while the
    tests that request it early do their own work; ``finished_benchmark`` waits)."""
    r = server.api(
        "POST",
        "/v1/benchmarks",
        json={
            "name": "ui-test",
            "checkpoints": ["tiny-teacher", "tiny-dmd", "tiny-mogan"],
            "prompts": ["a ball bounces", "a red square moves to the right"],
            "seeds": [0, 1],
            "steps": 2,
            "metrics": ["motion_smoothness", "dynamic_degree", "motion_score", "temporal_flickering"],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def finished_benchmark(server, benchmark_id) -> str:
    """``benchmark_id`` once it has succeeded."""
    wait_succeeded(server, f"/v1/benchmarks/{benchmark_id}", "the benchmark")
    return benchmark_id


@pytest.fixture(scope="module")
def logged_run(server) -> dict:
    """A short sft run with a metrics row per step, started over the API (queued at once; ``wait_succeeded`` waits)."""
    r = server.api(
        "POST",
        "/v1/runs",
        json={
            "method": "sft",
            "name": LOGGED_RUN,
            "config": {
                "steps": 4,
                "batch_size": 2,
                "log_every": 1,
                "checkpoint_every": 1000,
                "optim": {"warmup_steps": 0},
                "data": {"num_videos": 4},
            },
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def answered_study(server, finished_benchmark) -> dict:
    """An open study of ``finished_benchmark`` that one annotator has answered ``STUDY_ANSWERS`` items of."""
    r = server.api(
        "POST",
        "/v1/studies",
        json={"name": ANSWERED_STUDY, "benchmark_id": finished_benchmark, "config": {"k": 3}, "open": True},
    )
    assert r.status_code == 201, r.text
    study = r.json()
    r = server.api("POST", f"/v1/studies/{study['id']}/annotators", json={"count": 1})
    assert r.status_code == 201, r.text
    answers = {"visual_quality": "left", "motion_quality": "right", "text_alignment": "tie"}
    assert annotate(server, r.json()["items"][0]["link"], STUDY_ANSWERS, answers) == STUDY_ANSWERS
    return study


def test_start_and_cancel_a_tiny_run(page, server, artifacts, benchmark_id):
    pg = page
    open_ui(pg, server, tab="Runs")
    assert pg.input_value("#run-steps input") == SFT_TINY_STEPS  # sft's tiny defaults are filled in
    pick(pg, "run-method", "dmd")
    wait_for(lambda: pg.input_value("#run-steps input") == "300", 20, "dmd's defaults")
    assert "DMD" in text(pg, "run-hint") or "teacher" in text(pg, "run-hint")
    pick(pg, "run-method", "sft")
    wait_for(lambda: pg.input_value("#run-steps input") == SFT_TINY_STEPS, 20, "sft's defaults")

    # a value out of the trainer's range: the API's own validation answers in words
    fill(pg, "run-optim-lr", 5)
    pg.click("#run-check")
    msg = wait_for(lambda: "⚠" in text(pg, "run-form-status") and status_text(pg, "run-form-status"), 60, "the error")
    assert "config.optim.lr" in msg and "[0.0, 1.0]" in msg, msg

    for field, value in (
        ("run-optim-lr", 0.0003),
        ("run-steps", 400),
        ("run-batch_size", 2),
        ("run-log_every", 1),
        ("run-checkpoint_every", 1000),
        ("run-data-num_videos", 8),
        ("run-optim-warmup_steps", 0),
    ):
        fill(pg, field, value)
    fill(pg, "run-name", RUN_NAME)
    pg.click("#run-check")
    wait_status(pg, "run-form-status", r"Valid: sft \(tiny\), 400 steps", 60, stale=msg)
    pg.click("#run-start")
    started = wait_status(pg, "run-form-status", r"Started run run_[0-9a-f]{16}", 60)
    run_id = re.search(r"run_[0-9a-f]{16}", started).group(0)
    # live progress: wait for a few logged steps, then cancel
    wait_status(pg, "run-status", r"running: step ([3-9]|\d\d+) of 400", 400, server)
    assert "ml-progress" in pg.inner_html("#run-status")
    pg.click("#run-cancel")
    wait_status(pg, "run-status", r"was cancelled at step \d+ of 400", 300, server)
    wait_for(lambda: "cancelled at step" in pg.input_value("#run-logs textarea"), 30, "the log line")
    logs = pg.input_value("#run-logs textarea")
    assert "created: method=sft preset=tiny" in logs and "cancel requested" in logs, logs
    assert server.api("GET", f"/v1/runs/{run_id}").json()["status"] == "cancelled"
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_runs.png"), full_page=True)

    # a job that fails: DMD without a teacher is refused by the trainer on the worker; the reason is shown in words
    pick(pg, "run-method", "dmd")
    wait_for(lambda: pg.input_value("#run-steps input") == "300", 20, "dmd's defaults")
    fill(pg, "run-name", "ui-test-dmd-no-teacher")
    stale = status_text(pg, "run-form-status")
    pg.click("#run-start")
    wait_status(pg, "run-form-status", r"Started run", 60, stale=stale)
    msg = wait_for(
        lambda: "failed" in text(pg, "run-status") and text(pg, "run-status"),
        300,
        "the failure",
        lambda: text(pg, "run-status") + "\n" + server.tail(),
    )
    assert "needs a teacher checkpoint" in msg, msg
    no_traceback(pg)
    pg.locator("#run-logs").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts / "webui_runs_failed.png"), full_page=False)


def test_promote_a_finished_checkpoint_to_the_generation_list(page, server, artifacts):
    pg = page
    open_ui(pg, server, tab="Runs")
    for field, value in (
        ("run-steps", 2),
        ("run-batch_size", 2),
        ("run-log_every", 1),
        ("run-checkpoint_every", 1000),
        ("run-data-num_videos", 4),
        ("run-optim-warmup_steps", 0),
    ):
        fill(pg, field, value)
    fill(pg, "run-name", "ui-test-short")
    pg.click("#run-start")
    wait_status(pg, "run-form-status", r"Started run", 60)
    wait_status(pg, "run-status", r"Run ui-test-short finished at step 2", 400, server)
    pg.click("text=Promote a finished checkpoint to the generation list")
    wait_for(lambda: "ui-test-short" in pg.input_value("#run-promote-ckpt input"), 30, "the run's checkpoint")
    fill(pg, "run-promote-name", "ui-promoted")
    pg.click("#run-promote")
    wait_status(pg, "run-promote-status", r"ui-promoted is now in the generation list", 60)
    pg.locator("#run-promote-status").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts / "webui_promote.png"), full_page=False)
    # the same name again: the API's conflict check answers in words
    pg.click("#run-promote")
    wait_status(pg, "run-promote-status", r"Not promoted: name: a checkpoint named 'ui-promoted' already exists", 60)
    # it is in the generation list and generates
    pg.click("button[role=tab]:has-text('Generate')")
    pg.click("#gen-refresh")
    pg.wait_for_timeout(1000)
    pick(pg, "gen-checkpoint", "ui-promoted")
    fill(pg, "gen-prompt", "a ball bounces")
    fill(pg, "gen-steps", 2)
    pg.click("#gen-button")
    wait_status(pg, "gen-status", r"Done: 17 frames from ui-promoted", 400, server)
    assert "Network evaluations: 4 (teacher, 2 steps)" in text(pg, "gen-stats")


def wait_succeeded(server, path: str, what: str) -> None:
    """Poll ``GET path`` (a benchmark or a run) until it has finished; it must have succeeded."""

    def state():
        return server.api("GET", path).json()

    row = wait_for(
        lambda: state()["status"] in ("succeeded", "failed", "cancelled") and state(), 600, what, server.tail
    )
    assert row["status"] == "succeeded", row


def annotate(server, link: str, n: int, answers: dict[str, str]) -> int:
    """What an annotator's page does, over HTTP with the link's token: take an item, play both videos to the
    end (in real time: the study refuses answers faster than the videos play), answer. Returns answers given."""
    import httpx

    token = link.rsplit("/a/", 1)[1]
    done = 0
    for _ in range(n):
        r = httpx.post(f"{server.base}/a/{token}/api/next", timeout=60)
        assert r.status_code == 200, r.text
        item = r.json()["item"]
        if item is None:
            break
        events = [
            {"event": e, "side": side, "t": item["durations"][side] if e == "ended" else 0.0}
            for side in item["sides"]
            for e in ("play", "ended")
        ]
        r = httpx.post(
            f"{server.base}/a/{token}/api/assignments/{item['assignment_id']}/events",
            json={"events": events},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        for side in item["sides"]:  # the page's video elements load both clips; the server checks it sent them
            v = httpx.get(f"{server.base}/a/{token}/api/assignments/{item['assignment_id']}/video/{side}", timeout=60)
            assert v.status_code == 200 and v.content, v.text
        time.sleep(max(item["durations"].values()) + 0.3)
        for _attempt in range(10):
            r = httpx.post(
                f"{server.base}/a/{token}/api/assignments/{item['assignment_id']}/answer",
                json={"answers": answers, "duration_ms": 3000},
                timeout=60,
            )
            if r.status_code != 422 or "playback" not in r.text:
                break
            time.sleep(0.5)
        assert r.status_code == 201, r.text
        done += 1
    return done


def test_study_admin(page, server, artifacts, logged_run, finished_benchmark):
    # logged_run is not read here: queued first, it trains while this test waits for the benchmark (for test_dashboard)
    pg = page
    open_ui(pg, server, tab="Study admin")
    pg.click("#study-refresh")
    pg.wait_for_timeout(1500)
    pick(pg, "study-bench", "ui-test")
    fill(pg, "study-name", "motion preference")
    fill(pg, "study-k", 3)
    pg.click("#study-create")
    made = wait_status(pg, "study-create-status", r"Created study motion preference \(study_[0-9a-f]{16}\), open", 120)
    study_id = re.search(r"study_[0-9a-f]{16}", made).group(0)
    fill(pg, "study-invite-count", 2)
    pg.click("#study-invite")
    wait_status(pg, "study-invite-status", r"2 invitation links created", 60)
    links = pg.input_value("#study-links textarea").splitlines()
    assert len(links) == 2 and all(f"{server.base}/a/ann_" in x for x in links), links
    url = links[0].split(": ", 1)[1]
    annotator_page = pg.context.new_page()
    resp = annotator_page.goto(url)
    assert resp is not None and resp.status == 200
    annotator_page.close()
    wait_status(pg, "study-progress", r"is open: 0 of \d+ annotations done", 30)
    wait_for(lambda: len(table_rows(pg, "study-annotators")) == 2, 30, "annotators")
    # two annotators answer an item each through their links (in real time: the videos play to the end); the admin
    # page follows the progress live
    answers = {"visual_quality": "left", "motion_quality": "right", "text_alignment": "tie"}
    assert annotate(server, links[0].split(": ", 1)[1], 1, answers) == 1
    assert annotate(server, links[1].split(": ", 1)[1], 1, answers) == 1
    wait_status(pg, "study-progress", r"is open: 2 of \d+ annotations done", 30)
    assert {r.split()[1] for r in table_rows(pg, "study-annotators")} == {"1"}  # done per annotator
    pg.click("#study-results")
    wait_status(pg, "study-results-status", r"\b6 responses used", 60)  # 2 answers x 3 questions
    pg.wait_for_selector("#study-results-plot .js-plotly-plot")
    bars = pg.eval_on_selector("#study-results-plot .js-plotly-plot", "el => el.data.map(t => [t.name, t.x])")
    assert [n for n, _ in bars] == ["win", "tie", "lose"]
    sums = [sum(bars[k][1][i] for k in range(3)) for i in range(len(bars[0][1]))]
    assert sums and all(abs(x - 1.0) < 1e-6 for x in sums), bars  # each bar: win + tie + lose = 100%
    assert pg.is_visible("#study-results-csv")
    assert server.api("GET", f"/v1/studies/{study_id}").json()["status"] == "open"
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_study_admin.png"), full_page=True)


def test_dashboard(page, server, artifacts, logged_run, finished_benchmark, answered_study):
    wait_succeeded(server, f"/v1/runs/{logged_run['id']}", "the run")
    pg = page
    open_ui(pg, server, tab="Dashboard")
    pick(pg, "dash-bench", "ui-test")
    pg.click("#dash-bench-show")
    wait_status(pg, "dash-bench-status", r"3 models, 2 prompts", 60)
    rows = table_rows(pg, "dash-table")
    assert len(rows) == 3 and {r.split()[0] for r in rows} == {"tiny-teacher", "tiny-dmd", "tiny-mogan"}, rows
    assert all(re.search(r"\d+\.\d\d ± \d+\.\d\d \[", r) for r in rows), rows  # mean ± std [95% interval]
    pg.wait_for_selector("#dash-bars .js-plotly-plot")
    bars = pg.eval_on_selector("#dash-bars .js-plotly-plot", "el => el.data.map(t => [t.name, t.y.length])")
    assert sorted(n for n, _ in bars) == ["tiny-dmd", "tiny-mogan", "tiny-teacher"] and all(k == 3 for _, k in bars)
    pick(pg, "dash-run", LOGGED_RUN)
    pg.click("#dash-run-show")
    wait_status(pg, "dash-run-status", r"4 logged steps", 60)
    for plot in ("dash-losses", "dash-lr", "dash-throughput"):
        pg.wait_for_selector(f"#{plot} .js-plotly-plot")
    losses = pg.eval_on_selector("#dash-losses .js-plotly-plot", "el => el.data.map(t => [t.name, t.x.length])")
    assert losses and all(k >= 3 for _, k in losses), losses
    lrs = pg.eval_on_selector("#dash-lr .js-plotly-plot", "el => el.data.map(t => t.name)")
    thr = pg.eval_on_selector("#dash-throughput .js-plotly-plot", "el => el.data.map(t => t.name)")
    assert lrs and all(n.startswith("lr/") for n in lrs) and thr == ["steps/s"], (lrs, thr)
    pick(pg, "dash-study", ANSWERED_STUDY)
    pg.click("#dash-study-show")
    wait_status(pg, "dash-study-status", rf"\b{STUDY_ANSWERS * 3} responses used", 60)  # three questions an item
    pg.wait_for_selector("#dash-study-plot .js-plotly-plot")
    segs = pg.eval_on_selector("#dash-study-plot .js-plotly-plot", "el => el.data.map(t => t.name)")
    assert segs == ["win", "tie", "lose"]
    assert len(table_rows(pg, "dash-study-table")) >= 3  # one row per question and answered pair
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_dashboard.png"), full_page=True)


def test_comparison_gallery_from_benchmark_videos(page, server, artifacts, finished_benchmark):
    pg = page
    open_ui(pg, server, tab="Compare")
    pg.click("#cmp-bench-refresh")
    pg.wait_for_timeout(1000)
    pick(pg, "cmp-bench", "ui-test")
    pg.click("#cmp-bench-show")
    # 2 prompts x 2 seeds; each item: the three checkpoints side by side, their flows below
    wait_status(pg, "cmp-gallery-status", r"^✔ 4 comparisons", 300, server)
    thumbs = videos(pg, "#cmp-gallery video")
    assert len(thumbs) == 4, thumbs
    wait_for(lambda: all(v["ready"] >= 2 for v in videos(pg, "#cmp-gallery video")), 30, "the thumbnails")
    assert all(v["w"] == 3 * 128 + 2 * 4 for v in videos(pg, "#cmp-gallery video"))  # three 128-px columns
    captions = pg.inner_text("#cmp-gallery")
    assert "a ball bounces" in captions and "motion score" in captions, captions
    show_frame(pg, "#cmp-gallery video")
    no_traceback(pg)
    pg.locator("#cmp-gallery").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts / "webui_compare_gallery.png"), full_page=True)
