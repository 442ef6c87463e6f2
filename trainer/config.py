"""Training configuration: pydantic models, validated from nested dicts / YAML, saved next to every run.

    cfg = load_train_config("sft", {"steps": 200, "optim": {"lr": 3e-4}}, preset="tiny")
    save_yaml(cfg, run_dir / "config.yaml")

Each section is a model that refuses unknown keys, with ``Field`` bounds and ``Literal`` choices; ``load_train_config``
turns the first problem into a ``ConfigError`` that names the dotted field path and the limit, before any work starts.
A method's own hyper-parameters (``method_cfg``) and its preset defaults are declared here too, one model per method
(``METHOD_CONFIGS``): the methods (``trainer/methods/``) import this module, and this module imports no method.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
)

from trainer.data.synthetic import FAMILIES

LAYOUT_KEY = "layout"  # config.yaml's record of a run's batch split (world size, per-rank and micro-batch)


class ConfigError(ValueError):
    def __init__(self, field: str, message: str):
        self.field, self.detail = field, message
        super().__init__(f"config field '{field}': {message}")

    def __reduce__(self):  # picklable, so an error raised in a spawned training process reaches its launcher as is
        return type(self), (self.field, self.detail)


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field also takes a whole float (YAML's ``16.0``); strict otherwise, like every field (no "16", no true).
Int = Annotated[int, BeforeValidator(_whole)]


class Section(BaseModel):
    """A config section: unknown keys are refused and values are taken as YAML / JSON give them, without
    conversion from strings. A list or tuple field says ``strict=False`` so that it takes either sequence (its items
    stay strict)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DataConfig(Section):
    # "synthetic": procedurally generated motion clips (trainer/data/synthetic.py); "folder": a user's video folder;
    # "shards": a `motionlab data preprocess` directory (trainer/data/shards.py), streamed, no text encoder loaded
    source: Literal["synthetic", "folder", "shards"] = "synthetic"
    root: str | None = None  # the video folder (folder) or the preprocessed directory (shards)
    num_videos: Int = Field(1200, ge=1, le=10_000_000)
    seed: Int = 0
    num_frames: Int = Field(17, ge=1, le=1024)
    height: Int = Field(32, ge=8, le=4096)
    width: Int = Field(32, ge=8, le=4096)
    # family -> sampling weight for synthetic data (None = the module's defaults)
    families: dict[str, float] | None = None


class OptimConfig(Section):
    lr: float = Field(3e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    grad_clip: float = Field(1.0, ge=0.0, le=1e6)
    warmup_steps: Int = Field(0, ge=0, le=10_000_000)
    # after warmup: "constant"; "cosine" decay from lr to min_lr_ratio * lr at the run's last step; or "warmdown":
    # constant, then a linear decay to min_lr_ratio * lr over the last warmdown_ratio of the steps
    schedule: Literal["constant", "cosine", "warmdown"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmdown_ratio: float = Field(0.2, ge=0.0, le=1.0)


# Wan's attention projections (self- and cross-attention of every block); FFN layers are "ffn.net.0.proj", "ffn.net.2"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoraConfig(Section):
    """LoRA post-training through peft (``trainer/lora.py``): the product network (generator, policy, ...) trains
    rank-``rank`` adapters on ``target_modules`` (module names or dotted suffixes, as peft matches them) over frozen
    base weights, and exports a diffusers LoRA plus the name of its base (``trainer/models/adapter.py``)."""

    enabled: bool = False
    rank: Int = Field(16, ge=1, le=4096)
    alpha: float = Field(16.0, ge=1e-6, le=1e6)  # the update is scaled by alpha / rank
    dropout: float = Field(0.0, ge=0.0, le=0.9)
    target_modules: list[str] = Field(list(LORA_TARGETS), strict=False)
    # DMD-family fake score and MoGAN's discriminator trunk: adapters too, or trained in full. VDOT's discriminator
    # (register tokens and a classifier, no pretrained weights) always trains in full.
    fake_score: Literal["full", "lora"] = "lora"
    disc: Literal["full", "lora"] = "lora"
    # export a full pipeline with the LoRA merged into the transformer (the adapter checkpoint then in export/lora/)
    merge: bool = False

    @field_validator("target_modules")
    @classmethod
    def _named(cls, targets: list[str]) -> list[str]:
        if not targets or any(not t or t != t.strip() for t in targets):
            raise ValueError(f"need at least one module name (e.g. {list(LORA_TARGETS)}), got {targets!r}")
        return targets


# ----------------------------------------------------------------------------------------------------------------
# Each method's hyper-parameters (``method_cfg``) and the TrainConfig-level defaults of its presets
# ----------------------------------------------------------------------------------------------------------------

Preset = Literal["tiny", "full"]
PRESETS: tuple[str, ...] = typing.get_args(Preset)


class MethodConfig(Section):
    """``method_cfg`` of a run; ``trainer.methods.<name>`` trains with it (``Method.Config``)."""

    @classmethod
    def defaults(cls, preset: str) -> dict:
        """TrainConfig-level defaults of the method for a preset (a nested dict, validated by the config loader)."""
        return {}


class VAEConfig(MethodConfig):
    kl_weight: float = Field(1e-6, ge=0.0, le=1.0)
    motion_weight: float = Field(1.0, ge=0.0, le=100.0)
    foreground_weight: float = Field(5.0, ge=0.0, le=1000.0)
    clip_frames: Int = Field(9, ge=1, le=1024)  # frames per training clip: the first, then whole latent chunks
    # decode the latents plus noise of up to this fraction of each channel's spread (trainer/methods/vae.py)
    latent_noise: float = Field(0.0, ge=0.0, le=10.0)

    @classmethod
    def defaults(cls, preset: str) -> dict:
        # Whole 17-frame clips: a causal VAE trained on shorter clips drifts on the later chunks (their feature
        # caches were never trained). Latent noise: a decoder that tolerates the diffusion model's small errors
        # keeps still scenes still, at some cost in sharpness. Schedule and trade-offs: bench/README.md, "Tiny VAE"
        # and "Two levers aimed at the flicker".
        return {
            "steps": 3000,
            "batch_size": 8,
            "checkpoint_every": 500,
            "optim": {"lr": 5e-4, "warmup_steps": 50, "weight_decay": 0.0, "schedule": "cosine", "min_lr_ratio": 0.1},
            "method_cfg": {"clip_frames": 17, "latent_noise": 1.6},
        }


# Every family, translations (what the direction benchmarks probe) and the harder rotations and two-object scenes a
# little more often; static scenes as often as the rest, so that "static" learns to stay still.
TINY_FAMILIES = {
    "translate": 2.0,
    "bounce": 1.0,
    "rotate": 1.5,
    "pan": 1.0,
    "scale": 1.0,
    "two_objects": 1.5,
    "static": 1.0,
}

# The training-time sigma shift of the tiny teacher (see SFTConfig.defaults); DF-DPO's errors use the same
# distribution.
TINY_SHIFT = 5.0


class FlowMatchingSigmas(MethodConfig):
    """The sigma distribution of a flow-matching loss (SFT trains with it; DF-DPO's errors use the same)."""

    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    shift: float = Field(2.0, ge=0.01, le=100.0)


class SFTConfig(FlowMatchingSigmas):
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)

    @classmethod
    def defaults(cls, preset: str) -> dict:
        if preset == "tiny":
            # The direction of motion is tied to the caption's word late in training, whatever the
            # schedule; shift 5 puts more steps at high noise, where the caption decides it. Figures of this
            # schedule and the ones tried: bench/README.md ("Tiny teacher").
            return {
                "steps": 16000,
                "batch_size": 16,
                "ema_decay": 0.998,
                "checkpoint_every": 500,
                "optim": {
                    "lr": 2e-3,
                    "warmup_steps": 100,
                    "weight_decay": 0.01,
                    "schedule": "warmdown",
                    "warmdown_ratio": 0.2,
                    "min_lr_ratio": 0.05,
                },
                "data": {"num_videos": 2000, "families": TINY_FAMILIES},
                "method_cfg": {"shift": TINY_SHIFT},
            }
        return {
            "steps": 2000,
            "batch_size": 4,
            "ema_decay": 0.999,
            "checkpoint_every": 200,
            "gradient_checkpointing": True,
            "optim": {"lr": 1e-5},
            "data": {"source": "folder", "num_frames": 81, "height": 480, "width": 832},
        }


class DMDConfig(MethodConfig):
    timesteps: list[float] = Field([1000.0, 757.0, 522.0], strict=False)
    real_guidance: float = Field(4.0, ge=1.0, le=50.0)  # teacher CFG (standard form)
    critic_steps: Int = Field(4, ge=1, le=100)  # fake-score updates per generator update
    sigma_min: float = Field(0.02, ge=0.0, le=1.0)
    sigma_max: float = Field(0.98, ge=0.0, le=1.0)
    shift: float = Field(2.0, ge=0.01, le=100.0)
    fake_lr: float | None = Field(None, ge=0.0, le=1.0)  # default: optim.lr
    num_prompts: Int = Field(2000, ge=1, le=10_000_000)

    @classmethod
    def defaults(cls, preset: str) -> dict:
        if preset == "tiny":
            return {
                "steps": 300,
                "batch_size": 8,
                "checkpoint_every": 50,
                "log_every": 10,
                "optim": {"lr": 5e-5, "betas": [0.0, 0.999], "weight_decay": 0.0},
                "data": {
                    "families": {
                        "translate": 4.0,
                        "bounce": 1.0,
                        "rotate": 1.0,
                        "pan": 1.0,
                        "scale": 1.0,
                        "two_objects": 1.0,
                        "static": 0.5,
                    }
                },
            }
        return {
            "steps": 800,
            "batch_size": 16,
            "checkpoint_every": 100,
            "gradient_checkpointing": True,
            "optim": {"lr": 1e-5, "betas": [0.0, 0.999]},
            "data": {"source": "folder", "num_frames": 81, "height": 480, "width": 832},
        }


class MoGANConfig(DMDConfig):
    use_dmd: bool = True
    use_r1r2: bool = True
    disc_space: Literal["flow", "video"] = "flow"
    lambda_gan: float = Field(0.5, ge=0.0, le=100.0)  # lambda_1
    lambda_disc: float = Field(0.5, ge=0.0, le=100.0)  # lambda_2
    lambda_r1: float = Field(0.3, ge=0.0, le=100.0)
    lambda_r2: float = Field(0.3, ge=0.0, le=100.0)
    # R1/R2 noise std in the units D is fed: the normalised flow (pixel flow / (flow_norm * min(H, W))) in flow
    # space, the normalised latents in video space
    sigma_n: float = Field(0.01, ge=0.0, le=10.0)
    window_chunks: Int = Field(3, ge=1, le=1024)  # L of K latent chunks
    disc_blocks: Int = Field(4, ge=1, le=1024)  # trunk depth N
    head_blocks: list[Int] = Field([1, 2, 3], strict=False)  # trunk block each head reads, counted from zero
    flow_encoder: Literal["vae", "patch"] = "vae"
    flow_estimator: Literal["horn_schunck", "raft_small", "raft_large"] = "horn_schunck"
    flow_weights: str | None = None  # RAFT .pth (full scale)
    disc_lr: float | None = Field(None, ge=0.0, le=1.0)
    # D's global batch of real motions per update, and as many generated ones (generated without gradient in
    # generator micro-batches); None: batch_size
    disc_batch_size: Int | None = Field(None, ge=1, le=65536)
    num_real: Int = Field(600, ge=1, le=10_000_000)  # real-motion clips (synthetic source)
    # family -> weight of the synthetic real-motion set only (None: data.families, which also weights the
    # generator's prompts): e.g. a motion-rich real set, as the paper curated, with the prompts unchanged
    real_families: dict[str, float] | None = None

    @field_validator("real_families")
    @classmethod
    def _known_families(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        unknown = sorted(set(weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown family {unknown}; known: {list(FAMILIES)}")
        bad = {f: w for f, w in weights.items() if not 0 <= w < float("inf")}
        if bad:
            raise ValueError(f"weights must be finite numbers >= 0, got {bad}")
        if not any(weights.values()):
            raise ValueError("at least one family needs a weight > 0")
        return weights

    @classmethod
    def defaults(cls, preset: str) -> dict:
        base = super().defaults(preset)
        if preset == "tiny":
            # disc_lr 2x the generator's: the only rate tried at which D separated real from generated flow
            # without collapsing. Batch 4 and 100 iterations keep four MoGAN rows inside the recipe's time budget.
            # The sweep: bench/README.md, "Tiny presets".
            return {**base, "steps": 100, "batch_size": 4, "checkpoint_every": 25, "method_cfg": {"disc_lr": 1e-4}}
        return {
            **base,
            "steps": 800,
            "batch_size": 16,
            "method_cfg": {
                "window_chunks": 12,
                "disc_blocks": 16,
                "head_blocks": [7, 13, 15],
                "flow_estimator": "raft_large",
                "disc_batch_size": 64,
                "critic_steps": 4,
            },
        }


# Full scale (Wan2.1-T2V-1.3B, 30 blocks): the paper's "about 13, 21, 29" for a 30-block model.
FULL_DISC_BLOCKS = [13, 21, 29]
# Self-Forcing's 4-step list [1000, 750, 500, 250] warped through the shift-5 schedule (VDOT generates in 4
# steps).
FULL_TIMESTEPS = [1000.0, 937.5, 833.3, 625.0]


class VDOTConfig(DMDConfig):
    critic_steps: Int = Field(5, ge=1, le=100)  # TTUR: critic updates per generator update
    use_otd: bool = True
    use_dmd: bool = True
    use_gan: bool = True
    ot_reg: float = Field(0.2, ge=1e-4, le=100.0)  # relative to the cost scale (losses/ot.py)
    ot_max_iter: Int = Field(1000, ge=1, le=1_000_000)
    ot_tol: float = Field(1e-4, ge=0.0, le=1.0)
    lambda_dmd: float = Field(1.0, ge=0.0, le=1000.0)  # L_OTD + lambda * L_DMD
    lambda_gan: float = Field(1.0, ge=0.0, le=1000.0)
    gan_form: Literal["linear", "softplus"] = "linear"
    # fake-score blocks the register tokens read, counted from zero (the default: every tiny block but the first)
    disc_blocks: list[Int] = Field([1, 2, 3], strict=False)
    disc_head_hidden: Int | None = Field(None, ge=1, le=65536)  # None: bare register tokens
    disc_lr: float | None = Field(None, ge=0.0, le=1.0)  # default: optim.lr
    num_real: Int = Field(400, ge=1, le=10_000_000)  # real clips (synthetic source)

    @classmethod
    def defaults(cls, preset: str) -> dict:
        base = super().defaults(preset)
        if preset == "tiny":
            # batch 4 (DMD's tiny uses 8): with TTUR 5 an iteration is 1 + 5 updates. disc_lr 10x the nets': the
            # register-token head starts from scratch and stays at chance at the nets' rate (bench/README.md,
            # "Tiny presets").
            return {**base, "steps": 200, "batch_size": 4, "checkpoint_every": 50, "method_cfg": {"disc_lr": 5e-4}}
        # Paper: Adam, generator lr 2e-6 (phase 1), critic lr 4e-7, TTUR 5, 4 GPUs x batch 1, 1500 steps
        # (phase 1, the T2V distillation this project reproduces), gradient checkpointing. batch_size is global.
        return {
            **base,
            "steps": 1500,
            "batch_size": 4,
            "checkpoint_every": 100,
            "optim": {"lr": 2e-6, "betas": [0.0, 0.999], "weight_decay": 0.0},
            "method_cfg": {
                "timesteps": FULL_TIMESTEPS,
                "disc_blocks": FULL_DISC_BLOCKS,
                "fake_lr": 4e-7,
                "disc_lr": 4e-7,
                "critic_steps": 5,
            },
        }


class DFDPOConfig(FlowMatchingSigmas):  # its errors use the tiny teacher's sigma distribution
    # beta: Diffusion-DPO's KL weight (paper 5000, for a 2B model at lr 1e-8). Tiny default 500: see
    # `defaults`.
    beta: float = Field(500.0, ge=1e-6, le=1e9)
    lambda_sft: float = Field(1.0, ge=0.0, le=1e6)  # L = L_DPO + lambda * L_SFT(x_w)
    mode: Literal["temporal", "spatial", "hybrid"] = "hybrid"
    # None: the `mode` preset. Else a distortion spec, or a curriculum [[start_step, spec], ...] whose first entry
    # starts at the first step (checked when the method builds its curriculum).
    distortions: Any = None

    @classmethod
    def defaults(cls, preset: str) -> dict:
        if preset == "tiny":
            # lr 1e-5, beta 500, lambda_sft 10 (paper: lr 1e-8, beta 5000, lambda not given): the paper's beta
            # saturates the sigmoid at once on the tiny model, and a weak SFT anchor lets the DPO term raise the
            # win clips' error too (Diffusion-DPO's likelihood displacement). Figures: bench/README.md,
            # "Tiny presets".
            return {
                "steps": 200,
                "batch_size": 4,
                "checkpoint_every": 50,
                "log_every": 10,
                "optim": {"lr": 1e-5, "betas": [0.9, 0.999], "weight_decay": 0.0, "warmup_steps": 10},
                "data": {"num_videos": 256, "families": TINY_FAMILIES},
                "method_cfg": {"lambda_sft": 10.0, "shift": TINY_SHIFT},
            }
        # Paper: AdamW lr 1e-8, beta 5000, batch 1 with gradient accumulation 16 (per GPU). batch_size is global,
        # one GPU's 1 x 16 (on N GPUs, grad_accum 16 / N keeps it).
        return {
            "steps": 1000,
            "batch_size": 16,
            "grad_accum": 16,
            "checkpoint_every": 100,
            "gradient_checkpointing": True,
            "optim": {"lr": 1e-8, "weight_decay": 0.01},
            "data": {"source": "folder", "num_frames": 81, "height": 480, "width": 832},
            "method_cfg": {"beta": 5000.0},
        }


# method name -> its ``method_cfg`` model; ``trainer.methods.METHODS`` has a Method class for each
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "vae": VAEConfig,
    "sft": SFTConfig,
    "dmd": DMDConfig,
    "mogan": MoGANConfig,
    "vdot": VDOTConfig,
    "dfdpo": DFDPOConfig,
}


# Motions the tiny synthetic world knows (trainer/data/synthetic.py captions, training-split colour/shape pairs).
VALIDATION_PROMPTS = (
    "a red square moves right",
    "a blue circle moves up",
    "a green bar rotates clockwise",
    "the camera pans left over a textured wall",
)


class TrainConfig(Section):
    method: str = "sft"
    preset: Preset = "tiny"
    # checkpoint (zoo name or pipeline directory) the trained network(s) start from
    init: str | None = None
    # frozen teacher (real score) for distillation methods
    teacher: str | None = None
    seed: Int = 0
    steps: Int = Field(1000, ge=1, le=10_000_000)
    # global: samples per optimizer update over all ranks and accumulation micro-steps (see batch_layout)
    batch_size: Int = Field(16, ge=1, le=65536)
    grad_accum: Int = Field(1, ge=1, le=4096)
    ema_decay: float = Field(0.0, ge=0.0, le=1.0)
    checkpoint_every: Int = Field(100, ge=1, le=10_000_000)
    keep_checkpoints: Int = Field(2, ge=1, le=1000)
    log_every: Int = Field(10, ge=1, le=10_000_000)
    device: str = "cpu"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    gradient_checkpointing: bool = False
    # every N steps sample the product for these prompts (seeds validation_seed + i) into validation/ and
    # TensorBoard (trainer/tracking.py); 0 = off
    validation_every: Int = Field(0, ge=0, le=10_000_000)
    validation_prompts: list[str] = Field(list(VALIDATION_PROMPTS), strict=False)
    validation_seed: Int = 0
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    # the method's own model (METHOD_CONFIGS[method]); filled in by load_train_config
    method_cfg: SerializeAsAny[MethodConfig] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Validation errors
# ----------------------------------------------------------------------------------------------------------------

S = TypeVar("S", bound=BaseModel)

# pydantic error type -> what the field expects, for "expected ..., got ..."
_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def validate(model: type[S], data: Any, loc: tuple[str | int, ...] = ()) -> S:
    """``model`` from ``data``, or a ``ConfigError`` naming the field at ``loc`` + the failing key (the one place a
    pydantic ``ValidationError`` becomes a ConfigError)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # an unknown key first
        raise ConfigError(_dotted(loc + err["loc"]), _message(model, err)) from None


def _dotted(loc: tuple) -> str:
    """``("optim", "betas", 1)`` -> ``"optim.betas[1]"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "<root>"


def _message(model: type[BaseModel], err) -> str:
    kind, value = err["type"], err.get("input")
    owner, info = _field_at(model, err["loc"])
    if kind == "extra_forbidden":
        return f"unknown key; allowed keys: {sorted(owner.model_fields)}"
    if kind in ("greater_than_equal", "less_than_equal") and info is not None:  # a Field(ge=..., le=...)
        lo = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        hi = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        return f"value {value!r} is out of range [{lo}, {hi}]"
    if kind == "literal_error":
        return f"value {value!r} is not one of {list(_choices(info.annotation)) if info else err['ctx']['expected']}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return f"{err['msg']}, got {value!r}"


def _field_at(model: type[BaseModel], loc: tuple):
    """The model that owns the last key of ``loc`` and that key's field info (None for an unknown key)."""
    owner, info = model, None
    for part in loc:
        if isinstance(part, int):  # an item of a list field
            continue
        if info is not None:
            sub = _model_in(info.annotation)
            if sub is None:  # a key of a mapping field
                break
            owner = sub
        info = owner.model_fields.get(part)
        if info is None:
            break
    return owner, info


def _model_in(annotation) -> type[BaseModel] | None:
    for tp in (annotation, *typing.get_args(annotation)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def _choices(annotation) -> tuple:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return tuple(c for a in typing.get_args(annotation) for c in _choices(a))


# ----------------------------------------------------------------------------------------------------------------
# Loading, merging, saving
# ----------------------------------------------------------------------------------------------------------------


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
    if method not in METHOD_CONFIGS:
        raise ConfigError("method", f"unknown method {method!r}; choose one of {sorted(METHOD_CONFIGS)}")
    spec = METHOD_CONFIGS[method]
    overrides = dict(overrides or {})
    overrides.pop(LAYOUT_KEY, None)  # a saved config.yaml's record of how the batch was split (not an input)
    if "method" in overrides and overrides["method"] != method:
        raise ConfigError("method", f"config says {overrides['method']!r} but {method!r} was requested")
    preset = overrides.get("preset", preset)
    if preset not in PRESETS:  # before its defaults are looked up
        raise ConfigError("preset", f"value {preset!r} is not one of {list(PRESETS)}")
    merged = deep_merge(spec.defaults(preset), overrides)
    method_dict = merged.pop("method_cfg", None) or {}
    merged.update(method=method, preset=preset)
    cfg = validate(TrainConfig, merged)
    if cfg.validation_every and not cfg.validation_prompts:
        raise ConfigError("validation_prompts", "empty; validation_every > 0 needs at least one prompt")
    cfg.method_cfg = validate(spec, method_dict, ("method_cfg",))
    _check_lora(cfg)
    if getattr(cfg.method_cfg, "real_families", None) is not None and cfg.data.source != "synthetic":
        raise ConfigError(
            "method_cfg.real_families", f"weights the synthetic real-motion set; data.source is {cfg.data.source!r}"
        )
    return cfg


def _check_lora(cfg: TrainConfig) -> None:
    if not cfg.lora.enabled:
        return
    if cfg.method == "vae":
        raise ConfigError(
            "lora.enabled", "the VAE method trains no transformer: LoRA is for sft, dmd, mogan, vdot and dfdpo"
        )
    if cfg.parallel == "fsdp":
        raise ConfigError(
            "parallel",
            "LoRA runs train under parallel=ddp (adapters are small and replicated); "
            "parallel=fsdp is not supported with lora.enabled",
        )


def micro_batch(total: int, world_size: int, grad_accum: int, field: str = "batch_size") -> int:
    """Samples per rank per accumulation micro-step of a global batch of ``total`` samples per optimizer update."""
    parts = world_size * grad_accum
    if total % parts:
        raise ConfigError(
            field,
            f"the global batch {field}={total} must split evenly over world size {world_size} "
            f"x grad_accum {grad_accum}: use a multiple of {parts}",
        )
    return total // parts


def batch_layout(cfg: TrainConfig, world_size: int) -> dict:
    """How ``cfg.batch_size`` (global, per optimizer update) splits over ranks and accumulation micro-steps."""
    micro = micro_batch(cfg.batch_size, world_size, cfg.grad_accum)
    return {"world_size": world_size, "per_rank_batch_size": micro * cfg.grad_accum, "micro_batch_size": micro}


def to_dict(cfg: BaseModel) -> dict:
    """A config as plain YAML-able data (tuples as lists), ``method_cfg`` included."""
    return _plain(cfg.model_dump())


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
