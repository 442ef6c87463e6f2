"""Every method trains from preprocessed shards without its text encoder; resume is exact; peak memory does not
grow with the dataset."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from trainer.config import load_train_config
from trainer.data.shards import INDEX_FILE, ShardSet
from trainer.loop import train_run
from trainer.methods import METHODS
from trainer.models.generator import Generator

SMALL = {"batch_size": 2, "checkpoint_every": 1, "log_every": 1, "steps": 2}
METHOD_CFG = {
    "sft": ("sft", {"init": True}, {}),
    "dmd": ("dmd", {"teacher": True}, {"critic_steps": 1}),
    "mogan": ("mogan", {"teacher": True}, {"critic_steps": 1, "window_chunks": 2}),
    "mogan-video": ("mogan", {"teacher": True}, {"critic_steps": 1, "window_chunks": 2, "disc_space": "video"}),
    "vdot": ("vdot", {"teacher": True}, {"critic_steps": 1}),
    "dfdpo": ("dfdpo", {"init": True}, {}),
}


def _config(case, pipeline, root, **over):
    method, refs, mcfg = METHOD_CFG[case]
    d = {
        **SMALL,
        **{k: str(pipeline) for k in refs},
        "method_cfg": mcfg,
        "data": {"source": "shards", "root": str(root)},
    }
    return load_train_config(method, {**d, **over})


@pytest.mark.parametrize("case", sorted(METHOD_CFG))
def test_method_trains_from_shards_without_text_encoder(case, tiny_pipeline_dir, shards_dir, tmp_path):
    cfg = _config(case, tiny_pipeline_dir, shards_dir)
    m = METHODS[cfg.method](cfg, torch.device("cpu"), torch.float32)
    assert m.gen.text_encoder is None
    m.run_dir = tmp_path / "probe"
    m.setup_data(0, 1)
    assert m.gen.text_encoder is None and not (tmp_path / "probe" / "cache").exists()

    out = train_run(_config(case, tiny_pipeline_dir, shards_dir), tmp_path / "run", progress_bar=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for rec in logs for k, v in rec.items() if k.endswith("/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)
    assert any("position" in v for v in state["method"].values() if isinstance(v, dict))
    export = Generator.from_pretrained(out["export_dir"])  # a complete pipeline: the text encoder was copied
    teacher = Generator.from_pretrained(tiny_pipeline_dir)
    assert all(torch.equal(a, b) for a, b in zip(export.text_encoder.parameters(), teacher.text_encoder.parameters()))


def test_resume_from_shards_is_exact(tiny_pipeline_dir, shards_dir, tmp_path, differing_weights):
    straight = train_run(
        _config("sft", tiny_pipeline_dir, shards_dir, steps=4, checkpoint_every=2),
        tmp_path / "straight",
        progress_bar=False,
    )
    train_run(
        _config("sft", tiny_pipeline_dir, shards_dir, steps=2, checkpoint_every=2),
        tmp_path / "resumed",
        progress_bar=False,
    )
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)
    assert state["method"]["data"] == {"position": 4}  # steps x batch size
    resumed = train_run(
        _config("sft", tiny_pipeline_dir, shards_dir, steps=4, checkpoint_every=2),
        tmp_path / "resumed",
        progress_bar=False,
    )
    assert resumed["resumed_from"] == 2
    assert differing_weights(straight["export_dir"], resumed["export_dir"]) == []


# -- peak memory ----------------------------------------------------------------------------------------------

RSS_SCRIPT = """
import json, sys
from trainer.config import load_train_config
from trainer.loop import peak_rss_bytes, train_run
train_run(load_train_config("sft", json.loads(sys.argv[1])), sys.argv[2], progress_bar=False)
print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))
"""
RSS_BOUND = 1.05  # peak RSS of the 10x run over the 1x run
COPIES_1X = 100  # the fixture's 12 clips, 100 times: 1200 clips in 300 shards; 10x: 12000 clips in 3000 shards


def replicate(src, dst, copies: int):
    """A shard directory whose clips are ``copies`` copies of ``src``'s (hard links): as many samples and shard files
    to index, check and stream as a dataset that size, without encoding it. The reader's memory depends on shard
    count and size, not on the values in them."""
    dst.mkdir()
    index = json.loads((src / INDEX_FILE).read_text())
    for f in src.iterdir():
        if f.name != INDEX_FILE and not f.name.startswith("clips-"):
            os.link(f, dst / f.name)
    shards, first = [], 0
    for _ in range(copies):
        for entry in index["clips"]["shards"]:
            name = f"clips-{len(shards):05d}.safetensors"
            os.link(src / entry["file"], dst / name)
            shards.append({**entry, "file": name, "first": first})
            first += entry["count"]
    index["clips"].update(shards=shards, count=first)
    (dst / INDEX_FILE).write_text(json.dumps(index))
    return dst


def peak_rss_mb(overrides: dict, run_dir) -> float:
    """Peak RSS of an SFT run in a fresh interpreter."""
    res = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, json.dumps(overrides), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_bytes"] / 2**20


def test_peak_memory_does_not_grow_with_the_dataset(tiny_pipeline_dir, shards_dir, tmp_path):
    small = replicate(shards_dir, tmp_path / "x1", COPIES_1X)
    large = replicate(shards_dir, tmp_path / "x10", 10 * COPIES_1X)
    assert ShardSet(large).count("clips") == 10 * ShardSet(small).count("clips") == 12000
    # a few small-batch steps stream several shards: the reader reaches its steady state (one shard consumed, one ahead)
    run = {
        "init": str(tiny_pipeline_dir),
        "steps": 4,
        "batch_size": 4,
        "checkpoint_every": 1000,
        "log_every": 4,
        "ema_decay": 0.0,
    }
    rss_small = peak_rss_mb({**run, "data": {"source": "shards", "root": str(small)}}, tmp_path / "run1")
    rss_large = peak_rss_mb({**run, "data": {"source": "shards", "root": str(large)}}, tmp_path / "run10")
    print(f"peak RSS: 1x {rss_small:.0f} MB, 10x {rss_large:.0f} MB, ratio {rss_large / rss_small:.3f}")
    assert rss_large / rss_small < RSS_BOUND
    # The data is big enough for the bound to mean something: the in-memory path (sft.LatentData -> load_clips)
    # holds all 12000 decoded clips at once, several times the bound's margin (measured: the slow test below).
    clip_bytes = 17 * 32 * 32 * 3
    assert 12000 * clip_bytes / 2**20 > 5 * (RSS_BOUND - 1) * rss_small


@pytest.mark.slow
def test_in_memory_peak_memory_grows_with_the_dataset(tiny_pipeline_dir, tmp_path):
    """The comparison the shard path is measured against: synthetic in-memory SFT at 1x and 10x clips."""
    run = {
        "init": str(tiny_pipeline_dir),
        "steps": 8,
        "batch_size": 4,
        "checkpoint_every": 1000,
        "log_every": 4,
        "ema_decay": 0.0,
    }
    rss_small = peak_rss_mb({**run, "data": {"num_videos": 1200}}, tmp_path / "run1")
    rss_large = peak_rss_mb({**run, "data": {"num_videos": 12000}}, tmp_path / "run10")
    print(f"in-memory peak RSS: 1x {rss_small:.0f} MB, 10x {rss_large:.0f} MB, ratio {rss_large / rss_small:.3f}")
    assert rss_large / rss_small > RSS_BOUND
