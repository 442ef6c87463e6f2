"""An export samples at the shape it was trained at: a model fine-tuned on longer clips than its init (or teacher)
makes videos of that length, with the rest of the init's sampling settings."""

import json

import pytest

from trainer.config import load_train_config
from trainer.loop import train_run

FRAMES = 21  # not the tiny pipeline's own length, and long enough for DF-DPO's temporal edits


@pytest.mark.parametrize(
    "method, start, extra",
    [
        ("sft", "init", {"data": {"num_videos": 2, "num_frames": FRAMES}}),
        ("dfdpo", "init", {"data": {"num_videos": 2, "num_frames": FRAMES}}),
        ("dmd", "teacher", {"data": {"num_frames": FRAMES}, "method_cfg": {"num_prompts": 4, "critic_steps": 1}}),
    ],
)
def test_export_samples_at_the_training_clips_length(method, start, extra, tiny_pipeline_dir, tmp_path):
    before = json.loads((tiny_pipeline_dir / "motionlab_sampling.json").read_text())
    assert before["num_frames"] != FRAMES
    cfg = load_train_config(method, {start: str(tiny_pipeline_dir), "steps": 1, "batch_size": 2, **extra})
    out = train_run(cfg, tmp_path / method, progress_bar=False)
    after = json.loads((tmp_path / method / "export" / "motionlab_sampling.json").read_text())
    assert out["export_dir"] and after["num_frames"] == FRAMES
    assert (after["height"], after["width"], after["fps"]) == (before["height"], before["width"], before["fps"])
    if method == "dmd":
        assert after["kind"] == "few_step"
    else:
        assert {k: v for k, v in after.items() if k != "num_frames"} == {
            k: v for k, v in before.items() if k != "num_frames"
        }
