"""The learning-rate schedule: linear warmup, then constant, cosine, or constant + linear warmdown to
min_lr_ratio * lr."""

import math

import pytest

from trainer.config import ConfigError, load_train_config
from trainer.loop import learning_rate


def _cfg(**optim):
    return load_train_config("sft", {"steps": 110, "optim": {"lr": 1e-3, "warmup_steps": 10, **optim}})


def test_warmup_is_linear_then_constant():
    cfg = _cfg(schedule="constant")
    assert learning_rate(1e-3, 0, cfg) == pytest.approx(1e-4)
    assert learning_rate(1e-3, 4, cfg) == pytest.approx(5e-4)
    assert learning_rate(1e-3, 10, cfg) == learning_rate(1e-3, 109, cfg) == 1e-3


def test_cosine_decays_to_the_floor_at_the_last_step():
    cfg = _cfg(schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(1e-3, 10, cfg) == pytest.approx(1e-3)  # decay starts after warmup
    # halfway through the 100 decay steps: 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55
    assert learning_rate(1e-3, 60, cfg) == pytest.approx(0.55e-3)
    assert learning_rate(1e-3, 35, cfg) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4))))
    assert learning_rate(1e-3, 110, cfg) == pytest.approx(1e-4)
    assert learning_rate(1e-3, 500, cfg) == pytest.approx(1e-4)  # past the end: stays at the floor


def test_warmdown_is_constant_then_linear_to_the_floor():
    cfg = _cfg(schedule="warmdown", min_lr_ratio=0.1, warmdown_ratio=0.2)  # 110 steps: decay over the last 22
    assert learning_rate(1e-3, 10, cfg) == learning_rate(1e-3, 88, cfg) == pytest.approx(1e-3)
    assert learning_rate(1e-3, 99, cfg) == pytest.approx(1e-3 * (1 - 0.9 * 11 / 22))
    assert learning_rate(1e-3, 110, cfg) == learning_rate(1e-3, 400, cfg) == pytest.approx(1e-4)


def test_bad_schedule_names_the_field():
    with pytest.raises(ConfigError, match="optim.schedule"):
        _cfg(schedule="linear")
    with pytest.raises(ConfigError, match="optim.min_lr_ratio"):
        _cfg(min_lr_ratio=2.0)
