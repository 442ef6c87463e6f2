"""Optical-flow estimators behind one interface, for MoGAN's motion discriminator (and metrics).

`FlowEstimator.forward(video)`: `video` is `[B, T, 3, H, W]` float in [-1, 1]; the result is
`[B, T-1, 2, H, W]` in pixels, x (width) then y (height), `flow[:, t]` from frame t to t+1, so that
I_{t+1}(p + flow(p)) ~ I_t(p). Estimators are frozen (no trainable parameters, always in eval mode) but
differentiable with respect to the input video, so gradients reach the generator.

The base class is `trainer.flow.base.FlowEstimator` (re-exported here).

Registry (`FLOW_ESTIMATORS`, built with `build_flow_estimator`):
  * "horn_schunck" (default): weight-free pyramid Horn–Schunck in torch (tiny scale, CPU, CI);
  * "raft_small", "raft_large": torchvision RAFT loaded from a local `.pth` state dict
    (config field `flow.weights_path`); nothing is downloaded.

Example:
    est = build_flow_estimator("horn_schunck", device="cpu", dtype=torch.float32)
    flow = est(video)  # [B, T-1, 2, H, W]

Run its tests: `python -m pytest tests/trainer/flow -q`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.flow.base import FlowEstimator
from trainer.flow.horn_schunck import HornSchunckFlow
from trainer.flow.raft import RaftFlow


def _build_horn_schunck(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    if weights_path is not None:
        raise ValueError("flow.weights_path must be empty for 'horn_schunck' (it is weight-free)")
    return HornSchunckFlow(**kwargs)


def _build_raft_small(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    return RaftFlow("raft_small", weights_path=weights_path, **kwargs)


def _build_raft_large(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    return RaftFlow("raft_large", weights_path=weights_path, **kwargs)


# name -> factory(*, weights_path, **estimator_kwargs) -> FlowEstimator (on CPU, float32).
FLOW_ESTIMATORS: dict[str, Callable[..., FlowEstimator]] = {
    "horn_schunck": _build_horn_schunck,
    "raft_small": _build_raft_small,
    "raft_large": _build_raft_large,
}

DEFAULT_FLOW_ESTIMATOR = "horn_schunck"


def build_flow_estimator(
    name: str = DEFAULT_FLOW_ESTIMATOR,
    *,
    weights_path: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> FlowEstimator:
    """Build a frozen flow estimator by registry name (config field `flow.name`).

    `kwargs` go to the estimator (e.g. `num_iters=` for Horn–Schunck, `num_flow_updates=` for RAFT).
    Raises ValueError for an unknown name, FileNotFoundError for a missing RAFT weights file.
    """
    if name not in FLOW_ESTIMATORS:
        raise ValueError(f"flow.name: unknown flow estimator {name!r}; choose one of {sorted(FLOW_ESTIMATORS)}")
    est = FLOW_ESTIMATORS[name](weights_path=weights_path, **kwargs)
    return est.to(device=device, dtype=dtype).freeze()


__all__ = [
    "DEFAULT_FLOW_ESTIMATOR",
    "FLOW_ESTIMATORS",
    "FlowEstimator",
    "HornSchunckFlow",
    "build_flow_estimator",
]
