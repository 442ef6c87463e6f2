"""Run tracking: TensorBoard scalars = metrics.jsonl, resume without duplicate steps, validation videos at the right
steps that show what serving shows and leave training untouched, W&B optional.

    OMP_NUM_THREADS=1 python -m pytest tests/trainer/test_tracking.py -q
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.config import ConfigError, load_train_config
from trainer.data.video_io import read_video, write_video
from trainer.loop import train_run
from trainer.serving import generate_video
from trainer.tracking import Tracker, eval_mode, flatten_scalars, preserved_rng
from trainer.zoo import resolve_checkpoint

HAS_WANDB = importlib.util.find_spec("wandb") is not None
ONE_PROMPT = ["a red square moves right"]


def sft(init, **over) -> dict:
    base = {
        "init": str(init),
        "steps": 4,
        "batch_size": 1,
        "checkpoint_every": 2,
        "log_every": 1,
        "ema_decay": 0.0,
        "data": {"num_videos": 2},
        "optim": {"warmup_steps": 0},
    }
    return load_train_config("sft", {**base, **over})


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_the_scalars_of_metrics_jsonl_at_the_same_steps(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "r"
    train_run(sft(tiny_pipeline_dir, log_every=2), run, progress_bar=False)
    recs = records(run)
    assert [r["step"] for r in recs] == [2, 4]
    acc = events(run)
    tags = set(flatten_scalars(recs[0]))
    assert {"transformer/loss", "transformer/grad_norm", "lr/transformer", "sec_per_step"} <= tags
    assert tags <= set(acc.Tags()["scalars"])
    for tag in tags:
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [2, 4], tag
        want = [flatten_scalars(r)[tag] for r in recs]
        assert np.allclose([e.value for e in got], want, rtol=1e-6), tag
    assert [e.wall_time for e in acc.Scalars("transformer/loss")] == pytest.approx([r["time"] for r in recs])


def test_a_resumed_run_logs_every_step_once(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "r"
    cfg = sft(tiny_pipeline_dir, validation_every=3, validation_prompts=ONE_PROMPT)
    train_run(cfg, run, progress_bar=False)
    first = events(run).Scalars("transformer/loss")
    # as a run killed after step 4's logs but before its checkpoint leaves it
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "export")
    (run / "validation" / "step-00000003" / "stale").write_text("from before the restart")
    out = train_run(cfg, run, progress_bar=False)
    assert out["resumed_from"] == 2
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    acc = events(run)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    for tag in ("transformer/loss", "lr/transformer", "sec_per_step"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4], tag
    # exact resume: the re-run steps log the values the first run logged
    assert [e.value for e in acc.Scalars("transformer/loss")] == [e.value for e in first]
    assert [e.step for e in acc.Images("validation/0")] == [3]
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-00000003"]
    assert not (run / "validation" / "step-00000003" / "stale").exists()


def test_a_run_killed_before_its_first_checkpoint_starts_its_logs_afresh(tmp_path):
    cfg = load_train_config("sft", {})

    def log(steps, loss):
        tracker = Tracker(tmp_path, cfg, start=0)
        for step in steps:
            tracker.log(
                {
                    "step": step,
                    "time": float(step),
                    "sec_per_step": 0.1,
                    "lr": {"transformer": 1e-3},
                    "transformer/loss": loss,
                }
            )
        tracker.close()

    log([1, 2, 3], 9.0)  # killed after step 3, no checkpoint: the restart runs from step 0
    log([1, 2], 1.0)
    assert [(r["step"], r["transformer/loss"]) for r in records(tmp_path)] == [(1, 1.0), (2, 1.0)]
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("transformer/loss")] == [(1, 1.0), (2, 1.0)]


def test_validation_videos_at_every_nth_step_show_motion(tmp_path):
    teacher = resolve_checkpoint("tiny-teacher")  # the shipped, trained tiny teacher: its videos show the prompts
    run = tmp_path / "r"
    cfg = sft(teacher, steps=4, batch_size=2, validation_every=2, optim={"lr": 1e-6})
    train_run(cfg, run, progress_bar=False)
    prompts = list(cfg.validation_prompts)
    assert len(prompts) >= 2
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-00000002", "step-00000004"]
    acc = events(run)
    for step in (2, 4):
        out = run / "validation" / f"step-{step:08d}"
        listed = json.loads((out / "prompts.json").read_text())
        assert [x["prompt"] for x in listed] == prompts and [x["seed"] for x in listed] == list(range(len(prompts)))
        for i in range(len(prompts)):
            frames, fps = read_video(out / f"{i}.mp4")
            assert frames.shape == (17, 32, 32, 3) and fps == 8
            f = frames.astype(np.float32)
            assert f.std() > 10, f"{out / f'{i}.mp4'} is flat"
            assert np.abs(np.diff(f, axis=0)).mean() > 1.0, f"{out / f'{i}.mp4'} does not move"
    for i in range(len(prompts)):
        imgs = acc.Images(f"validation/{i}")
        assert [e.step for e in imgs] == [2, 4]
        gif = iio.imread(io.BytesIO(imgs[0].encoded_image_string), index=None, extension=".gif")
        assert imgs[0].encoded_image_string[:6] == b"GIF89a" and gif.shape[:3] == (17, 32, 32)
    # the prompts differ, and so do their videos
    a, b = (read_video(run / "validation" / "step-00000004" / f"{i}.mp4")[0].astype(np.float32) for i in (0, 1))
    assert np.abs(a - b).mean() > 5


@pytest.mark.parametrize("method", ["sft", "dmd"])
def test_final_validation_is_what_serving_makes_of_the_export(method, tiny_pipeline_dir, tmp_path):
    """The SFT teacher is sampled with its multi-step CFG sampler, the DMD student with its few-step one."""
    run = tmp_path / "r"
    if method == "sft":
        cfg = sft(tiny_pipeline_dir, steps=2, validation_every=2, validation_prompts=ONE_PROMPT, validation_seed=7)
    else:
        cfg = load_train_config(
            "dmd",
            {
                "teacher": str(tiny_pipeline_dir),
                "steps": 1,
                "batch_size": 1,
                "checkpoint_every": 1,
                "validation_every": 1,
                "validation_prompts": ONE_PROMPT,
                "validation_seed": 7,
                "method_cfg": {"critic_steps": 1, "num_prompts": 4},
            },
        )
    train_run(cfg, run, progress_bar=False)
    served, info = generate_video(run / "export", ONE_PROMPT[0], 7)
    assert info["kind"] == ("teacher" if method == "sft" else "few_step")
    step = cfg.steps
    want = read_video(write_video(tmp_path / "served.mp4", served, fps=info["fps"], quality="web"))[0]
    got = read_video(run / "validation" / f"step-{step:08d}" / "0.mp4")[0]
    assert np.array_equal(got, want)


def test_validation_does_not_change_the_trained_weights(tiny_pipeline_dir, tmp_path, differing_weights):
    over = {"steps": 3, "ema_decay": 0.9, "method_cfg": {"caption_dropout": 0.5}}
    train_run(sft(tiny_pipeline_dir, **over), tmp_path / "off", progress_bar=False)
    train_run(
        sft(tiny_pipeline_dir, **over, validation_every=1, validation_prompts=ONE_PROMPT),
        tmp_path / "on",
        progress_bar=False,
    )
    assert len(list((tmp_path / "on" / "validation").iterdir())) == 3
    assert differing_weights(tmp_path / "off" / "export", tmp_path / "on" / "export") == []
    assert records(tmp_path / "off")[-1]["transformer/loss"] == records(tmp_path / "on")[-1]["transformer/loss"]


def test_validation_may_be_switched_on_when_a_run_resumes(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "r"
    train_run(sft(tiny_pipeline_dir, steps=2), run, progress_bar=False)
    train_run(
        sft(tiny_pipeline_dir, steps=3, validation_every=3, validation_prompts=ONE_PROMPT), run, progress_bar=False
    )
    assert (run / "validation" / "step-00000003" / "0.mp4").is_file()


def test_rng_and_train_flags_are_restored():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a submodule with its own flag

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    def seed():
        random.seed(1), np.random.seed(1), torch.manual_seed(1)

    seed()
    ref = draws()
    seed()
    with preserved_rng(), eval_mode(net):
        assert not any(m.training for m in net.modules())
        draws()
    assert draws() == ref
    assert [m.training for m in net.modules()] == [True, True, False]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="validation_every.*out of range"):
        load_train_config("sft", {"validation_every": -1})
    with pytest.raises(ConfigError, match="validation_prompts"):
        load_train_config("sft", {"validation_every": 5, "validation_prompts": []})
    assert load_train_config("sft", {}).validation_every == 0  # off by default: tiny recipes pay nothing


@pytest.mark.skipif(HAS_WANDB, reason="checks the fallback when wandb is absent; wandb is installed here")
def test_wandb_requested_but_not_installed_still_logs_jsonl_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "motionlab-test")
    cfg = load_train_config("sft", {})
    with pytest.warns(UserWarning, match="wandb package cannot be imported"):
        tracker = Tracker(tmp_path, cfg)
    tracker.log({"step": 1, "time": 0.0, "sec_per_step": 0.5, "lr": {"transformer": 1e-3}, "transformer/loss": 2.0})
    tracker.close()
    assert records(tmp_path)[0]["transformer/loss"] == 2.0
    assert [e.value for e in events(tmp_path).Scalars("lr/transformer")] == pytest.approx([1e-3])


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (optional: pip install wandb)")
def test_wandb_offline_run_is_resumed_under_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "motionlab-test")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_train_config("sft", {})
    for step in (1, 2):
        tracker = Tracker(tmp_path, cfg, start=step - 1)
        tracker.log(
            {"step": step, "time": 0.0, "sec_per_step": 0.5, "lr": {"transformer": 1e-3}, "transformer/loss": 1.0}
        )
        tracker.close()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert run_id and any(run_id in p.name for p in (tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.timeout(600)
def test_under_ddp_every_rank_samples_and_rank_0_writes(tiny_pipeline_dir, tmp_path):
    """The wrapped network's forward is a collective (DDP broadcasts buffers, FSDP gathers shards): a rank that
    skipped validation would leave the others waiting. The ranks' weights stay identical."""
    from tests.trainer.ddp_helpers import train_and_digest
    from trainer.distributed import launch_local

    cfg = sft(tiny_pipeline_dir, steps=2, batch_size=2, validation_every=1, validation_prompts=ONE_PROMPT)
    digests = launch_local(train_and_digest, cfg, tmp_path / "r", nprocs=2)
    assert len(digests) == 2 and digests[0] == digests[1]
    assert sorted(p.name for p in (tmp_path / "r" / "validation").iterdir()) == ["step-00000001", "step-00000002"]
    assert [e.step for e in events(tmp_path / "r").Images("validation/0")] == [1, 2]
