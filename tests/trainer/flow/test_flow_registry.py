"""Tests of the flow-estimator registry. Run: `python -m pytest tests/trainer/flow -q`."""

from __future__ import annotations

import pytest
import torch

from trainer.flow import FLOW_ESTIMATORS, FlowEstimator, HornSchunckFlow, build_flow_estimator


def test_registry_names() -> None:
    assert set(FLOW_ESTIMATORS) == {"horn_schunck", "raft_small", "raft_large"}


def test_build_default_is_horn_schunck() -> None:
    est = build_flow_estimator(device="cpu", dtype=torch.float32, num_iters=5)
    assert isinstance(est, HornSchunckFlow) and isinstance(est, FlowEstimator)
    assert est.num_iters == 5
    out = est(torch.zeros(1, 2, 3, 16, 16))
    assert out.shape == (1, 1, 2, 16, 16)


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="flow.name"):
        build_flow_estimator("farneback")


def test_horn_schunck_rejects_weights_path() -> None:
    with pytest.raises(ValueError, match="flow.weights_path"):
        build_flow_estimator("horn_schunck", weights_path="x.pth")
