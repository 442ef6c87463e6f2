"""End to end in a real browser: Playwright drives headless Chromium (/usr/bin/chromium) against the real server
(uvicorn on loopback, SQLite, a temporary storage root) and annotates items as a new annotator would.

Checks: the answer buttons stay disabled until both videos have ended, the answer is stored (as the side that was
clicked, mapped to systems), the next item appears, keyboard shortcuts work, a reload resumes the same item, the
page fits a phone screen. Screenshots of the annotation page (desktop and phone) and of the results page go to
``test-artifacts/``.

    python -m pytest tests/backend/test_study_browser.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import REPO, load_bench

pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = REPO / "test-artifacts"
FRAMES, FPS = 9, 8.0  # videos just over a second long

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def server():
    sl = load_bench("study_load")
    with sl.StudyServer() as srv:
        bench = sl.make_benchmark(
            srv.settings, models=("alpha", "beta", "gamma"), prompts=sl.PROMPTS[:2], seeds=(0,), frames=FRAMES, fps=FPS
        )
        study = srv.create_study(bench, {"k": 2, "seed": 1}, name="browser study")
        yield srv, study


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _choices_state(page) -> dict:
    """Atomically: whether each video has ended, and whether any answer button is enabled."""
    return page.evaluate("""() => ({
        ended: ['left', 'right'].map((s) => document.getElementById('video-' + s).ended),
        enabled: [...document.querySelectorAll('button.choice')].some((b) => !b.disabled),
        submit: !document.getElementById('submit').disabled,
    })""")


def _pending(srv, token: str):
    from backend.crud.studies import annotator_for_token
    from backend.db.models import Assignment, StudyItem
    from backend.db.session import session_scope

    with session_scope(srv.settings, write=False) as db:
        ann = annotator_for_token(db, token, None)
        rows = db.execute(
            select(Assignment, StudyItem)
            .join(StudyItem, StudyItem.id == Assignment.item_id)
            .where(Assignment.annotator_id == ann.id)
            .order_by(Assignment.order_index)
        ).all()
        return [(a.id, a.status, a.swap_sides, it.system_a, it.system_b) for a, it in rows]


def _responses(srv, assignment_id: str) -> dict[str, str]:
    from backend.db.models import Response
    from backend.db.session import session_scope

    with session_scope(srv.settings, write=False) as db:
        return {
            r.question: r.choice for r in db.scalars(select(Response).where(Response.assignment_id == assignment_id))
        }


def test_annotate_in_the_browser_then_read_the_results(server, browser):
    srv, study = server
    (invite,) = srv.invite(study["id"], 1)
    token = invite["token"]
    ARTIFACTS.mkdir(exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1280, "height": 1200})
    page = ctx.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))

    page.goto(f"{srv.url}/a/{token}")
    page.wait_for_selector("#intro:not([hidden])")
    assert "Watch each video to the end" in page.inner_text("#instructions")
    page.click("#start")
    page.wait_for_selector("#item:not([hidden])")
    assert page.inner_text("#progress-text").startswith("0 /")

    # --- item 1, with the mouse ---------------------------------------------------------------------------------
    page.wait_for_function(
        "() => document.getElementById('video-left').readyState >= 1 && "
        "document.getElementById('video-right').readyState >= 1"
    )
    durations = page.evaluate(
        "() => [document.getElementById('video-left').duration, document.getElementById('video-right').duration]"
    )
    assert durations == pytest.approx([FRAMES / FPS] * 2, abs=0.05)  # what the server's watch check assumes
    state = _choices_state(page)
    assert state == {"ended": [False, False], "enabled": False, "submit": False}
    assert page.locator("button.choice").count() == 9  # three questions x left / tie / right
    page.click("#play")
    state = _choices_state(page)
    assert not all(state["ended"]) and not state["enabled"]  # still playing: still locked
    page.wait_for_selector("#watch-left.done", timeout=15_000)
    page.wait_for_selector("#watch-right.done", timeout=15_000)
    assert _choices_state(page)["enabled"]
    assert not _choices_state(page)["submit"]  # enabled, but nothing answered yet
    clicks = {"visual_quality": "left", "motion_quality": "tie", "text_alignment": "right"}
    for q, side in clicks.items():
        page.click(f'fieldset[data-question="{q}"] button[data-value="{side}"]')
    assert _choices_state(page)["submit"]
    page.screenshot(path=str(ARTIFACTS / "study_annotate.png"), full_page=True)
    ((first_id, status, swap, _a, _b),) = _pending(srv, token)
    assert status == "pending"
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('1 /')")
    page.wait_for_selector("#item:not([hidden])")
    rows = _pending(srv, token)
    assert rows[0][:2] == (first_id, "done") and rows[1][1] == "pending"  # the next item appeared
    a_side, b_side = ("b", "a") if swap else ("a", "b")
    assert _responses(srv, first_id) == {"visual_quality": a_side, "motion_quality": "tie", "text_alignment": b_side}
    assert _choices_state(page) == {"ended": [False, False], "enabled": False, "submit": False}

    # --- item 2, with the keyboard ------------------------------------------------------------------------------
    second_id, _, swap2, _a, _b = rows[1]
    page.wait_for_function(
        "() => document.getElementById('video-left').readyState >= 1 && "
        "document.getElementById('video-right').readyState >= 1"
    )
    page.keyboard.press("Space")
    page.wait_for_selector("#watch-left.done", timeout=15_000)
    page.wait_for_selector("#watch-right.done", timeout=15_000)
    for key in ("3", "3", "1"):  # right, right, left; the highlight moves down by itself
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('progress-text').textContent.startsWith('2 /')")
    right, left = ("a", "b") if swap2 else ("b", "a")
    assert _responses(srv, second_id) == {"visual_quality": right, "motion_quality": right, "text_alignment": left}

    # --- item 3: leave half way (reload), come back to the same item, already watched ----------------------------
    page.wait_for_selector("#item:not([hidden])")
    third_id = _pending(srv, token)[2][0]
    page.click("#play")
    page.wait_for_selector("#watch-right.done", timeout=15_000)
    page.wait_for_selector("#watch-left.done", timeout=15_000)
    page.wait_for_timeout(300)  # let the 'ended' events reach the server
    page.reload()
    page.wait_for_selector("#item:not([hidden])")
    assert [r[0] for r in _pending(srv, token) if r[1] == "pending"] == [third_id]
    assert _choices_state(page)["enabled"]  # the server remembers the full watch
    assert page.inner_text("#progress-text").startswith("2 /")

    # --- the same page on a phone --------------------------------------------------------------------------------
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    ppage = phone.new_page()
    ppage.goto(f"{srv.url}/a/{token}")
    ppage.wait_for_selector("#item:not([hidden])")
    ppage.wait_for_function("() => document.getElementById('video-left').readyState >= 1")
    width = ppage.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling
    boxes = [ppage.locator(f'.side[data-side="{s}"]').bounding_box() for s in ("left", "right")]
    assert boxes[0]["y"] == pytest.approx(boxes[1]["y"]) and boxes[0]["x"] < boxes[1]["x"]  # side by side
    ppage.tap('fieldset[data-question="visual_quality"] button[data-value="tie"]')
    ppage.screenshot(path=str(ARTIFACTS / "study_annotate_phone.png"), full_page=True)
    phone.close()
    assert not console_errors, console_errors

    # --- results page --------------------------------------------------------------------------------------------
    page.goto(f"{srv.url}/study-results/{study['id']}")
    page.fill("#key", srv.key)
    page.click("#load")
    page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
    page.wait_for_function(
        "() => document.getElementById('figure').complete && document.getElementById('figure').naturalWidth > 0"
    )
    text = page.inner_text("#pairwise")
    assert "Pairwise preferences" in text and " vs " in text
    assert "2 answers" in page.inner_text("#status") or "6 answers" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "study_results.png"), full_page=True)
    ctx.close()
    for name in ("study_annotate.png", "study_annotate_phone.png", "study_results.png"):
        assert (ARTIFACTS / name).read_bytes()[:4] == b"\x89PNG"
