"""The Dashboard's benchmarks as a new user meets them (real ``motionlab serve``, headless Chromium): the shipped tiny
checkpoints' Table 1 is there on a fresh server, marked imported, with the numbers of ``checkpoints/README.md``;
an empty dashboard says what to do; the Run benchmark form names a bad field and its limit, and runs a benchmark
with live progress until its row appears.

    python -m pytest tests/webui/test_dashboard_benchmarks_browser.py -q

Screenshots: ``test-artifacts/webui_dashboard_imported.png``, ``webui_dashboard_empty.png``,
``webui_dashboard_run_progress.png``, ``webui_dashboard_run_done.png``, ``webui_dashboard_form_error.png``.
"""

from __future__ import annotations

import itertools
import re

import pytest

from tests.conftest import REPO
from tests.webui.conftest import new_page, serve
from tests.webui.test_browser import fill, no_traceback, open_ui, pick, status_text, wait_for, wait_status

pytestmark = pytest.mark.timeout(600)

README = REPO / "checkpoints" / "README.md"
SHIPPED_LABELS = {
    "tiny-teacher": "teacher, 50 steps + CFG",
    "tiny-dmd": "DMD, 3 steps",
    "tiny-mogan": "MoGAN, 3 steps",
    "tiny-vdot": "VDOT, 3 steps",
    "tiny-dfdpo": "DF-DPO (hybrid), 50 steps + CFG",
}


def readme_table() -> dict[str, list[str]]:
    """Row label -> metric cells of the Table 1 in the shipped README, read plainly."""
    text = README.read_text()
    section = text[text.index("Table 1") :].splitlines()
    start = next(i for i, ln in enumerate(section) if ln.startswith("|"))
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), section[start:]))  # the first table only
    return {c[0]: c[1:] for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[2:])}


def grid(pg, elem_id: str) -> list[list[str]]:
    """The body cells of a Gradio Dataframe, row by row."""
    return pg.eval_on_selector_all(
        f"#{elem_id} [role=row]",
        "rows => rows.map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim()))"
        ".filter(r => r.length)",
    )


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A fresh server over two shipped checkpoints without the README: nothing to import, an empty dashboard."""
    zoo = tmp_path_factory.mktemp("bare-zoo")
    for name in ("tiny-teacher", "tiny-dmd"):
        (zoo / name).symlink_to(REPO / "checkpoints" / name, target_is_directory=True)
    with serve(tmp_path_factory, zoo) as srv:
        yield srv


@pytest.fixture
def bare_page(browser, bare_server):
    with new_page(browser) as pg:
        yield pg


@pytest.fixture
def shipped_page(browser, shipped_server):
    with new_page(browser) as pg:
        yield pg


def test_fresh_server_shows_the_shipped_table1_marked_imported(shipped_page, shipped_server, artifacts):
    pg = shipped_page
    open_ui(pg, shipped_server, tab="Dashboard")
    # no click: entering the key lists the benchmarks and shows the newest, the import
    wait_status(
        pg,
        "dash-bench-status",
        r"Imported from checkpoints/README\.md, not measured on this server",
        60,
        shipped_server,
    )
    assert "imported from checkpoints/README.md" in pg.input_value("#dash-bench input")
    assert "not measured on this server" in pg.inner_text("#dash-table")  # the table's own title
    rows = grid(pg, "dash-table")
    expected = readme_table()
    assert len(rows) == len(expected), rows
    by_model = {r[0]: r for r in rows}
    for name, label in SHIPPED_LABELS.items():  # the shipped checkpoints by name, the file's numbers
        want = expected[label]
        assert by_model[name][1:] == [label] + want, (name, by_model.get(name), want)
    assert "real videos" in by_model and by_model["real videos"][-1] == "n/a"  # the file's dash
    header = pg.inner_text("#dash-table [role=row]")
    assert "Smoothness (%) [lite]" in header.replace("\n", " ") and not re.search(r"^\s*1\s+2\s+3\s*$", header)
    pg.wait_for_selector("#dash-bars .js-plotly-plot")
    traces = pg.eval_on_selector("#dash-bars .js-plotly-plot", "el => el.data.map(t => t.name)")
    assert set(SHIPPED_LABELS) <= set(traces), traces
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_dashboard_imported.png"), full_page=True)


def test_run_benchmark_from_the_form_shows_progress_and_the_new_row(bare_page, bare_server, artifacts):
    """Without the README nothing is imported: the dashboard starts empty and says what to do."""
    pg, server = bare_page, bare_server
    open_ui(pg, server, tab="Dashboard")
    empty = wait_status(pg, "dash-bench-status", r"No benchmarks on this server yet", 60, server)
    assert "Run benchmark" in empty
    assert not pg.is_visible("#dash-table") and not pg.is_visible("#dash-bars")
    pg.screenshot(path=str(artifacts / "webui_dashboard_empty.png"), full_page=True)

    wait_for(lambda: "tiny" in pg.input_value("#dash-bm-suite input"), 30, "the form's choices")
    pick(pg, "dash-bm-checkpoints", "tiny-dmd")
    pg.keyboard.press("Escape")
    fill(pg, "dash-bm-prompts", 2)
    fill(pg, "dash-bm-seeds", 1)
    assert pg.input_value("#dash-bm-backend input") == "lite"
    pg.click("#dash-bm-submit")
    busy = wait_status(pg, "dash-bm-status", r"Benchmark bench_\w+: (queued|running)", 60, server)
    assert pg.locator("#dash-bm-status .ml-progress").count() == 1  # the progress bar under the status
    pg.screenshot(path=str(artifacts / "webui_dashboard_run_progress.png"), full_page=True)
    bench_id = re.search(r"bench_\w+", busy).group(0)
    done = wait_status(pg, "dash-bm-status", rf"Benchmark {bench_id} finished in \d+ s: 2 videos scored", 300, server)
    assert "table is shown above" in done
    assert server.api("GET", f"/v1/benchmarks/{bench_id}").json()["source"] == "measured"
    # the results refresh: the new benchmark is picked, its table shows the checkpoint's row
    wait_status(pg, "dash-bench-status", r"1 model, 2 prompts, \d+ scores; measured on this server", 60, server)
    assert "measured here" in pg.input_value("#dash-bench input")
    rows = grid(pg, "dash-table")
    assert len(rows) == 1 and rows[0][0] == "tiny-dmd", rows
    # a single seed: plain numbers, no ± interval
    assert len(rows[0]) >= 4 and all(re.fullmatch(r"\d+\.\d+|n/a", c) for c in rows[0][1:]), rows
    pg.wait_for_selector("#dash-bars .js-plotly-plot")
    assert pg.eval_on_selector("#dash-bars .js-plotly-plot", "el => el.data.map(t => t.name)") == ["tiny-dmd"]
    no_traceback(pg)
    pg.screenshot(path=str(artifacts / "webui_dashboard_run_done.png"), full_page=True)


def test_run_benchmark_form_names_the_bad_field_and_its_limit(bare_page, bare_server, artifacts):
    pg, server = bare_page, bare_server
    open_ui(pg, server, tab="Dashboard")
    wait_for(lambda: "tiny" in pg.input_value("#dash-bm-suite input"), 30, "the form's choices")
    before = server.api("GET", "/v1/benchmarks").json()["total"]

    def submit_expecting(message: str) -> None:
        pg.click("#dash-bm-submit")
        wait_for(
            lambda: message in status_text(pg, "dash-bm-status"),
            20,
            f"the message {message!r}",
            lambda: status_text(pg, "dash-bm-status"),
        )
        assert status_text(pg, "dash-bm-status").startswith("⚠")

    submit_expecting("Checkpoints: pick at least one checkpoint (at most 16)")
    pick(pg, "dash-bm-checkpoints", "tiny-dmd")
    pg.keyboard.press("Escape")
    fill(pg, "dash-bm-seeds", 0)
    submit_expecting(
        "Seeds: must be a whole number from 1 to 16 (seeds 0 to N-1 are used, the same for every checkpoint); got 0"
    )
    fill(pg, "dash-bm-seeds", 17)
    submit_expecting(
        "Seeds: must be a whole number from 1 to 16 (seeds 0 to N-1 are used, the same for every checkpoint); got 17"
    )
    fill(pg, "dash-bm-seeds", 1)
    fill(pg, "dash-bm-prompts", 999)
    submit_expecting("Prompts: must be a whole number from 1 to 16 (the tiny suite has 16 prompts); got 999")
    pg.screenshot(path=str(artifacts / "webui_dashboard_form_error.png"), full_page=True)
    assert server.api("GET", "/v1/benchmarks").json()["total"] == before  # nothing was submitted
