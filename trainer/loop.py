"""The training loop every method runs in. Read it top to bottom: ``train_run``.

    from trainer.config import load_train_config
    from trainer.loop import train_run
    train_run(load_train_config("sft", {"steps": 200}), "runs/teacher")

or ``motionlab train sft --preset tiny``; under ``torchrun --nproc-per-node N`` the same call trains with DDP, or
with ``--set parallel=fsdp`` with FSDP2 (every network sharded per block: ``trainer/parallel.py``).
``batch_size`` is global: each optimizer update sees ``batch_size`` samples, split over ranks and ``grad_accum``
micro-steps (``Method.micro_batch`` per rank and micro-step).

The loop owns: one AdamW per trainable network, gradient accumulation, clipping, EMA, mixed precision on GPU,
checkpoints every N steps (atomic directories; network weights as safetensors in diffusers format, or under fsdp
every rank's shards via ``torch.distributed.checkpoint``), exact resume (networks, optimizers, EMA, every rank's
RNG, data positions, step), ``config.yaml``, the final export, and through ``trainer/tracking.py`` ``metrics.jsonl``,
TensorBoard (``tensorboard/``), W&B when configured, and validation videos every ``validation_every`` steps.
A method (``trainer/methods/<name>.py``) owns networks and losses. Re-running on the same run directory resumes;
a finished run is a no-op.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from trainer import parallel
from trainer.config import (
    LAYOUT_KEY,
    ConfigError,
    TrainConfig,
    batch_layout,
    load_train_config,
    save_yaml,
    to_dict,
)
from trainer.lora import LoraNet, apply_lora
from trainer.methods import METHODS
from trainer.methods.base import StepContext
from trainer.tracking import TRACKING_FIELDS, Tracker

CKPT_PREFIX = "step-"
CKPT_TMP_PREFIX = ".tmp-"  # a checkpoint being written; renamed to step-NNNNNNNN when complete
CKPT_STATE = "trainer_state.pt"  # step, method state, RNGs (and optimizers unless sharded): written last
SHARDED_DIR = "sharded"  # under fsdp: networks, optimizers and EMA as a torch.distributed.checkpoint directory


def train_run(
    config: TrainConfig | dict,
    run_dir: str | os.PathLike,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress_bar: bool = True,
) -> dict:
    cfg = config if isinstance(config, TrainConfig) else load_train_config(config["method"], config)
    run_dir = Path(run_dir)
    dist = _init_distributed(cfg)
    is_main = dist["rank"] == 0
    device = torch.device(dist["device"])
    sharded = parallel.is_sharded(cfg.parallel, dist["world_size"])
    batch_layout(cfg, dist["world_size"])  # an uneven split of the global batch fails before any model loads

    # 1. Seed everything; build the method's networks (which checks every weights file first), then its data
    #    (which may use the VAE to cache latents). Nothing is written before the method could be built.
    _seed_all(cfg.seed + dist["rank"])
    method = METHODS[cfg.method](cfg, device, torch.float32)
    # LoRA: adapters on the product (and fake score / discriminator), frozen bases shared (trainer/lora.py)
    counts = (
        apply_lora(method, cfg)
        if cfg.lora.enabled
        else {
            n: {"trainable": sum(p.numel() for p in m.parameters()), "frozen": 0, "shared": 0}
            for n, m in method.networks.items()
        }
    )
    method.set_layout(dist["world_size"])  # micro-batch sizes, read by the method's data draws
    method.sharded = sharded
    _check_config(cfg, run_dir)  # after the method filled in its defaults (e.g. the full-scale teacher path)
    latest = latest_checkpoint(run_dir)
    _check_resumable(latest, sharded)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml", layout=method.layout())
    method.run_dir = run_dir
    method.setup_data(dist["rank"], dist["world_size"])
    nets = method.networks
    for m in nets.values():  # trainable (the loop narrows requires_grad to one network per update)
        m.requires_grad_(True)
    # A network whose loss calls other methods than forward (the VAE's encode/decode) cannot go through DDP, which
    # only hooks forward: its gradients are averaged over ranks explicitly after backward instead.
    unwrapped = set(method.unwrapped_networks)
    # DDP wrappers, or under fsdp the networks themselves, sharded in place with the frozen ones; ``templates``:
    # unsharded skeletons of the sharded networks, for the export
    wrapped, templates = parallel.distribute(method, cfg.parallel, cfg.mixed_precision, device, dist["world_size"])
    optimizers = {
        n: torch.optim.AdamW(
            [p for p in m.parameters()],
            lr=method.learning_rates.get(n, cfg.optim.lr),
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
        )
        for n, m in nets.items()
    }
    # under fsdp a state dict holds this rank's shards (DTensors): so do the optimizers' states and the EMA
    ema = (
        {n: {k: v.detach().clone() for k, v in nets[n].state_dict().items()} for n in method.ema_networks}
        if cfg.ema_decay > 0
        else {}
    )

    # 2. Resume from the newest complete checkpoint, if any.
    start = 0
    if latest is not None:
        start = _load_checkpoint(latest, method, optimizers, ema, device, dist, sharded, cfg.seed)
    if is_main:
        remove_partial_checkpoints(run_dir)
    if start >= cfg.steps and (run_dir / "export").is_dir():
        return {
            "step": start,
            "export_dir": str(run_dir / "export"),
            "resumed_from": start,
            "stopped": False,
            "parameters": counts,
        }

    autocast = _autocast(cfg, device)
    tracker = Tracker(run_dir, cfg, start=start, is_main=is_main)  # metrics.jsonl, TensorBoard, W&B, validation
    current: dict[str, str | None] = {"name": None}

    def net(name: str) -> nn.Module:
        # Only the network being updated runs through its DDP wrapper (so only its gradients are all-reduced).
        # Under fsdp both are the sharded network itself.
        return wrapped[name] if name == current["name"] else nets[name]

    def update(name: str, loss_fn) -> dict:
        """One optimizer step of ``nets[name]``: accumulate ``grad_accum`` micro-batches, clip, step, EMA."""
        model, opt = nets[name], optimizers[name]
        for n, m in nets.items():
            m.requires_grad_(n == name)
        current["name"] = name
        logs: dict[str, float] = {}
        total = 0.0
        for k in range(cfg.grad_accum):
            sync = k == cfg.grad_accum - 1 or not hasattr(wrapped[name], "no_sync")
            parallel.set_gradient_sync(wrapped[name], k == cfg.grad_accum - 1)  # fsdp: reduce on the last one
            with contextlib.nullcontext() if sync else wrapped[name].no_sync(), autocast:
                loss, extra = loss_fn()
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            for key, val in (extra or {}).items():
                logs[f"{name}/{key}"] = logs.get(f"{name}/{key}", 0.0) + float(val) / cfg.grad_accum
        if name in unwrapped and dist["world_size"] > 1:
            _average_gradients(model, dist["world_size"])
        # sharded gradients (DTensors): the norm is over the whole network, the same on every rank
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        _set_lr(opt, method.learning_rates.get(name, cfg.optim.lr), step_box[0], cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name in ema:
            _ema_update(ema[name], model, cfg.ema_decay)
        current["name"] = None
        logs[f"{name}/loss"] = total
        logs[f"{name}/grad_norm"] = float(grad_norm)
        return logs

    # 3. The loop.
    step_box = [start]
    from tqdm import tqdm

    bar = tqdm(
        total=cfg.steps, initial=start, desc=f"{cfg.method}", disable=not (is_main and progress_bar), dynamic_ncols=True
    )
    t_last, stopped = time.perf_counter(), False
    for step in range(start, cfg.steps):
        step_box[0] = step
        t_step = time.perf_counter()
        for m in nets.values():
            m.train()
        logs = method.train_step(step, StepContext(update, net, step))
        done = step + 1
        bar.update(1)
        if is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            now = time.perf_counter()
            rec = {
                "step": done,
                "time": time.time(),
                "sec_per_step": (now - t_last) / cfg.log_every,
                "lr": {n: o.param_groups[0]["lr"] for n, o in optimizers.items()},
                **logs,
            }
            t_last = now
            if device.type == "cuda":  # this rank's allocator peak since the run started: what the planner predicts
                rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            else:  # the process's peak resident memory (tensors and everything else)
                rec["peak_rss_gib"] = peak_rss_bytes() / 2**30
            tracker.log(rec)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.endswith("/loss")}, refresh=False)
        tracker.maybe_validate(done, method, wrapped.__getitem__)  # every rank samples, rank 0 writes
        # every rank asks, and the ranks agree (any one asked: all stop at this step and save one checkpoint)
        stopped = _any_rank(bool(should_stop()), dist) if should_stop else False
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopped:
            rng_states = _gather_rng_states(dist)  # every rank's RNG: each resumes its own stream
            if sharded:  # every rank writes its shards
                save_sharded_checkpoint(run_dir, done, method, optimizers, ema, cfg.keep_checkpoints, rng_states, dist)
            elif is_main:
                save_checkpoint(run_dir, done, method, optimizers, ema, cfg.keep_checkpoints, rng_states)
            _barrier(dist)
        if on_progress and is_main:
            on_progress(
                {
                    "step": done,
                    "total_steps": cfg.steps,
                    "losses": logs,
                    "lr": {n: o.param_groups[0]["lr"] for n, o in optimizers.items()},
                    "sec_per_step": time.perf_counter() - t_step,
                }
            )
        if stopped:
            break
    bar.close()
    tracker.close()

    result = {
        "step": step_box[0] + 1 if cfg.steps > start else start,
        "resumed_from": start,
        "stopped": stopped,
        "parameters": counts,
    }
    if not stopped:
        if sharded:  # every rank takes part in gathering the shards; rank 0 gets the whole networks
            weights = {
                n: parallel.gather_full(nets[n], templates[n], ema.get(n), is_main)
                if n in templates
                else _with_weights(nets[n], ema.get(n))
                if is_main
                else None
                for n in nets
            }
        elif is_main:
            weights = {n: _with_weights(nets[n], ema.get(n)) for n in nets}
        if is_main:
            method.export(run_dir / "export", weights)
        result["export_dir"] = str(run_dir / "export")
    _barrier(dist)
    return result


# ------------------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------------------


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / CKPT_STATE).is_file())
    return done[-1] if done else None


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete the temp directories of checkpoints whose writer died mid-save (a killed worker).

    Called when a run (re)starts: one process trains a run at a time, so any temp directory left then is dead.
    """
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.glob(CKPT_TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` where ``/proc`` has it. ``ru_maxrss`` would do elsewhere, but
    on Linux it keeps the peak of the process that forked this one (across ``exec`` too), so a run started from a
    large parent (a worker, a test session) would report the parent's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def save_checkpoint(
    run_dir: Path, step: int, method, optimizers, ema, keep: int, rng_states: list[dict] | None = None
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically: a temp directory renamed into place when complete."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tmp = root / f"{CKPT_TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, net in method.networks.items():
        if hasattr(net, "save_pretrained") and not isinstance(net, LoraNet):  # diffusers format any user can load
            net.save_pretrained(tmp / name)
        else:
            (tmp / name).mkdir()
            save_file(_contiguous(net.state_dict()), str(tmp / name / "model.safetensors"))
    for name, state in ema.items():
        save_file(_contiguous(state), str(tmp / f"ema_{name}.safetensors"))
    torch.save(
        {
            "step": step,
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "method": method.state_dict(),
            "rng": rng_states or [_rng_state()],  # one per rank
        },
        tmp / CKPT_STATE,
    )
    return _publish(tmp, final, keep)


def save_sharded_checkpoint(
    run_dir: Path, step: int, method, optimizers, ema, keep: int, rng_states: list[dict], dist: dict
) -> Path:
    """Under fsdp, every rank calls this: each writes its shards of the networks, optimizers and EMA into
    ``sharded/`` of the temp directory; then rank 0 writes the step, method state and RNGs, and renames it."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"{CKPT_PREFIX}{step:08d}"
    pid = [os.getpid()]
    tdist.broadcast_object_list(pid, src=0)  # one temp directory for all ranks, named by rank 0's process
    tmp = root / f"{CKPT_TMP_PREFIX}{final.name}-{pid[0]}"
    if dist["rank"] == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier(dist)
    stepped = parallel.save_sharded(tmp / SHARDED_DIR, method.networks, optimizers, ema)
    if dist["rank"] != 0:
        return final
    torch.save(
        {
            "step": step,
            "format": "sharded",
            "world_size": dist["world_size"],
            "stepped": stepped,
            "method": method.state_dict(),
            "rng": rng_states,
        },
        tmp / CKPT_STATE,
    )
    return _publish(tmp, final, keep)


def _publish(tmp: Path, final: Path, keep: int) -> Path:
    """Rename a written checkpoint into place (it counts from now on) and drop all but the newest ``keep``."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in final.parent.iterdir() if p.name.startswith(CKPT_PREFIX))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(ckpt: Path, method, optimizers, ema, device, dist: dict, sharded: bool, seed: int) -> int:
    blob = torch.load(ckpt / CKPT_STATE, map_location=device, weights_only=False)
    step, states = int(blob["step"]), blob["rng"] if isinstance(blob["rng"], list) else [blob["rng"]]
    if sharded:
        parallel.load_sharded(ckpt / SHARDED_DIR, method.networks, optimizers, ema, blob["stepped"])
    else:
        for name, net in method.networks.items():
            state = {}
            for f in sorted((ckpt / name).glob("*.safetensors")):
                state.update(load_file(str(f), device=str(device)))
            net.load_state_dict(state)
        for name in ema:
            ema[name] = load_file(str(ckpt / f"ema_{name}.safetensors"), device=str(device))
        for n, o in optimizers.items():
            o.load_state_dict(blob["optimizers"][n])
    method.load_state_dict(blob["method"])  # data positions count global samples: any world size continues them
    if len(states) == dist["world_size"]:
        _set_rng_state(states[dist["rank"]])
    else:  # the global batch is the same, but no rank's random stream can continue exactly: fresh, distinct ones
        if dist["rank"] == 0:
            warnings.warn(
                f"resuming {ckpt}, written by {len(states)} rank(s), on {dist['world_size']}: the run "
                f"continues, but its random streams restart and it will not equal an uninterrupted run"
            )
        _seed_all(seed + dist["rank"] + 1_000_003 * step)
    return step


def _check_resumable(ckpt: Path | None, sharded: bool) -> None:
    """A sharded checkpoint resumes under fsdp on any number of ranks above one; an unsharded one anywhere else."""
    if ckpt is not None and (ckpt / SHARDED_DIR).is_dir() != sharded:
        how = "with parallel=fsdp on more than one rank" if not sharded else "on one rank"
        raise ConfigError(
            "parallel",
            f"checkpoint {ckpt} is {'' if not sharded else 'un'}sharded and this run is not; resume it {how}",
        )


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _with_weights(net: nn.Module, ema_state: dict | None) -> nn.Module:
    if ema_state is None:
        return net
    if isinstance(net, LoraNet):  # the adapter's EMA weights over the shared model, not a copy of it
        return net.with_state(ema_state)
    import copy

    clone = copy.deepcopy(net)
    clone.load_state_dict(ema_state)
    return clone


@torch.no_grad()
def _ema_update(ema_state: dict, model: nn.Module, decay: float) -> None:
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema_state[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            ema_state[k].copy_(v)


def learning_rate(base_lr: float, step: int, cfg) -> float:
    """Linear warmup, then constant, cosine decay, or constant + linear warmdown to ``min_lr_ratio * base_lr``."""
    o = cfg.optim
    if step < o.warmup_steps:
        return base_lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return base_lr
    if o.schedule == "warmdown":
        start = cfg.steps - round(o.warmdown_ratio * cfg.steps)
        progress = min(1.0, max(0.0, (step - start) / max(1, cfg.steps - start)))
        return base_lr * (1 - (1 - o.min_lr_ratio) * progress)
    progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
    return base_lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _set_lr(opt, base_lr: float, step: int, cfg) -> None:
    lr = learning_rate(base_lr, step, cfg)
    for g in opt.param_groups:
        g["lr"] = lr


# ------------------------------------------------------------------------------------------------------------------
# RNG, precision, distribution
# ------------------------------------------------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _gather_rng_states(dist: dict) -> list[dict]:
    if dist["world_size"] == 1:
        return [_rng_state()]
    import torch.distributed as tdist

    states: list = [None] * dist["world_size"]
    tdist.all_gather_object(states, _rng_state())
    return states


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast(cfg: TrainConfig, device: torch.device):
    mode = parallel.precision(cfg.mixed_precision, device)
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def _init_distributed(cfg: TrainConfig) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = cfg.device
    if world > 1:
        import torch.distributed as tdist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return {"rank": rank, "world_size": world, "device": device}


def _average_gradients(module: nn.Module, world_size: int) -> None:
    """All-reduce (mean) the gradients of a module that is not DDP-wrapped, as one flat tensor."""
    import torch.distributed as tdist

    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter this rank's loss did not reach still takes part in the sum
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    tdist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _barrier(dist: dict) -> None:
    if dist["world_size"] > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _any_rank(flag: bool, dist: dict) -> bool:
    """True on every rank when ``flag`` is true on any (all_reduce MAX), so that all ranks stop at the same step."""
    if dist["world_size"] == 1:
        return flag
    import torch.distributed as tdist

    t = torch.tensor([int(flag)], dtype=torch.int32, device=torch.device(dist["device"]))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def _check_config(cfg: TrainConfig, run_dir: Path) -> None:
    """A run directory belongs to one config: resuming with a different one (other than ``steps``) is an error.

    The recorded ``layout`` may differ: the same global batch over another number of ranks resumes (see
    ``_load_checkpoint``)."""
    path = run_dir / "config.yaml"
    new = to_dict(cfg)
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        # a section added since the run started (e.g. ``lora``) reads as its default there
        old = {**{k: v for k, v in to_dict(TrainConfig()).items() if k not in old}, **old}
        diff = sorted(
            k
            for k in set(old) | set(new)
            if k not in ("steps", LAYOUT_KEY) and k not in TRACKING_FIELDS and old.get(k) != new.get(k)
        )
        if diff:
            raise ConfigError(
                diff[0],
                f"run directory {run_dir} was started with a different value "
                f"({old.get(diff[0])!r} vs {new.get(diff[0])!r}); use a new run directory",
            )
