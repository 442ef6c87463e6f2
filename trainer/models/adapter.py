"""Adapter checkpoints: a LoRA of a Wan transformer plus the name of the checkpoint it adapts ("base + adapter").

A directory with ``motionlab_adapter.json`` and no ``model_index.json`` is an adapter checkpoint:

    pytorch_lora_weights.safetensors   diffusers LoRA weights (``transformer.<module>.lora_A/lora_B.weight``), what
                                       stock ``WanPipeline.load_lora_weights(dir)`` loads
    motionlab_adapter.json             {"base": zoo name or absolute directory, "rank", "alpha", "target_modules"}
    motionlab_sampling.json            how the adapted model is sampled (a DMD student's few steps, ...)
    fake_score/                        (DMD-family runs) the fake score, as any export keeps it

``Generator.from_pretrained`` loads it as the base pipeline with the LoRA merged into the transformer
(``W + alpha / rank * B @ A``), so serving, evaluation, the zoo and ``init`` of a later run treat it like any
checkpoint. Nothing here needs peft; training LoRA networks is ``trainer/lora.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from trainer.config import ConfigError

ADAPTER_FILE = "motionlab_adapter.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE: load_lora_weights' default
LORA_PREFIX = "transformer."  # WanLoraLoaderMixin's component prefix
MAX_CHAIN = 8  # an adapter's base may itself be an adapter checkpoint, this many deep


class AdapterError(FileNotFoundError):
    """An adapter checkpoint that cannot be used; the message names the file or field at fault."""


def is_adapter_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / ADAPTER_FILE).is_file() and not (path / "model_index.json").is_file()


def read_adapter(path: str | os.PathLike) -> dict:
    """The validated ``motionlab_adapter.json`` of an adapter checkpoint (raises ``AdapterError`` naming the fault)."""
    path = Path(path)
    f = path / ADAPTER_FILE
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"adapter checkpoint {path}: {ADAPTER_FILE} is not readable JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise AdapterError(f"adapter checkpoint {path}: {ADAPTER_FILE} must hold an object")
    base = info.get("base")
    if not isinstance(base, str) or not base:
        raise AdapterError(f"adapter checkpoint {path}: {ADAPTER_FILE} field 'base' must name the base checkpoint")
    rank, alpha = info.get("rank"), info.get("alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter checkpoint {path}: {ADAPTER_FILE} field 'rank' must be an integer >= 1")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterError(f"adapter checkpoint {path}: {ADAPTER_FILE} field 'alpha' must be a number > 0")
    weights = path / str(info.get("weight_name", LORA_WEIGHTS))
    if not weights.is_file():
        raise AdapterError(f"adapter checkpoint {path} is incomplete; missing: {weights.name}")
    return {**info, "weight_name": weights.name}


def adapter_summary(path: str | os.PathLike) -> dict | None:
    """What listings show of an adapter checkpoint (base, rank, alpha, target modules); None if ``path`` is not one."""
    if not is_adapter_dir(path):
        return None
    info = read_adapter(path)
    return {k: info[k] for k in ("base", "rank", "alpha", "target_modules") if k in info}


def write_adapter_json(
    path: str | os.PathLike, *, base: str, rank: int, alpha: float, target_modules: list[str], **extra
) -> None:
    info = {
        "format": "diffusers-lora",
        "base": base,
        "rank": int(rank),
        "alpha": float(alpha),
        "target_modules": sorted(target_modules),
        "weight_name": LORA_WEIGHTS,
        **extra,
    }
    (Path(path) / ADAPTER_FILE).write_text(json.dumps(info, indent=2))


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Diffusers LoRA weights -> ``{module path: (A [r, in], B [out, r])}``; every key must belong to a pair."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix(LORA_PREFIX)
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if name.endswith(suffix):
                pairs.setdefault(name[: -len(suffix)], {})[part] = value
                break
        else:
            raise AdapterError(f"LoRA weights: unexpected key {key!r} (only lora_A / lora_B weights are supported)")
    incomplete = sorted(m for m, p in pairs.items() if len(p) != 2)
    if incomplete:
        raise AdapterError(f"LoRA weights: {incomplete[0]} has lora_A or lora_B but not both")
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}


@torch.no_grad()
def merge_lora(transformer: nn.Module, state: dict[str, torch.Tensor], scaling: float) -> nn.Module:
    """Add ``scaling * B @ A`` of each LoRA pair in ``state`` (diffusers keys) to the matching Linear's weight, in
    float32, in place."""
    for name, (a, b) in lora_pairs(state).items():
        try:
            layer = transformer.get_submodule(name)
        except AttributeError:
            raise AdapterError(f"LoRA weights: the transformer has no module {name!r}") from None
        w = layer.weight
        if not isinstance(layer, nn.Linear) or tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise AdapterError(
                f"LoRA weights: {name} does not fit the transformer's {type(layer).__name__} of "
                f"shape {tuple(w.shape)} (LoRA: {tuple(b.shape)} x {tuple(a.shape)})"
            )
        delta = scaling * (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32))
        w.copy_((w.float() + delta).to(w.dtype))
    return transformer


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of target names


def target_layers(module: nn.Module, targets: list[str], what: str) -> dict[str, nn.Linear]:
    """The Linear layers of ``module`` that ``targets`` name; every target must name at least one."""
    layers = dict(module.named_modules())
    found: dict[str, nn.Linear] = {}
    for t in targets:
        hits = {n: m for n, m in layers.items() if n and _matches(n, t)}
        bad = sorted(n for n, m in hits.items() if not isinstance(m, nn.Linear))
        if bad:
            raise ConfigError(
                "lora.target_modules",
                f"{t!r} names {bad[0]} of the {what}, a {type(layers[bad[0]]).__name__}: LoRA targets Linear layers",
            )
        if not hits:
            example = sorted({n.rsplit(".", 1)[-1] for n, m in layers.items() if isinstance(m, nn.Linear)})
            raise ConfigError(
                "lora.target_modules", f"{t!r} matches no layer of the {what}; its Linear layers are named {example}"
            )
        found.update(hits)
    return found


def lora_parameter_count(module: nn.Module, rank: int, targets) -> int:
    """Parameters a rank-``rank`` adapter on ``module``'s ``targets`` adds (``rank * (in + out)`` per layer)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for m in target_layers(module, list(targets), type(module).__name__).values()
    )
