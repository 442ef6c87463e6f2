"""Mixed precision in the training loop: bf16 autocast changes the arithmetic, not the float32 master weights.

On GPU the loop's default ("auto") is bf16; torch's CPU autocast runs the same code path here.
"""

import json

import pytest
import torch

from trainer.config import load_train_config
from trainer.loop import train_run
from trainer.models.generator import Generator


def _train(init, run_dir, mixed_precision: str) -> tuple[list[float], dict]:
    cfg = load_train_config(
        "sft",
        {
            "init": str(init),
            "steps": 2,
            "batch_size": 2,
            "log_every": 1,
            "checkpoint_every": 2,
            "mixed_precision": mixed_precision,
            "data": {"num_videos": 4},
        },
    )
    out = train_run(cfg, run_dir, progress_bar=False)
    losses = [json.loads(line)["transformer/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return losses, Generator.from_pretrained(out["export_dir"]).transformer.state_dict()


def test_bf16_autocast_trains_float32_weights_close_to_the_float32_run(tiny_pipeline_dir, tmp_path):
    fp32_losses, _fp32 = _train(tiny_pipeline_dir, tmp_path / "fp32", "no")
    bf16_losses, bf16 = _train(tiny_pipeline_dir, tmp_path / "bf16", "bf16")
    assert all(v.dtype == torch.float32 for v in bf16.values())  # master weights stay float32
    assert bf16_losses != fp32_losses  # autocast really ran the matmuls in bf16 ...
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05)  # ... and bf16 rounding is all it changed
    init = Generator.from_pretrained(tiny_pipeline_dir).transformer.state_dict()
    assert any(not torch.equal(bf16[k], init[k]) for k in init)  # and it trained
