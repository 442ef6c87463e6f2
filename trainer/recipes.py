"""Multi-stage training recipes built from ``train_run`` calls.

``train_tiny_teacher``: the tiny VAE (reconstruction + KL), then the tiny teacher (SFT) on its latents. Each stage
is its own run directory under ``run_root``, so re-running resumes whichever stage was interrupted.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import deep_merge, load_train_config
from trainer.loop import train_run


def train_tiny_teacher(run_root: str | Path, sft_overrides: dict | None = None, vae_overrides: dict | None = None,
                       **run_kw) -> Path:
    run_root = Path(run_root)
    sft_overrides = dict(sft_overrides or {})
    shared = {k: sft_overrides[k] for k in ("data", "seed", "device") if k in sft_overrides}
    vae_cfg = load_train_config("vae", deep_merge(shared, vae_overrides or {}), preset="tiny")
    vae = train_run(vae_cfg, run_root / "vae", **run_kw)
    if vae.get("stopped"):
        raise InterruptedError("stopped during the VAE stage")
    sft_cfg = load_train_config("sft", {**sft_overrides, "init": vae["export_dir"]}, preset="tiny")
    sft = train_run(sft_cfg, run_root / "sft", **run_kw)
    if sft.get("stopped"):
        raise InterruptedError("stopped during the teacher stage")
    return Path(sft["export_dir"])
