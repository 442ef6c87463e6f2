"""The interface every optical-flow estimator implements (``trainer.flow`` builds them by name).

`FlowEstimator.forward(video)`: `video` is `[B, T, 3, H, W]` float in [-1, 1]; the result is `[B, T-1, 2, H, W]`
in pixels, x (width) then y (height), `flow[:, t]` from frame t to t+1. The estimators (`horn_schunck`, `raft`)
subclass it here, below the registry in `trainer/flow/__init__.py` that imports them.
"""

from __future__ import annotations

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


__all__ = ["FlowEstimator"]
