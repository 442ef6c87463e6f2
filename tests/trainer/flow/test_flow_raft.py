"""Tests of the torchvision RAFT wrapper with real (random-weight) models saved to a local .pth file.

Run: `python -m pytest tests/trainer/flow -q`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_small

from trainer.flow import build_flow_estimator
from trainer.flow.raft import RaftFlow, raft_min_size, raft_valid_size


@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    return path


def test_missing_file_names_file_and_field(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as info:
        build_flow_estimator("raft_small", weights_path=str(missing))
    assert "flow.weights_path" in str(info.value)
    with pytest.raises(FileNotFoundError, match="flow.weights_path"):
        build_flow_estimator("raft_large", weights_path=None)


def test_wrong_variant_file_is_rejected(raft_small_file: Path) -> None:
    with pytest.raises(ValueError, match="raft_large"):
        RaftFlow("raft_large", weights_path=raft_small_file)


def test_valid_size() -> None:
    assert raft_valid_size(32, 32) == (128, 128)
    assert raft_valid_size(130, 250) == (136, 256)
    assert raft_valid_size(480, 832) == (480, 832)


def test_runs_on_tiny_input_and_matches_manual_resize(raft_small_file: Path) -> None:
    est = build_flow_estimator("raft_small", weights_path=str(raft_small_file), num_flow_updates=2)
    assert not est.training
    assert all(not p.requires_grad for p in est.parameters())
    assert est.min_size == 128 == raft_min_size(est.model)

    torch.manual_seed(1)
    video = (torch.rand(1, 2, 3, 32, 32) * 2 - 1).requires_grad_()
    flow = est(video)
    assert flow.shape == (1, 1, 2, 32, 32)
    assert torch.isfinite(flow).all()

    # The same computation by hand with the real torchvision model: upsample to 128, RAFT, downsample,
    # then rescale the vectors by 32 / 128.
    ref_model = raft_small(weights=None, progress=False)
    ref_model.load_state_dict(torch.load(raft_small_file, weights_only=True))
    ref_model.eval()
    with torch.no_grad():
        a = F.interpolate(video[:, 0].detach(), size=(128, 128), mode="bilinear", align_corners=False)
        b = F.interpolate(video[:, 1].detach(), size=(128, 128), mode="bilinear", align_corners=False)
        raw = ref_model(a, b, num_flow_updates=2)[-1]
        ref = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False) * 0.25
    assert raw.abs().max() > 0  # random weights still predict a non-trivial flow
    assert torch.allclose(flow[0, 0].detach(), ref[0], atol=1e-4, rtol=1e-4)

    flow.square().mean().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0

    # A parent module switching to train mode must not unfreeze RAFT's BatchNorm layers.
    est.train()
    assert not est.model.training
