"""LoRA post-training through peft: which networks get adapters, what they share, and how they are exported.

With ``lora.enabled`` the loop calls ``apply_lora(method, cfg)`` right after building the method (any of sft, dmd,
mogan, vdot, dfdpo). For the product network (generator, policy, transformer), the fake score
(``lora.fake_score=lora``) and MoGAN's discriminator trunk (``lora.disc=lora``) it

1. injects a peft LoRA adapter (``rank``, ``alpha``, ``dropout``) into every Linear layer ``lora.target_modules``
   names (each name must match one, else ``ConfigError`` on ``lora.target_modules``);
2. freezes the base weights, and points every frozen weight that equals a frozen network's (the teacher, DF-DPO's
   reference) at that network's tensor: a DMD generator or fake score started from the teacher holds no second
   copy of the DiT, nor does MoGAN's LoRA discriminator of the teacher's first blocks; a base that differs (a
   generator started from another ``init``) keeps its own frozen copy;
3. replaces the network everywhere the method refers to it by a ``LoraNet``: a module whose parameters, state dict
   (checkpoints, EMA, DDP's buckets, the optimizer) are the trainable ones only (the adapter; for the
   discriminator also its heads), and which runs the adapted model.

MoGAN's discriminator heads (and a ``patch`` flow encoder) are new weights and always train in full; VDOT's
register-token discriminator has no pretrained weights and is left as it is.

The export of a LoRA product is an adapter checkpoint (``trainer/models/adapter.py``): diffusers LoRA weights that
``WanPipeline.load_lora_weights`` loads on the base pipeline, plus ``motionlab_adapter.json`` naming the base
(``init``, else ``teacher``); with ``lora.merge`` a full pipeline with the LoRA merged, the adapter checkpoint in
``lora/``. Training runs under DDP; ``parallel=fsdp`` is refused by the config (``trainer/config.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from torch import nn

from trainer.config import ConfigError
from trainer.models.adapter import LORA_WEIGHTS, merge_lora, target_layers, write_adapter_json
from trainer.models.discriminators import MotionDiscriminator
from trainer.models.generator import SAMPLING_FILE, atomic_directory
from trainer.zoo import FULL_NAME, resolve_checkpoint, zoo_dir

ADAPTER = "motionlab"  # the peft adapter name inside a LoRA network (not part of the exported keys)


def peft_config(lora) -> LoraConfig:
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        init_lora_weights=True,
    )


def lora_metadata(config: LoraConfig) -> dict:
    """The LoraConfig fields diffusers rebuilds the adapter from on load (``transformer_lora_adapter_metadata``)."""
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules),
        "bias": "none",
        "use_dora": False,
        "lora_bias": False,
    }


def base_reference(ref: str) -> str:
    """How an adapter names its base: a zoo name as is, the full-scale Wan directory by its name, else the absolute
    directory."""
    path = resolve_checkpoint(ref).resolve()
    if ref == FULL_NAME or path == resolve_checkpoint(FULL_NAME).resolve():
        return FULL_NAME
    if "/" not in ref and os.sep not in ref and path == (zoo_dir() / ref).resolve():
        return ref
    return str(path)


class LoraNet(nn.Module):
    """A network trained as LoRA: calls run ``model`` (the adapted module), while ``parameters()`` and
    ``state_dict()`` are the trainable weights only. Attributes it lacks are ``model``'s (``blocks``, ``config``,
    ``dtype``...), so code that reads the network's structure keeps working."""

    def __init__(
        self,
        model: nn.Module,
        trainable: list[str],
        config: LoraConfig,
        target: str,
        base: str | None = None,
        merge: bool = False,
    ):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: its frozen weights are not this network's
        self.trainable = list(trainable)
        self.lora_config = config
        self.target = target  # "" for a DiT, "trunk" for MoGAN's discriminator: where the adapter sits
        self.base = base  # the checkpoint the adapted weights come from (exported products only)
        self.merge = merge
        self._collect()

    def _collect(self) -> None:
        params = dict(self.model.named_parameters())
        self.weights = nn.ParameterDict({n.replace(".", "/"): params[n] for n in self.trainable})

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "model" not in self.__dict__:
                raise
            return getattr(self.__dict__["model"], name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)
        return self

    def _apply(self, fn, recurse: bool = True):
        self.model._apply(fn, recurse)
        self._collect()
        return self

    # -- export ------------------------------------------------------------------------------------------------
    def with_state(self, state: dict[str, torch.Tensor] | None) -> LoraNet | LoraSnapshot:
        """This network with the trainable weights ``state`` (its EMA) for export, without copying the model."""
        return self if state is None else LoraSnapshot(self, state)

    def lora_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The adapter in peft / diffusers naming (``blocks.0.attn1.to_q.lora_A.weight``), float32 on the CPU."""
        state = self.state_dict() if state is None else state
        prefix = (self.target + ".") if self.target else ""
        full = {}
        for key, value in state.items():
            name = key.split(".", 1)[1].replace("/", ".")  # "weights.<a/b/c>" -> "a.b.c"
            if ".lora_" in name and name.startswith(prefix):
                full[name[len(prefix) :]] = value
        target = self.model.get_submodule(self.target) if self.target else self.model
        sd = get_peft_model_state_dict(target, state_dict=full, adapter_name=ADAPTER)
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}

    @torch.no_grad()
    def merged(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A plain copy of the model (a DiT) with the LoRA merged into its weights; unchanged tensors are shared."""
        if self.target:
            raise ValueError("merged: only a LoRA DiT merges into a plain transformer")
        base = {k.replace(".base_layer", ""): v for k, v in self.model.state_dict().items() if ".lora_" not in k}
        with torch.device("meta"):
            plain = type(self.model).from_config(self.model.config)
        plain.load_state_dict(base, assign=True)
        lora = self.lora_state_dict(state)
        for name in {k.rsplit(".lora_", 1)[0] for k in lora}:
            layer = plain.get_submodule(name)
            layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        cfg = self.lora_config
        return merge_lora(plain, lora, cfg.lora_alpha / cfg.r).eval().requires_grad_(False)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """As a part of an export (e.g. a DMD run's fake score): the model with the LoRA merged, diffusers format."""
        self.merged().save_pretrained(directory)
        return Path(directory)

    def export_lora(
        self, gen, path: Path, sampling, extra: dict | None = None, state: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """What ``Generator.save_pretrained`` writes for a LoRA transformer (see the module doc)."""
        if self.base is None:
            raise ValueError("export_lora: this LoRA network is not a product (no base checkpoint recorded)")
        lora = self.lora_state_dict(state)
        if self.merge:
            out = gen.save_pretrained(path, transformer=self.merged(state), sampling=sampling, extra=extra)
            write_adapter_checkpoint(out / "lora", lora, self.lora_config, self.base, sampling)
            return out
        return write_adapter_checkpoint(path, lora, self.lora_config, self.base, sampling, extra)


class LoraSnapshot:
    """A ``LoraNet`` with other trainable weights (the EMA's), for export."""

    def __init__(self, net: LoraNet, state: dict[str, torch.Tensor]):
        self.net, self.state = net, state

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.lora_state_dict(self.state)

    def merged(self) -> nn.Module:
        return self.net.merged(self.state)

    def export_lora(self, gen, path: Path, sampling, extra: dict | None = None) -> Path:
        return self.net.export_lora(gen, path, sampling, extra, state=self.state)


def write_adapter_checkpoint(
    path: Path, lora: dict[str, torch.Tensor], config: LoraConfig, base: str, sampling, extra: dict | None = None
) -> Path:
    """An adapter checkpoint directory, written atomically (temp directory + rename)."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        WanLoraLoaderMixin.save_lora_weights(
            tmp,
            transformer_lora_layers=lora,
            weight_name=LORA_WEIGHTS,
            transformer_lora_adapter_metadata=lora_metadata(config),
        )
        write_adapter_json(
            tmp, base=base, rank=config.r, alpha=config.lora_alpha, target_modules=list(config.target_modules)
        )
        (tmp / SAMPLING_FILE).write_text(json.dumps(asdict(sampling), indent=2))
        for name, model in (extra or {}).items():
            model.save_pretrained(tmp / name)
    return path


# ------------------------------------------------------------------------------------------------------------------
# building LoRA networks
# ------------------------------------------------------------------------------------------------------------------


def _trainable(module: nn.Module, name: str) -> bool:
    if ".lora_" in name:
        return True
    if isinstance(module, MotionDiscriminator):  # new weights: the heads, the classifier, a new flow patch encoder
        fresh_patch = module.config["input_kind"] == "flow" and module.config["flow_encoder"] == "patch"
        return not name.startswith("trunk.") or (fresh_patch and name.startswith("trunk.patch_embedding."))
    return False


@torch.no_grad()
def share_frozen(module: nn.Module, sources: list[nn.Module], skip: set[str]) -> int:
    """Point each frozen weight of ``module`` at an equal one of ``sources`` (same name, or the name without the
    discriminator's ``trunk.``); returns the number of parameters no longer held twice."""
    pool: dict[str, nn.Parameter] = {}
    for src in sources:
        for n, p in src.named_parameters():
            pool.setdefault(n, p)
    shared = 0
    for name, p in list(module.named_parameters()):
        if name in skip:
            continue
        key = name.replace(".base_layer", "")
        for cand in (key, key[len("trunk.") :] if key.startswith("trunk.") else None):
            q = pool.get(cand) if cand else None
            if (
                q is None
                or q is p
                or q.shape != p.shape
                or q.dtype != p.dtype
                or q.device != p.device
                or not torch.equal(q, p)
            ):
                continue
            parent, _, leaf = name.rpartition(".")
            (module.get_submodule(parent) if parent else module)._parameters[leaf] = q
            shared += p.numel()
            break
    return shared


def make_lora(
    module: nn.Module, lora, sources: list[nn.Module] = (), *, what: str = "network", base: str | None = None
) -> tuple[LoraNet, dict]:
    """``module`` with a LoRA adapter (in place), its frozen weights shared with ``sources`` where equal ->
    ``(LoraNet, counts)``; ``counts``: trainable, frozen and shared parameters."""
    target_name = "trunk" if isinstance(module, MotionDiscriminator) else ""
    target = module.get_submodule(target_name) if target_name else module
    target_layers(target, list(lora.target_modules), what)
    config = peft_config(lora)
    inject_adapter_in_model(config, target, adapter_name=ADAPTER)
    trainable = [n for n, _ in module.named_parameters() if _trainable(module, n)]
    for n, p in module.named_parameters():
        p.requires_grad_(n in trainable)
    shared = share_frozen(module, list(sources), set(trainable))
    total = sum(p.numel() for p in module.parameters())
    n_train = sum(p.numel() for n, p in module.named_parameters() if n in trainable)
    net = LoraNet(module, trainable, config, target_name, base=base, merge=lora.merge)
    return net, {"trainable": n_train, "frozen": total - n_train, "shared": shared}


def lora_networks(method, cfg) -> list[str]:
    """The networks of ``method`` that train as LoRA under ``cfg.lora``."""
    names = [method.product_network]
    if cfg.lora.fake_score == "lora" and "fake_score" in method.networks:
        names.append("fake_score")
    if cfg.lora.disc == "lora" and isinstance(method.networks.get("disc"), MotionDiscriminator):
        names.append("disc")
    return names


def apply_lora(method, cfg) -> dict[str, dict]:
    """Turn ``method``'s networks into LoRA networks as ``cfg.lora`` says (see the module doc) -> counts per network:
    ``trainable`` / ``frozen`` / ``shared`` parameters (networks trained in full: all trainable)."""
    base_ref = cfg.init or cfg.teacher
    if not base_ref:
        raise ConfigError("init", "LoRA adapts a checkpoint: set init (the checkpoint the adapter is trained on)")
    base = base_reference(base_ref)
    sources = list(method.frozen_networks.values())
    counts = {}
    for name in lora_networks(method, cfg):
        old = method.networks[name]
        net, counts[name] = make_lora(
            old, cfg.lora, sources, what=name, base=base if name == method.product_network else None
        )
        method.networks[name] = net
        for owner in (method, getattr(method, "gen", None)):  # self.generator, self.policy, gen.transformer, ...
            for attr, value in list(vars(owner).items() if owner is not None else ()):
                if value is old:
                    setattr(owner, attr, net)
    for name, net in method.networks.items():
        if name not in counts:
            n = sum(p.numel() for p in net.parameters())
            counts[name] = {"trainable": n, "frozen": 0, "shared": 0}
    return counts
