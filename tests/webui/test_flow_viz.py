"""The colour-wheel flow visualisation against hand-computed colours.

python -m pytest tests/webui/test_flow_viz.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from webui.flow_viz import color_wheel, color_wheel_legend, flow_to_color, flows_to_video, magnitude


def field(u: float, v: float, h: int = 2, w: int = 3) -> np.ndarray:
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = u, v
    return f


def test_wheel_has_55_hue_steps_with_the_segment_endpoints():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    assert wheel[0].tolist() == [255, 0, 0]  # red
    assert wheel[14].tolist() == [255, 238, 0]  # last RY step: floor(255 * 14 / 15)
    assert wheel[15].tolist() == [255, 255, 0]  # yellow
    assert wheel[21].tolist() == [0, 255, 0]  # green
    assert wheel[25].tolist() == [0, 255, 255]  # cyan
    assert wheel[36].tolist() == [0, 0, 255]  # blue
    assert wheel[49].tolist() == [255, 0, 255]  # magenta
    assert wheel[54].tolist() == [255, 0, 43]  # 255 - floor(255 * 5 / 6)


def test_no_motion_is_white():
    assert (flow_to_color(np.zeros((4, 5, 2))) == 255).all()


@pytest.mark.parametrize(
    "u,v,rgb",
    [
        (1.0, 0.0, (255, 0, 0)),  # right: hue position 0 -> red
        (0.0, 1.0, (255, 233, 0)),  # down: 13.75 -> 0.25 * 221 + 0.75 * 238 = 233.75
        (-1.0, 0.0, (0, 197, 255)),  # left: 27.5 -> G = 0.5 * 209 + 0.5 * 186 = 197.5
        (0.0, -1.0, (102, 0, 255)),  # up: 41.25 -> R = 0.75 * 98 + 0.25 * 117 = 102.75
    ],
)
def test_direction_sets_the_hue_at_full_saturation(u, v, rgb):
    out = flow_to_color(field(u, v), max_magnitude=1.0)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert (out == np.array(rgb, np.uint8)).all(), out[0, 0]


def test_magnitude_sets_the_saturation():
    # half the normalisation radius: halfway to white, 1 - 0.5 * (1 - c) -> (255, 127, 127) for red
    assert flow_to_color(field(2.0, 0.0), max_magnitude=4.0)[0, 0].tolist() == [255, 127, 127]
    # beyond the radius: same hue, darkened by 0.75 -> floor(255 * 0.75) = 191
    assert flow_to_color(field(8.0, 0.0), max_magnitude=4.0)[0, 0].tolist() == [191, 0, 0]


def test_default_scale_is_the_largest_motion_of_the_field():
    f = np.zeros((1, 2, 2), np.float32)
    f[0, 0] = (3.0, 0.0)  # the largest: fully saturated red
    f[0, 1] = (1.5, 0.0)  # half of it
    out = flow_to_color(f)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 127, 127]


def test_a_clip_shares_one_scale_across_frames():
    flows = np.stack([field(1.0, 0.0), field(4.0, 0.0)])
    clip = flows_to_video(flows)
    assert clip.shape == (2, 2, 3, 3)
    assert clip[1, 0, 0].tolist() == [255, 0, 0]
    # frame 0 moves a quarter of the clip's largest motion: 1 - 0.25 * (1 - c) -> floor(255 * 0.75) = 191
    assert clip[0, 0, 0].tolist() == [255, 191, 191]


def test_non_finite_flow_is_shown_as_no_motion():
    f = field(1.0, 0.0)
    f[0, 0] = (np.nan, np.inf)
    out = flow_to_color(f)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [255, 0, 0]


def test_legend_is_a_disc_white_outside_red_on_the_right():
    key = color_wheel_legend(65)
    assert key.shape == (65, 65, 3)
    assert key[0, 0].tolist() == [255, 255, 255]  # corner: outside the disc
    assert key[32, 32].tolist() == [255, 255, 255]  # centre: no motion
    assert key[32, 64].tolist() == [255, 0, 0]  # right edge, radius 1
    assert key[64, 32].tolist() == [255, 233, 0]  # bottom edge: "down"


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 2\]"):
        flow_to_color(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="max_magnitude"):
        flows_to_video(np.zeros((1, 2, 2, 2)), max_magnitude=-1.0)
    with pytest.raises(ValueError, match="one field"):
        flow_to_color(np.zeros((2, 4, 4, 2)))


def test_magnitude_is_euclidean():
    assert magnitude(field(3.0, 4.0))[0, 0] == pytest.approx(5.0)
