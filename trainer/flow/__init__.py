"""Optical-flow estimators behind one interface, for MoGAN's motion discriminator (and metrics).

`FlowEstimator.forward(video)`: `video` is `[B, T, 3, H, W]` float in [-1, 1]; the result is
`[B, T-1, 2, H, W]` in pixels, x (width) then y (height), `flow[:, t]` from frame t to t+1, so that
I_{t+1}(p + flow(p)) ~ I_t(p). Estimators are frozen (no trainable parameters, always in eval mode) but
differentiable with respect to the input video, so gradients reach the generator.

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
from torch import Tensor, nn


class FlowEstimator(nn.Module):
    """Base class: a frozen, input-differentiable optical-flow estimator.

    Subclasses implement `forward(video [B, T, 3, H, W] in [-1, 1]) -> flow [B, T-1, 2, H, W]`.
    `train()` is overridden so that a parent module switching to training mode never puts the
    estimator (e.g. RAFT's BatchNorm layers) into training mode: the estimator is a fixed function.
    """

    def train(self, mode: bool = True) -> FlowEstimator:  # mode ignored: frozen by design
        return super().train(False)

    def freeze(self) -> FlowEstimator:
        """Turn off gradients for all parameters and switch to eval mode (inputs still get gradients)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    @staticmethod
    def _check_video(video: Tensor) -> tuple[int, int, int, int, int]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W]; got shape {tuple(video.shape)}")
        b, t, c, h, w = video.shape
        if t < 2:
            raise ValueError(f"video must have at least 2 frames (T >= 2) to estimate flow; got T={t}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor in [-1, 1]; got dtype {video.dtype}")
        return b, t, c, h, w


def _build_horn_schunck(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    if weights_path is not None:
        raise ValueError("flow.weights_path must be empty for 'horn_schunck' (it is weight-free)")
    return HornSchunckFlow(**kwargs)


def _build_raft_small(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    from trainer.flow.raft import RaftFlow  # lazy: torchvision's model zoo is only needed here

    return RaftFlow("raft_small", weights_path=weights_path, **kwargs)


def _build_raft_large(*, weights_path: str | None = None, **kwargs: Any) -> FlowEstimator:
    from trainer.flow.raft import RaftFlow

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
        raise ValueError(
            f"flow.name: unknown flow estimator {name!r}; choose one of {sorted(FLOW_ESTIMATORS)}"
        )
    est = FLOW_ESTIMATORS[name](weights_path=weights_path, **kwargs)
    return est.to(device=device, dtype=dtype).freeze()


# Imported last: horn_schunck imports FlowEstimator from this (by now initialized) module.
from trainer.flow.horn_schunck import HornSchunckFlow

__all__ = [
    "DEFAULT_FLOW_ESTIMATOR",
    "FLOW_ESTIMATORS",
    "FlowEstimator",
    "HornSchunckFlow",
    "build_flow_estimator",
]
