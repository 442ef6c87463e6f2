"""A straight move that fills the whole frame is drawn, not refused by a rounding error."""

import numpy as np

from trainer.config import TINY_FAMILIES
from trainer.data.synthetic import _linear_path, make_clip


def test_path_filling_the_frame_is_drawn():
    # clip 8358 of the tiny teacher's stream: its path spans the frame's full height, where rounding put the
    # start's upper bound below the lower one
    video, caption, _ = make_clip(8358, 0, families=TINY_FAMILIES)
    assert video.shape == (17, 32, 32, 3) and caption
    for seed in range(50):
        _, y0, _, dy, _ = _linear_path(np.random.default_rng(seed), 17, 32, 32, 5.3, "down", 100.0)
        assert 5.3 <= y0 and y0 + 16 * dy <= 32 - 5.3 + 1e-9
