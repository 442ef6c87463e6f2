import numpy as np
import pytest

from evaluator.direction import direction_accuracy, direction_correct
from trainer.data.synthetic import FAMILIES


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_synthetic_translation_is_read_correctly(direction):
    video, caption, _meta = FAMILIES["translate"](np.random.default_rng(0), direction=direction, split="heldout")
    assert direction in caption
    assert direction_correct(video, direction)
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
    assert not direction_correct(video, opposite)


def test_accuracy_counts_and_rejects_unknown_direction():
    rng = np.random.default_rng(1)
    left = FAMILIES["translate"](rng, direction="left")[0]
    assert direction_accuracy([left, left], ["left", "right"]) == 0.5
    with pytest.raises(ValueError, match="direction must be one of"):
        direction_correct(left, "sideways")
