"""Experiment tracking of a training run: metrics.jsonl, TensorBoard, Weights & Biases, validation videos.

    tracker = Tracker(run_dir, cfg, start=start, is_main=rank == 0)
    tracker.log(record)                         # rank 0: one line of metrics.jsonl + TensorBoard (+ W&B) scalars
    tracker.maybe_validate(step, method, net)   # every rank (FSDP runs collectives in forward); rank 0 writes
    tracker.close()

Written into the run directory: ``metrics.jsonl`` (one JSON record per logged step), ``tensorboard/`` (event files,
``tensorboard --logdir runs/``) and ``validation/step-NNNNNNNN/<i>.mp4``. W&B is used when the ``wandb`` package is
installed and ``WANDB_PROJECT`` is set (wandb's own variables, e.g. ``WANDB_MODE=offline``, apply); its run id is kept
in ``wandb_id`` so that a resumed run continues the same W&B run.

Resume: the loop re-runs the steps after the checkpoint's step (``start``, 0 without one). The tracker drops their
records from metrics.jsonl, opens TensorBoard with ``purge_step = start + 1`` (TensorBoard hides the events of those
steps written before the restart) and removes their validation directories.

Validation samples under ``torch.no_grad`` in eval mode with the product's own sampler (``Method.validation_videos``)
and restores the train/eval flags and every RNG afterwards: a run ends with the same weights with it on or off.

TensorBoard videos: ``SummaryWriter.add_video`` needs moviepy (and torch imports ``moviepy.editor``, which moviepy 2
removed); instead the same summary add_video writes -- an image whose bytes are an animated GIF, which TensorBoard's
image dashboard plays -- is built here with imageio, already a dependency (``video_io.encode_gif``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from trainer.config import TrainConfig, to_dict
from trainer.data.video_io import encode_gif, write_video

# Config fields that do not change what is trained: a resumed run may change them.
TRACKING_FIELDS = ("validation_every", "validation_prompts", "validation_seed")
VALIDATION_PREFIX = "step-"


class Tracker:
    """Fans each metrics record out to metrics.jsonl, TensorBoard and (when configured) W&B; runs validation.

    On ranks other than 0 nothing is opened or written; ``maybe_validate`` still samples there, because a sharded
    network's forward needs every rank.
    """

    def __init__(self, run_dir: str | os.PathLike, cfg: TrainConfig, *, start: int = 0, is_main: bool = True):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.is_main = is_main
        self._jsonl = self._tb = self._wandb = None
        self._warned_no_product = False
        if not is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_jsonl(self.run_dir / "metrics.jsonl", start)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed by close)
        # purge_step: events at steps >= start + 1 from before a restart are dropped (those steps run again)
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start + 1)
        _remove_validation_after(self.run_dir / "validation", start)
        self._wandb = _open_wandb(self.run_dir, cfg)

    # -- scalars -------------------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """One record: ``{"step", "time", "sec_per_step", "lr": {net: lr}, "<net>/<key>": value, ...}``."""
        if not self.is_main:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step, walltime = int(record["step"]), record.get("time")
        scalars = flatten_scalars(record)
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, global_step=step, walltime=walltime)
        self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    # -- validation videos ---------------------------------------------------------------------------------------
    def validation_due(self, step: int) -> bool:
        every = self.cfg.validation_every
        return bool(every) and step % every == 0

    def maybe_validate(self, step: int, method, net: Callable[[str], nn.Module] | None = None) -> np.ndarray | None:
        """At multiples of ``validation_every``: sample the prompts (every rank), write them (rank 0).

        Returns the videos ``uint8 [N, T, H, W, 3]``, or None when not due (or the method has no sampler).
        """
        if not self.validation_due(step):
            return None
        if method.product_network is None:
            if self.is_main and not self._warned_no_product:
                warnings.warn(
                    f"config field 'validation_every': method {method.name!r} has no text-to-video "
                    "product to sample; no validation videos",
                    stacklevel=2,
                )
                self._warned_no_product = True
            return None
        cfg = self.cfg
        module = (net or method.networks.__getitem__)(method.product_network)
        with preserved_rng(), eval_mode(module):
            videos = method.validation_videos(list(cfg.validation_prompts), cfg.validation_seed, net=net)
        if self.is_main:
            self._write_videos(step, videos, float(method.product_sampling().fps))
        return videos

    def _write_videos(self, step: int, videos: np.ndarray, fps: float) -> None:
        prompts = list(self.cfg.validation_prompts)
        out = self.run_dir / "validation" / f"{VALIDATION_PREFIX}{step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        paths = [write_video(out / f"{i}.mp4", v, fps=fps, quality="web") for i, v in enumerate(videos)]
        (out / "prompts.json").write_text(
            json.dumps(
                [
                    {"file": p.name, "prompt": q, "seed": self.cfg.validation_seed + i}
                    for i, (p, q) in enumerate(zip(paths, prompts))
                ],
                indent=1,
            )
        )
        for i, v in enumerate(videos):  # written the way add_video writes its summary
            self._tb._get_file_writer().add_summary(gif_summary(f"validation/{i}", v, fps), step)
        self._tb.add_text("validation/prompts", "\n\n".join(f"{i}: {q}" for i, q in enumerate(prompts)), step)
        self._tb.flush()
        if self._wandb is not None:
            import wandb  # present: _open_wandb imported it

            self._wandb.log(
                {f"validation/{i}": wandb.Video(str(p), caption=q) for i, (p, q) in enumerate(zip(paths, prompts))},
                step=step,
            )

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def flatten_scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric fields of a record as TensorBoard tags: nested dicts joined with "/"; ``step`` and ``time`` are the
    event's own step and wall time, not scalars."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key in ("step", "time"):
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


def gif_summary(tag: str, frames: np.ndarray, fps: float) -> Summary:
    """The summary ``add_video`` writes (an image holding an animated GIF), for ``uint8 [T, H, W, 3]``."""
    _, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=encode_gif(frames, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


@contextlib.contextmanager
def preserved_rng():
    """Restore Python's, NumPy's, torch's CPU and every CUDA device's RNG state on exit."""
    state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode inside; every submodule's own train/eval flag restored on exit."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` (the checkpoint a run resumes from, or 0): those steps run again."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def _remove_validation_after(root: Path, step: int) -> None:
    """Validation written after the checkpoint a run resumes from belongs to steps that run again."""
    if root.is_dir():
        for d in root.glob(VALIDATION_PREFIX + "*"):
            if d.name[len(VALIDATION_PREFIX) :].isdigit() and int(d.name[len(VALIDATION_PREFIX) :]) > step:
                shutil.rmtree(d, ignore_errors=True)


def _open_wandb(run_dir: Path, cfg: TrainConfig):
    """A W&B run when ``WANDB_PROJECT`` is set and wandb is installed; the same run again on resume."""
    project = os.environ.get("WANDB_PROJECT")
    if not project:
        return None
    try:  # optional and slow to import: only when asked for
        import wandb
    except ImportError as exc:
        warnings.warn(
            f"WANDB_PROJECT is set but the wandb package cannot be imported ({exc}); logging to "
            "metrics.jsonl and TensorBoard only (pip install wandb)",
            stacklevel=3,
        )
        return None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    # Steps a resumed run logs again are at or below W&B's last step: W&B keeps the first values of those.
    return wandb.init(
        project=project, id=run_id, resume="allow", dir=str(run_dir), name=run_dir.name, config=to_dict(cfg)
    )
