"""The shipped tiny zoo as a user sees it: the Generate and Compare tabs of ``motionlab serve`` (real server, headless
Chromium) show each shipped checkpoint's video of a prompt, and the shown frame holds the caption's colour.

Screenshots: ``test-artifacts/webui_shipped_<checkpoint>.png`` and ``test-artifacts/webui_shipped_compare.png``.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from tests.webui.test_browser import fill, open_ui, pick, show_frame, text, wait_for, wait_status

pytestmark = pytest.mark.timeout(900)

SHIPPED = ("tiny-teacher", "tiny-dmd", "tiny-mogan", "tiny-vdot", "tiny-dfdpo")
PROMPT = "a blue circle moves right"  # blue circles are in the training split: what a first user types
SEED = 7


@pytest.fixture(scope="module")
def server(shipped_server):
    """The ``page`` fixture's server here: the one over the shipped zoo."""
    return shipped_server


def _shown_frame(pg, selector: str) -> np.ndarray:
    """The pixels of the first video element as the browser draws them (RGB uint8)."""
    png = pg.locator(selector).first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _saturated_hue(frame: np.ndarray) -> tuple[float, float]:
    """(saturation of the most saturated 2% of pixels, their mean hue in degrees)."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in frame.reshape(-1, 3)[::3]])
    top = hsv[hsv[:, 1] >= np.quantile(hsv[:, 1], 0.98)]
    hue = np.degrees(np.angle(np.exp(2j * np.pi * top[:, 0]).mean())) % 360
    return float(top[:, 1].mean()), float(hue)


@pytest.mark.parametrize("checkpoint", SHIPPED)
def test_generate_tab_shows_the_captions_colour(page, server, artifacts, checkpoint):
    pg = page
    open_ui(pg, server)
    wait_for(lambda: "checkpoints available" in text(pg, "gen-status"), 30, "the checkpoint list")
    pick(pg, "gen-checkpoint", checkpoint)
    wait_for(lambda: pg.input_value("#gen-frames input") == "17", 20, "the checkpoint's defaults")
    fill(pg, "gen-prompt", PROMPT)
    fill(pg, "gen-seed", SEED)
    pg.click("#gen-button")
    wait_status(pg, "gen-status", rf"Done: 17 frames from {checkpoint}", 300, server)
    show_frame(pg, "#gen-video video")
    pg.screenshot(path=str(artifacts / f"webui_shipped_{checkpoint}.png"), full_page=True)
    saturation, hue = _saturated_hue(_shown_frame(pg, "#gen-video video"))
    # blue is hue ~225 (COLOURS["blue"]); a colourless smudge has saturation ~0.1-0.3
    assert saturation > 0.5 and 190 < hue < 260, (saturation, hue)


def test_compare_tab_shows_every_shipped_checkpoint(page, server, artifacts):
    pg = page
    open_ui(pg, server, tab="Compare")
    for name in SHIPPED[:4]:  # the Compare grid holds four
        pick(pg, "cmp-checkpoints", name)
    pg.keyboard.press("Escape")
    fill(pg, "cmp-prompt", PROMPT)
    fill(pg, "cmp-seed", SEED)
    pg.click("#cmp-button")
    wait_status(pg, "cmp-status", rf"Done: 4 checkpoints on the same prompt and seed {SEED}", 500, server)
    show_frame(pg, "#cmp-grid video, #cmp-composite video")
    pg.screenshot(path=str(artifacts / "webui_shipped_compare.png"), full_page=True)
    composite = _shown_frame(pg, "#cmp-composite video")
    # the clips' row only: the optical-flow row under it is coloured by the motion's direction (rightward is red)
    saturation, hue = _saturated_hue(composite[: composite.shape[0] // 2])
    assert saturation > 0.5 and 190 < hue < 260, (saturation, hue)
