"""The generator family: a Wan2.1 text-to-video model at two scales, one code path.

A ``Generator`` bundles the four diffusers/transformers parts of a Wan text-to-video pipeline:
``WanTransformer3DModel`` (the denoiser), ``AutoencoderKLWan`` (the video VAE), ``UMT5EncoderModel`` and its
tokenizer, plus a ``SamplingConfig`` that says how the checkpoint is meant to be sampled.

- ``tiny``: small configs built in-project (``build_tiny``) that train on 2 CPU cores.
- ``full``: a local diffusers-format directory of Wan2.1-T2V-1.3B (or, for timing, its architecture with random
  weights: ``build_full_random``).

Both are saved and loaded as a WanPipeline-shaped directory (``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) plus ``motionlab_sampling.json``, so
``diffusers.WanPipeline.from_pretrained(dir)`` loads our checkpoints and ``Generator.from_pretrained`` loads the
real Wan directory through the very same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

# the checkpoint locations, also importable from here next to the generator that loads them
from trainer.locations import (
    FULL_MODEL_SUBDIR,
    SAMPLING_FILE,
    WeightsNotFoundError,
    resolve_checkpoint,
    weights_dir,
)
from trainer.models.adapter import MAX_CHAIN, is_adapter_dir, merge_lora, read_adapter
from trainer.models.vae_window import denormalize_latents, normalize_latents

PIPELINE_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename, on failure it is removed
    (a reader never sees a half-written checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@dataclass
class SamplingConfig:
    """How a checkpoint is sampled. Saved next to the weights as ``motionlab_sampling.json``.

    ``kind="teacher"``: ``num_steps`` Euler steps over Wan-shifted sigmas with classifier-free guidance.
    ``kind="few_step"``: the distilled sigmas ``timesteps / 1000`` (x0-predict, then re-noise), no CFG.
    ``cfg_form``: "standard" is ``v_u + w (v_c - v_u)``; some codebases write ``v_c + w (v_c - v_u)`` ("plus_one"),
    which equals standard with ``w + 1``. We store which one a checkpoint expects.
    """

    kind: str = "teacher"
    num_steps: int = 50
    shift: float = 3.0
    guidance_scale: float = 5.0
    cfg_form: str = "standard"
    timesteps: list[float] = field(default_factory=lambda: [1000.0, 757.0, 522.0])
    negative_prompt: str = ""
    num_frames: int = 81
    height: int = 480
    width: int = 832
    fps: int = 16
    max_text_len: int = 512

    def __post_init__(self):
        if self.kind not in ("teacher", "few_step"):
            raise ValueError(f"sampling.kind must be 'teacher' or 'few_step', got {self.kind!r}")
        if self.cfg_form not in ("standard", "plus_one"):
            raise ValueError(f"sampling.cfg_form must be 'standard' or 'plus_one', got {self.cfg_form!r}")
        if not 1 <= self.num_steps <= 1000:
            raise ValueError(f"sampling.num_steps must be in [1, 1000], got {self.num_steps}")
        if self.kind == "few_step" and not all(0 < t <= 1000 for t in self.timesteps):
            raise ValueError(f"sampling.timesteps must lie in (0, 1000], got {self.timesteps}")

    @classmethod
    def from_dict(cls, d: dict) -> SamplingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown sampling key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)

    def few_step(self, timesteps: list[float] | None = None) -> SamplingConfig:
        d = asdict(self)
        d.update(kind="few_step", num_steps=len(timesteps or self.timesteps), guidance_scale=1.0)
        if timesteps is not None:
            d["timesteps"] = list(timesteps)
        return SamplingConfig(**d)


# --------------------------------------------------------------------------------------------------------------
# Presets. The tiny configs are the same classes with small sizes: videos 17 x 32 x 32, latents TINY_Z_DIM x 5 x 8 x 8.
# --------------------------------------------------------------------------------------------------------------

# The tiny VAE's latent channels, which the tiny transformer reads and predicts. 16 rather than 8: the VAE trains
# with latent noise (trainer/methods/vae.py), and twice the channels keep more of the objects' colour and outline
# above that noise at no measurable cost to either stage's step time (bench/README.md, "A 16-channel latent").
TINY_Z_DIM = 16

# Few blocks and a narrow FFN: per step it learns the prompts' direction of motion about as fast as a wider, deeper
# tiny model, and each step is cheaper, so the teacher (SFT.defaults) and the whole tiny recipe fit their time budgets
# on 2 CPU cores (bench/README.md, "Where the teacher loses what its clips had": a larger transformer).
TINY_TRANSFORMER = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": TINY_Z_DIM,
    "out_channels": TINY_Z_DIM,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}
# Wan2.2's residual down/up blocks (``is_residual``: a parameter-free space-to-channel shortcut around each
# resampling): with them the tiny VAE learns the objects' colour and shape in far fewer steps than Wan2.1's plain
# blocks (bench/README.md). Stock ``AutoencoderKLWan`` / ``WanPipeline`` load it as they load Wan2.2's VAE.
TINY_VAE = {
    "base_dim": 16,
    "z_dim": TINY_Z_DIM,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [True, True],
    "is_residual": True,
    "latents_mean": [0.0] * TINY_Z_DIM,
    "latents_std": [1.0] * TINY_Z_DIM,
    "scale_factor_spatial": 4,  # read by stock WanPipeline to size latents
    "scale_factor_temporal": 4,
}
TINY_TEXT_ENCODER = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
TINY_SAMPLING = SamplingConfig(
    kind="teacher",
    num_steps=50,
    shift=2.0,
    guidance_scale=4.0,
    num_frames=17,
    height=32,
    width=32,
    fps=8,
    max_text_len=16,
)
FULL_SAMPLING = SamplingConfig(
    kind="teacher",
    num_steps=50,
    shift=3.0,
    guidance_scale=5.0,
    num_frames=81,
    height=480,
    width=832,
    fps=16,
    max_text_len=512,
)
PRESETS = {"tiny": TINY_SAMPLING, "full": FULL_SAMPLING}
# Wan2.1-T2V-1.3B's architecture (its published configs): for ``build_full_random``, which times and sizes the full
# scale where the weights are not present. The VAE is AutoencoderKLWan's defaults (Wan2.1's); the text encoder is
# UMT5-XXL's encoder.
FULL_TRANSFORMER = dict(
    TINY_TRANSFORMER,
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    rope_max_seq_len=1024,
)
FULL_VAE: dict = {}
FULL_TEXT_ENCODER = dict(
    TINY_TEXT_ENCODER,
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)


def check_pipeline_dir(path: str | os.PathLike, _depth: int = 0) -> Path:
    """Raise ``WeightsNotFoundError`` naming every missing part of a WanPipeline-shaped directory, or of an adapter
    checkpoint (``trainer/models/adapter.py``) and the base it names."""
    path = Path(path)
    if path.is_dir() and is_adapter_dir(path):
        check_pipeline_dir(adapter_base(path, _depth), _depth + 1)
        return path
    if not path.is_dir():
        raise WeightsNotFoundError(
            f"model directory {path} does not exist; expected a diffusers-format Wan directory with "
            f"model_index.json and {', '.join(p + '/' for p in PIPELINE_PARTS)}"
        )
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for part in PIPELINE_PARTS:
        sub = path / part
        if not sub.is_dir():
            missing.append(f"{part}/")
        elif part != "tokenizer" and not (sub / "config.json").is_file():
            missing.append(f"{part}/config.json")
        elif part != "tokenizer" and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            missing.append(f"{part}/*.safetensors")
    if missing:
        raise WeightsNotFoundError(f"model directory {path} is incomplete; missing: {', '.join(missing)}")
    return path


def adapter_base(path: str | os.PathLike, _depth: int = 0) -> Path:
    """The directory an adapter checkpoint's ``base`` names (a zoo name or a directory)."""
    if _depth >= MAX_CHAIN:
        raise WeightsNotFoundError(f"adapter checkpoint {path}: more than {MAX_CHAIN} adapters on top of each other")
    base = read_adapter(path)["base"]
    try:
        return resolve_checkpoint(base)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"adapter checkpoint {path}: its base {base!r} is not available: {exc}") from None


def prefer_onednn_conv3d(module: torch.nn.Module) -> None:
    """Run the 3-D convolutions of ``module`` through oneDNN on CPU at every batch size; elsewhere nothing changes.

    PyTorch's CPU heuristic sends a batch-1 3-D convolution with 3x3 kernels and a small input (batch x channels x
    frames x height of at most 20480) to its native im2col kernel (``slow_conv3d``), and only from batch 2 to oneDNN.
    For a VAE coding one small video that is the slower choice (the tiny VAE's 17x32x32 videos take that path).
    Larger inputs (the tiny VAE at 64x64, any full-scale one) already get oneDNN.
    It is the same convolution, forward and backward (tests: within float rounding).
    """
    if not torch.backends.mkldnn.is_available():
        return
    for m in module.modules():
        if isinstance(m, torch.nn.Conv3d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            # a bound method, so that a deep copy of the module calls its own copy
            m._conv_forward = types.MethodType(_conv3d_forward, m)


def _conv3d_forward(conv: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    # what ``nn.Conv3d.forward`` calls (diffusers' causal convolution pads, then calls it); under autocast PyTorch's
    # own path, which casts the convolution to the autocast dtype
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return torch.nn.Conv3d._conv_forward(conv, x, weight, bias)


class Generator:
    """A text-to-video diffusion model: transformer + VAE + text encoder + tokenizer + sampling defaults."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, sampling: SamplingConfig):
        self.transformer = transformer
        self.vae = vae
        prefer_onednn_conv3d(vae)
        self.text_encoder = text_encoder  # None: loaded without it (``from_pretrained(text_encoder=False)``)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.source: Path | None = None  # the directory it was loaded from
        self.prompt_table: dict[str, torch.Tensor] | None = None  # text -> trimmed embedding, when text_encoder is None
        self.prompt_table_source = ""

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def build_tiny(cls, seed: int = 0, vocabulary: list[str] | None = None) -> Generator:
        """Fresh, randomly initialised tiny model (same classes as Wan2.1, small configs)."""
        # heavy: diffusers and transformers (the tokenizer too), only to build a fresh model
        from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
        from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        from trainer.models.tokenizer import build_word_tokenizer

        tokenizer = build_word_tokenizer(vocabulary, max_length=TINY_SAMPLING.max_text_len)
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
        vae = AutoencoderKLWan(**TINY_VAE)
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER))
        return cls(transformer, vae, text_encoder, tokenizer, SamplingConfig(**asdict(TINY_SAMPLING)))

    @classmethod
    def build_full_random(
        cls,
        seed: int = 0,
        device: str | torch.device = "cpu",
        *,
        num_layers: int | None = None,
        text_layers: int | None = None,
    ) -> Generator:
        """Wan2.1-T2V-1.3B's architecture with random weights, built on ``device`` (``"meta"`` allocates nothing).

        For timing and peak memory at the full scale where the real weights are absent: the work per step does not
        depend on the weights' values. The tokenizer is the in-project word tokenizer padded to Wan's 512 tokens
        (the real one is UMT5's sentencepiece model); the encoder runs all 512 positions either way.
        ``num_layers`` / ``text_layers`` cut the DiT's and the encoder's depth (every width stays Wan's): the
        full-architecture rehearsal on CPU, where training reads preprocessed embeddings and never runs the encoder.
        """
        # heavy: diffusers and transformers (the tokenizer too), only to build a fresh model
        from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
        from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        from trainer.models.tokenizer import build_word_tokenizer

        tokenizer = build_word_tokenizer(max_length=FULL_SAMPLING.max_text_len)
        torch.manual_seed(seed)
        with torch.device(device):  # initialise in place: 7 billion parameters are slow to build on a CPU
            transformer = WanTransformer3DModel(
                **{**FULL_TRANSFORMER, "num_layers": num_layers or FULL_TRANSFORMER["num_layers"]}
            )
            vae = AutoencoderKLWan(**FULL_VAE)
            text_cfg = dict(FULL_TEXT_ENCODER, num_layers=text_layers or FULL_TEXT_ENCODER["num_layers"])
            if text_layers:  # the word tokenizer's vocabulary: a 256K-row embedding table is 4 GB of random floats
                text_cfg["vocab_size"] = len(tokenizer)
            text_encoder = UMT5EncoderModel(UMT5Config(**text_cfg))
        return cls(transformer, vae, text_encoder, tokenizer, SamplingConfig(**asdict(FULL_SAMPLING)))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        vae_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        transformer_subfolder: str = "transformer",
        text_encoder: bool = True,
    ) -> Generator:
        """Load a WanPipeline-shaped directory (ours or the real Wan2.1 one), checking every part first.

        ``dtype``: the transformer and text encoder; ``vae_dtype``: the VAE (float32 unless a caller trades its
        precision for speed, as serving's ``FastPaths.vae_dtype`` may). ``text_encoder=False`` leaves the text encoder
        on disk (UMT5-XXL is 5.7B parameters): training from preprocessed shards reads embeddings instead
        (``use_prompt_table``), and ``save_pretrained`` copies the encoder's files from this directory.
        """
        from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
        from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = check_pipeline_dir(path)
        if is_adapter_dir(path):
            return cls._from_adapter(
                path,
                dtype=dtype,
                vae_dtype=vae_dtype,
                device=device,
                transformer_subfolder=transformer_subfolder,
                text_encoder=text_encoder,
            )
        sampling_file = path / SAMPLING_FILE
        if sampling_file.is_file():
            sampling = SamplingConfig.from_dict(json.loads(sampling_file.read_text()))
        else:  # a stock Wan directory: the teacher defaults
            sampling = SamplingConfig(**asdict(FULL_SAMPLING))
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder=transformer_subfolder, torch_dtype=dtype)
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
        encoder = (
            UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
            if text_encoder
            else None
        )
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        gen = cls(transformer, vae, encoder, tokenizer, sampling)
        gen.source = path
        gen.eval().requires_grad_(False)
        return gen.to(device)

    @classmethod
    def _from_adapter(
        cls,
        path: Path,
        *,
        dtype: torch.dtype,
        vae_dtype: torch.dtype,
        device,
        transformer_subfolder: str,
        text_encoder: bool,
    ) -> Generator:
        """An adapter checkpoint: its base, with the LoRA merged into the transformer and the adapter's own
        sampling settings. ``source`` stays the base directory (where the parts not loaded are copied from)."""
        info = read_adapter(path)
        gen = cls.from_pretrained(
            adapter_base(path),
            dtype=dtype,
            vae_dtype=vae_dtype,
            device="cpu",
            transformer_subfolder=transformer_subfolder,
            text_encoder=text_encoder,
        )
        merge_lora(gen.transformer, load_file(str(path / info["weight_name"])), info["alpha"] / info["rank"])
        if (path / SAMPLING_FILE).is_file():
            gen.sampling = SamplingConfig.from_dict(json.loads((path / SAMPLING_FILE).read_text()))
        return gen.to(device)

    @classmethod
    def from_preset(cls, preset: str, *, path: str | os.PathLike | None = None, **kw) -> Generator:
        if preset == "tiny":
            return cls.from_pretrained(path, **kw) if path else cls.build_tiny()
        if preset == "full":
            return cls.from_pretrained(path or weights_dir() / FULL_MODEL_SUBDIR, **kw)
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")

    def save_pretrained(
        self,
        path: str | os.PathLike,
        *,
        transformer=None,
        sampling: SamplingConfig | None = None,
        extra: dict | None = None,
    ) -> Path:
        """Write a WanPipeline-shaped directory atomically (temp dir + rename).

        ``transformer`` overrides the bundle's own (e.g. to save EMA weights or a student). ``extra``: name -> model
        saved (``save_pretrained``) as ``name/`` in the same directory, in the same atomic write, and not listed in
        ``model_index.json`` (pipeline loaders ignore it), e.g. a distilled student's fake score.
        A LoRA ``transformer`` (``trainer/lora.py``) writes an adapter checkpoint instead (or, with ``lora.merge``, this
        pipeline with the LoRA merged and the adapter checkpoint in ``lora/``).
        """
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

        if hasattr(transformer, "export_lora"):
            return transformer.export_lora(self, Path(path), sampling or self.sampling, extra)
        path = Path(path)
        with atomic_directory(path) as tmp:
            (transformer or self.transformer).save_pretrained(tmp / "transformer")
            for name, model in (extra or {}).items():
                if name in (*PIPELINE_PARTS, "scheduler"):
                    raise ValueError(f"save_pretrained: extra part {name!r} would replace a pipeline component")
                model.save_pretrained(tmp / name)
            self.vae.save_pretrained(tmp / "vae")
            if self.text_encoder is not None:
                self.text_encoder.save_pretrained(tmp / "text_encoder")
            else:
                shutil.copytree(self._source_part("text_encoder"), tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            s = sampling or self.sampling
            FlowMatchEulerDiscreteScheduler(shift=s.shift).save_pretrained(tmp / "scheduler")
            (tmp / "model_index.json").write_text(json.dumps(_model_index(self, transformer), indent=2))
            (tmp / SAMPLING_FILE).write_text(json.dumps(asdict(s), indent=2))
        return path

    # -- device / mode ------------------------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> Generator:
        kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        self.transformer.to(**kw)
        if self.text_encoder is not None:
            self.text_encoder.to(**kw)
        self.vae.to(device=device)
        return self

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.vae, self.text_encoder) if m is not None]

    def eval(self) -> Generator:
        for m in self._modules():
            m.eval()
        return self

    def requires_grad_(self, flag: bool) -> Generator:
        for m in self._modules():
            m.requires_grad_(flag)
        return self

    def _source_part(self, part: str) -> Path:
        if self.source is None or not (Path(self.source) / part).is_dir():
            raise WeightsNotFoundError(
                f"this generator has no {part} loaded and no source directory holding "
                f"{part}/ to copy it from (source: {self.source})"
            )
        return Path(self.source) / part

    def use_prompt_table(self, table: dict[str, torch.Tensor], source: str = "") -> Generator:
        """Serve ``encode_prompts`` from precomputed embeddings (text -> ``[len, text_dim]``, trimmed) instead of the
        text encoder, which is then not needed: a loaded one is freed where ``save_pretrained`` can copy its files from
        the source directory."""
        self.prompt_table = dict(table)
        self.prompt_table_source = source
        if self.source is not None and (Path(self.source) / "text_encoder").is_dir():
            self.text_encoder = None
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # -- text --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], device=None) -> torch.Tensor:
        """Prompts -> ``[B, max_text_len, text_dim]``; positions past each prompt's length are zero (as Wan does)."""
        device = device or self.device
        max_len = self.sampling.max_text_len
        if self.text_encoder is None:
            return self._lookup_prompts(list(prompts), max_len).to(device)
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=max_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def _lookup_prompts(self, prompts: list[str], max_len: int) -> torch.Tensor:
        table = self.prompt_table or {}
        missing = sorted({p for p in prompts if p not in table})
        if missing:
            where = f"the preprocessed embeddings of {self.prompt_table_source}" if self.prompt_table else "none"
            raise ValueError(
                f"no text encoder loaded and no precomputed embedding for prompt(s) {missing} (looked in: {where}); "
                f"preprocess them too ('motionlab data preprocess --extra-prompts FILE') or load the text encoder"
            )
        rows = [table[p] for p in prompts]
        out = torch.zeros(len(rows), max_len, rows[0].shape[-1] if rows else 0)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r.float()
        return out

    # -- latents <-> pixels ----------------------------------------------------------------------------------------
    def encode_video(self, pixels: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Pixels ``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, C, F, h, w]`` (``(z - mean) / std``)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return normalize_latents(self.vae, dist.sample(generator) if sample else dist.mode())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels ``[B, 3, T, H, W]`` in [-1, 1]."""
        raw = denormalize_latents(self.vae, latents.float()).to(self.vae.dtype)  # the affine map in float32
        return self.vae.decode(raw).sample.clamp(-1, 1)

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        c = self.vae.config
        t_down = 2 ** sum(c.temperal_downsample)
        s_down = 2 ** (len(c.dim_mult) - 1)
        if (num_frames - 1) % t_down or height % s_down or width % s_down:
            raise ValueError(
                f"video shape {num_frames}x{height}x{width} does not fit the VAE: num_frames must be "
                f"1 + {t_down}k and height/width multiples of {s_down}"
            )
        return (batch, c.z_dim, (num_frames - 1) // t_down + 1, height // s_down, width // s_down)


def _model_index(gen: Generator, transformer=None) -> dict:
    import diffusers

    return {
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": [
            "transformers",
            type(gen.text_encoder).__name__
            if gen.text_encoder is not None
            else _source_class(gen, "text_encoder", "UMT5EncoderModel"),
        ],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", type(transformer or gen.transformer).__name__],  # the one saved
        "vae": ["diffusers", type(gen.vae).__name__],
    }


def _source_class(gen: Generator, part: str, default: str) -> str:
    """The class name ``model_index.json`` of the generator's source directory gives ``part`` (for parts not loaded)."""
    index = Path(gen.source) / "model_index.json" if gen.source else None
    if index is not None and index.is_file():
        entry = json.loads(index.read_text()).get(part)
        if isinstance(entry, list) and len(entry) == 2:
            return entry[1]
    return default
