"""Training configuration: dataclasses, validated from nested dicts / YAML, saved next to every run.

    cfg = load_train_config("sft", {"steps": 200, "optim": {"lr": 3e-4}}, preset="tiny")
    save_yaml(cfg, run_dir / "config.yaml")

Each field may carry ``metadata={"range": (lo, hi)}`` or ``{"choices": (...)}``; ``from_dict`` rejects unknown keys
and out-of-range values with a ``ConfigError`` that names the dotted field path and the limit, before any work starts.
A method's own hyper-parameters live in its ``Config`` dataclass (``trainer/methods/<name>.py``) under ``method``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

LAYOUT_KEY = "layout"  # config.yaml's record of a run's batch split (world size, per-rank and micro-batch)


class ConfigError(ValueError):
    def __init__(self, field: str, message: str):
        self.field, self.detail = field, message
        super().__init__(f"config field '{field}': {message}")

    def __reduce__(self):  # picklable, so an error raised in a spawned training process reaches its launcher as is
        return type(self), (self.field, self.detail)


def rng(lo, hi):
    return {"range": (lo, hi)}


def choices(*opts):
    return {"choices": opts}


@dataclass
class DataConfig:
    # "synthetic": procedurally generated motion clips (trainer/data/synthetic.py); "folder": a user's video folder;
    # "shards": a `motionlab data preprocess` directory (trainer/data/shards.py), streamed, no text encoder loaded
    source: str = field(default="synthetic", metadata=choices("synthetic", "folder", "shards"))
    root: str | None = None  # the video folder (folder) or the preprocessed directory (shards)
    num_videos: int = field(default=1200, metadata=rng(1, 10_000_000))
    seed: int = 0
    num_frames: int = field(default=17, metadata=rng(1, 1024))
    height: int = field(default=32, metadata=rng(8, 4096))
    width: int = field(default=32, metadata=rng(8, 4096))
    # family -> sampling weight for synthetic data (None = the module's defaults)
    families: dict[str, float] | None = None


@dataclass
class OptimConfig:
    lr: float = field(default=3e-4, metadata=rng(0.0, 1.0))
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = field(default=0.01, metadata=rng(0.0, 10.0))
    grad_clip: float = field(default=1.0, metadata=rng(0.0, 1e6))
    warmup_steps: int = field(default=0, metadata=rng(0, 10_000_000))
    # after warmup: "constant"; "cosine" decay from lr to min_lr_ratio * lr at the run's last step; or "warmdown":
    # constant, then a linear decay to min_lr_ratio * lr over the last warmdown_ratio of the steps
    schedule: str = field(default="constant", metadata=choices("constant", "cosine", "warmdown"))
    min_lr_ratio: float = field(default=0.1, metadata=rng(0.0, 1.0))
    warmdown_ratio: float = field(default=0.2, metadata=rng(0.0, 1.0))


# Wan's attention projections (self- and cross-attention of every block); FFN layers are "ffn.net.0.proj", "ffn.net.2"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class LoraConfig:
    """LoRA post-training through peft (``trainer/lora.py``): the product network (generator, policy, ...) trains
    rank-``rank`` adapters on ``target_modules`` (module names or dotted suffixes, as peft matches them) over frozen
    base weights, and exports a diffusers LoRA plus the name of its base (``trainer/models/adapter.py``)."""

    enabled: bool = False
    rank: int = field(default=16, metadata=rng(1, 4096))
    alpha: float = field(default=16.0, metadata=rng(1e-6, 1e6))  # the update is scaled by alpha / rank
    dropout: float = field(default=0.0, metadata=rng(0.0, 0.9))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # DMD-family fake score and MoGAN's discriminator trunk: adapters too, or trained in full. VDOT's discriminator
    # (register tokens and a classifier, no pretrained weights) always trains in full.
    fake_score: str = field(default="lora", metadata=choices("full", "lora"))
    disc: str = field(default="lora", metadata=choices("full", "lora"))
    # export a full pipeline with the LoRA merged into the transformer (the adapter checkpoint then in export/lora/)
    merge: bool = False


# Motions the tiny synthetic world knows (trainer/data/synthetic.py captions, training-split colour/shape pairs).
VALIDATION_PROMPTS = ("a red square moves right", "a blue circle moves up", "a green bar rotates clockwise",
                      "the camera pans left over a textured wall")


@dataclass
class TrainConfig:
    method: str = "sft"
    preset: str = field(default="tiny", metadata=choices("tiny", "full"))
    # checkpoint (zoo name or pipeline directory) the trained network(s) start from
    init: str | None = None
    # frozen teacher (real score) for distillation methods
    teacher: str | None = None
    seed: int = 0
    steps: int = field(default=1000, metadata=rng(1, 10_000_000))
    # global: samples per optimizer update over all ranks and accumulation micro-steps (see batch_layout)
    batch_size: int = field(default=16, metadata=rng(1, 65536))
    grad_accum: int = field(default=1, metadata=rng(1, 4096))
    ema_decay: float = field(default=0.0, metadata=rng(0.0, 1.0))
    checkpoint_every: int = field(default=100, metadata=rng(1, 10_000_000))
    keep_checkpoints: int = field(default=2, metadata=rng(1, 1000))
    log_every: int = field(default=10, metadata=rng(1, 10_000_000))
    device: str = "cpu"
    mixed_precision: str = field(default="auto", metadata=choices("auto", "no", "bf16", "fp16"))
    parallel: str = field(default="ddp", metadata=choices("ddp", "fsdp"))
    gradient_checkpointing: bool = False
    # every N steps sample the product for these prompts (seeds validation_seed + i) into validation/ and
    # TensorBoard (trainer/tracking.py); 0 = off
    validation_every: int = field(default=0, metadata=rng(0, 10_000_000))
    validation_prompts: list[str] = field(default_factory=lambda: list(VALIDATION_PROMPTS))
    validation_seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # the method's own dataclass (trainer.methods.<name>.Config); filled in by load_train_config
    method_cfg: Any = None


def from_dict(cls, d: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, validating keys, types and ranges."""
    d = dict(d or {})
    if not isinstance(d, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", f"expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(prefix + unknown[0], f"unknown key; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name, fields[name].metadata)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix.rstrip(".") or "<root>", str(exc)) from exc
    return obj


def _coerce(tp, value, path: str, meta):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(tp, value, path, meta)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(path, f"expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        value = [_coerce(inner, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
        if origin is tuple:
            if len(args) != len(value) and not (len(args) == 2 and args[1] is Ellipsis):
                raise ConfigError(path, f"expected {len(args)} values, got {len(value)}")
            value = tuple(value)
    elif origin is dict and not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {value!r}")
    if "range" in meta and value is not None:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise ConfigError(path, f"value {value!r} is out of range [{lo}, {hi}]")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, f"value {value!r} is not one of {list(meta['choices'])}")
    return value


def set_dotted(d: dict, dotted: str, value) -> dict:
    """``set_dotted(d, "optim.lr", 1e-4)`` — for ``--set key=value`` overrides on the command line."""
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(dotted, f"'{k}' is not a section")
    cur[keys[-1]] = value
    return d


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_train_config(method: str, overrides: dict | None = None, preset: str = "tiny") -> TrainConfig:
    """The method's preset defaults, overridden by ``overrides`` (nested dict), validated."""
    from trainer.methods import METHODS

    if method not in METHODS:
        raise ConfigError("method", f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    m = METHODS[method]
    overrides = dict(overrides or {})
    overrides.pop(LAYOUT_KEY, None)  # a saved config.yaml's record of how the batch was split (not an input)
    if "method" in overrides and overrides["method"] != method:
        raise ConfigError("method", f"config says {overrides['method']!r} but {method!r} was requested")
    preset = overrides.get("preset", preset)
    if preset not in ("tiny", "full"):
        raise ConfigError("preset", f"value {preset!r} is not one of ['tiny', 'full']")
    base = m.defaults(preset)  # nested dict of this method's preset defaults
    merged = deep_merge(base, {k: v for k, v in overrides.items()})
    method_dict = merged.pop("method_cfg", None) or {}
    merged.update(method=method, preset=preset)
    cfg = from_dict(TrainConfig, merged)
    if cfg.validation_every and not cfg.validation_prompts:
        raise ConfigError("validation_prompts", "empty; validation_every > 0 needs at least one prompt")
    cfg.method_cfg = from_dict(m.Config, method_dict, "method_cfg.")
    _check_lora(cfg)
    return cfg


def _check_lora(cfg: TrainConfig) -> None:
    lora = cfg.lora
    targets = lora.target_modules
    if not targets or any(not t or t != t.strip() for t in targets):
        raise ConfigError("lora.target_modules", f"need at least one module name (e.g. {list(LORA_TARGETS)}), got "
                                                 f"{targets!r}")
    if not lora.enabled:
        return
    if cfg.method == "vae":
        raise ConfigError("lora.enabled", "the VAE method trains no transformer: LoRA is for sft, dmd, mogan, vdot "
                                          "and dfdpo")
    if cfg.parallel == "fsdp":
        raise ConfigError("parallel", "LoRA runs train under parallel=ddp (adapters are small and replicated); "
                                      "parallel=fsdp is not supported with lora.enabled")


def micro_batch(total: int, world_size: int, grad_accum: int, field: str = "batch_size") -> int:
    """Samples per rank per accumulation micro-step of a global batch of ``total`` samples per optimizer update."""
    parts = world_size * grad_accum
    if total % parts:
        raise ConfigError(field, f"the global batch {field}={total} must split evenly over world size {world_size} "
                                 f"x grad_accum {grad_accum}: use a multiple of {parts}")
    return total // parts


def batch_layout(cfg: TrainConfig, world_size: int) -> dict:
    """How ``cfg.batch_size`` (global, per optimizer update) splits over ranks and accumulation micro-steps."""
    micro = micro_batch(cfg.batch_size, world_size, cfg.grad_accum)
    return {"world_size": world_size, "per_rank_batch_size": micro * cfg.grad_accum, "micro_batch_size": micro}


def to_dict(cfg) -> dict:
    d = asdict(cfg)
    if cfg.method_cfg is not None and dataclasses.is_dataclass(cfg.method_cfg):
        d["method_cfg"] = asdict(cfg.method_cfg)
    return _plain(d)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def save_yaml(cfg: TrainConfig, path: str | Path, layout: dict | None = None) -> None:
    """The config; with ``layout``, also the run's batch split under ``layout:`` (a record, ignored when loaded)."""
    d = to_dict(cfg)
    if layout is not None:
        d[LAYOUT_KEY] = dict(layout)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # other ranks may be reading it: replace atomically
    tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    os.replace(tmp, path)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(d, dict):
        raise ConfigError("<root>", f"{path} must hold a mapping, got {type(d).__name__}")
    return d
