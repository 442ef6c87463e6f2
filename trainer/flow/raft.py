"""torchvision RAFT (small / large) as a frozen, input-differentiable `FlowEstimator` (full scale).

The network is built with `weights=None` and loaded from a local `.pth` file in torchvision's format
(a plain state dict, e.g. `raft_large_C_T_SKHT_V2-ff5fadd5.pth`), configured as `flow.weights_path`.
Nothing is downloaded; a missing file raises FileNotFoundError naming the file and the field.

Input sizes: torchvision's RAFT needs H and W divisible by 8 and, with its 4-level correlation pyramid,
at least 8 * 2 * 2**(levels - 1) = 128 pixels (the weights' `min_size` meta is (128, 128)). Smaller or
non-multiple-of-8 frames are resized (bilinear) up to the nearest valid size, and the predicted flow is
resized back with its x / y vectors rescaled by W / W' and H / H' — never rejected.

RAFT takes images in [-1, 1] (torchvision's `OpticalFlow` transform maps [0, 1] to [-1, 1]), which is
the convention of our videos, so frames are fed as they are.

Run its tests: `python -m pytest tests/trainer/flow -q`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from trainer.flow.base import FlowEstimator
from trainer.flow.horn_schunck import resize_flow

_RAFT_VARIANTS = ("raft_small", "raft_large")


def _build_raft(variant: str) -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_large, raft_small

    if variant == "raft_small":
        return raft_small(weights=None, progress=False)
    if variant == "raft_large":
        return raft_large(weights=None, progress=False)
    raise ValueError(f"flow.name: unknown RAFT variant {variant!r}; choose one of {_RAFT_VARIANTS}")


def load_raft(variant: str, weights_path: str | os.PathLike | None) -> torch.nn.Module:
    """Build torchvision's `variant` with `weights=None` and load the local state dict (CPU, eval)."""
    if weights_path is None or str(weights_path) == "":
        raise FileNotFoundError(
            f"flow.weights_path is not set: {variant} needs a local torchvision state-dict file "
            f"(e.g. {variant}_*.pth); nothing is downloaded at run time"
        )
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"RAFT weights file not found: {path!r} (config field flow.weights_path, model {variant})"
        )
    model = _build_raft(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        # ValueError (not TypeError): the project reports bad config/file content as ValueError.
        raise ValueError(f"flow.weights_path {path!r}: expected a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # wrong variant or not a RAFT file: say which file and which model
        raise ValueError(f"flow.weights_path {path!r} does not hold {variant} weights: {exc}") from exc
    return model.eval()


def raft_min_size(model: torch.nn.Module) -> int:
    """Smallest H / W torchvision's RAFT accepts, from its correlation pyramid depth (128 for 4 levels)."""
    levels = int(model.corr_block.num_levels)
    return 8 * 2 * 2 ** (levels - 1)


def raft_valid_size(height: int, width: int, min_size: int = 128) -> tuple[int, int]:
    """The nearest size >= (height, width) that is a multiple of 8 and at least `min_size` on both sides."""

    def fix(n: int) -> int:
        return max(min_size, 8 * math.ceil(n / 8))

    return fix(height), fix(width)


class RaftFlow(FlowEstimator):
    """Frozen torchvision RAFT (`raft_small` / `raft_large`) loaded from `weights_path`.

    Args:
        variant: "raft_small" or "raft_large".
        weights_path: local torchvision `.pth` state dict (config `flow.weights_path`).
        num_flow_updates: RAFT refinement iterations (12 for training; VBench uses 20).
        pair_chunk: frame pairs per RAFT call (None: all at once); bounds the correlation-volume memory.
    """

    def __init__(
        self,
        variant: str = "raft_large",
        *,
        weights_path: str | os.PathLike | None,
        num_flow_updates: int = 12,
        pair_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if num_flow_updates < 1:
            raise ValueError(f"flow.num_flow_updates must be >= 1, got {num_flow_updates}")
        if pair_chunk is not None and pair_chunk < 1:
            raise ValueError(f"flow.pair_chunk must be >= 1 or None, got {pair_chunk}")
        self.variant = variant
        self.model = load_raft(variant, weights_path)
        self.num_flow_updates = num_flow_updates
        self.pair_chunk = pair_chunk
        self.min_size = raft_min_size(self.model)
        self.freeze()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # torchvision's RAFT builds its coordinate grids in float32 and mixes them with the features
        # (`grid_sample` then fails for bf16 / fp16 / fp64 weights), so whatever `.to(dtype)` a parent
        # module asks for, the weights stay float32; inputs are cast in `forward` and the flow is
        # cast back to the input dtype. Device moves are applied normally.
        super()._apply(fn, recurse)
        if recurse:
            super()._apply(lambda t: t.float() if t.is_floating_point() else t, recurse)
        return self

    def _pairs_flow(self, i1: Tensor, i2: Tensor) -> Tensor:
        """RAFT on `[N, 3, H, W]` pairs at a valid size; returns `[N, 2, H, W]` at the input size."""
        h, w = i1.shape[-2:]
        size = raft_valid_size(h, w, self.min_size)
        if size != (h, w):
            i1 = torch.nn.functional.interpolate(i1, size=size, mode="bilinear", align_corners=False)
            i2 = torch.nn.functional.interpolate(i2, size=size, mode="bilinear", align_corners=False)
        flow = self.model(i1, i2, num_flow_updates=self.num_flow_updates)[-1]
        return resize_flow(flow, (h, w))

    def forward(self, video: Tensor) -> Tensor:
        b, t, c, h, w = self._check_video(video)
        x = video.float()  # RAFT runs in float32 (see `_apply`)
        i1 = x[:, :-1].reshape(b * (t - 1), c, h, w)
        i2 = x[:, 1:].reshape(b * (t - 1), c, h, w)
        n = i1.shape[0]
        chunk = self.pair_chunk or n
        flows = [self._pairs_flow(i1[s : s + chunk], i2[s : s + chunk]) for s in range(0, n, chunk)]
        flow = torch.cat(flows, dim=0)
        return flow.reshape(b, t - 1, 2, h, w).to(video.dtype)
