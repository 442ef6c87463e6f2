"""Per-GPU memory planner: what one GPU holds during a training run, by component, before the run starts.

    cfg = load_train_config("mogan", {"device": "cuda"}, preset="full")
    plan = plan_memory(cfg, gpus=8, gpu_mem_gib=80)
    print(format_plan(plan))    # or: motionlab plan --method mogan --preset full --gpus 8 --gpu-mem 80

Everything comes from the model configs; no weights are read.

- Resident state: every network is built on the ``meta`` device to count its parameters exactly. Trained networks
  hold float32 weights, two float32 AdamW states (and an EMA copy where the method keeps one); frozen DiTs (the
  teacher, DF-DPO's reference) float32 weights; the VAE and the flow estimator float32, replicated. Under
  ``parallel=fsdp`` over more than one GPU the DiTs, trained and frozen, are sharded 1/N as ``trainer/parallel.py``
  shards them; under DDP everything is replicated and each trained network has gradient buckets of its size.
- Per optimizer update (a *phase*: MoGAN's generator GAN update, its discriminator update, ...): the updated
  network's gradients (unsharded float32 while FSDP accumulates micro-steps), the FSDP units gathered in bf16 (two
  per network in use, plus one unit's gradient) or, without sharding, the bf16 copies autocast keeps of float32
  weights in the graph, the optimizer step's temporaries, and activations.
- Activations: each forward a phase runs is run once on the ``meta`` device at batch 1 under a dispatch mode that
  follows every tensor storage from allocation to release (``trace``): bytes alive after the forward (the graph it
  keeps), the peak during it and the peak during its backward. Meta tensors allocate nothing, so full-scale shapes
  cost nothing but the ops' bookkeeping; structures of repeated units (DiT blocks, window chunks, frame pairs, RAFT
  iterations) are traced at one and two units and extrapolated (their memory is affine in the count). Attention is
  traced as the fused kernels run it on GPU and CPU (q, k, v, the output and the log-sum-exp kept; never the score
  matrix). ``_activation_peak`` chains a phase's forwards in the method's order, each scaled by its micro-batch:
  no-grad forwards peak on top of the graphs held before them, and backward runs the graphs in reverse.

The total is the resident state plus the largest phase. A safety margin (``MARGIN_FIXED_GIB`` for the CUDA context,
NCCL and cuBLAS workspaces, plus ``MARGIN_FRACTION`` of the total for allocator fragmentation) is added before
comparing with the GPU's memory. When it does not fit, ``suggest`` re-plans with one switch at a time and then with
switches combined (``_candidates``) and reports the first change that fits. Traces are kept in a file
(``$MOTIONLAB_PLAN_CACHE``), so a second plan of the same shapes takes seconds.

Not modelled: the text encoder (training reads preprocessed embeddings), data batches and caches on the device,
autocast's casts inside RAFT (traced in float32, its weights' dtype), NCCL buffers beyond the fixed margin.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import torchvision
from diffusers.models.autoencoders import autoencoder_kl_wan
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers import transformer_wan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from trainer.config import ConfigError, TrainConfig, micro_batch
from trainer.flow import FlowEstimator, horn_schunck, raft
from trainer.flow.horn_schunck import HornSchunckFlow
from trainer.flow.raft import RaftFlow, raft_min_size
from trainer.losses import gan
from trainer.losses.gan import flow_tensor
from trainer.models import discriminators, vae_window, wan_features
from trainer.models.adapter import lora_parameter_count
from trainer.models.discriminators import FeatureDiscriminator, MotionDiscriminator
from trainer.models.generator import (
    FULL_SAMPLING,
    FULL_TRANSFORMER,
    FULL_VAE,
    TINY_SAMPLING,
    TINY_TRANSFORMER,
    TINY_VAE,
)
from trainer.models.vae_window import decode_window, normalize_latents
from trainer.zoo import resolve_checkpoint

GIB = 2**30
PLANNED_METHODS = ("sft", "dmd", "mogan", "vdot", "dfdpo")
MAX_GPUS = 4096
MAX_GPU_MEM_GIB = 4096.0
# CUDA context, NCCL and cuBLAS workspaces (fixed) plus allocator fragmentation (a fraction of the total).
MARGIN_FIXED_GIB = 2.0
MARGIN_FRACTION = 0.10
# FSDP2 gathers a unit's parameters before it runs and prefetches the next one: two units per network in use.
GATHERED_UNITS = 2
# Batched log-domain Sinkhorn (trainer/losses/ot.py) keeps about this many I x I float32 matrices per sample alive
# (cost, centred cost, log-kernel / plan and a temporary), I = h * w latent positions.
OT_MATRICES = 5
RAFT_UPDATES = 12  # RaftFlow's default refinement iterations (MoGAN builds it with the defaults)
FLOW_NORM = 0.05  # MotionDiscriminator's default flow scale (fraction of the short side)


class PlanError(ValueError):
    """Bad planner input; ``field`` is the argument at fault (``gpus``, ``gpu_mem_gib``, ``method``...)."""

    def __init__(self, field: str, message: str):
        self.field, self.detail = field, message
        super().__init__(f"{field}: {message}")


# ----------------------------------------------------------------------------------------------------------------
# Tracing on the meta device
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Bytes allocated by one traced forward (+ backward). ``held``: alive after forward (the graph and the output);
    ``fwd_peak`` / ``bwd_peak``: the most alive during forward / during backward (which starts from ``held``)."""

    held: int
    fwd_peak: int
    bwd_peak: int
    out: int


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage allocated inside the mode that is still alive, and their peak.

    Storages that existed before (weights, inputs) are not allocations, nor are views of them (``weight.t()`` saved
    for backward): an op's output is counted only if its storage is none of its inputs'.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._foreign: set[int] = set()

    def _note_input(self, x) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = storage._cdata
            if key not in self._sizes and key not in self._foreign:
                self._foreign.add(key)
                weakref.finalize(storage, self._foreign.discard, key)

    def _track(self, x) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = storage._cdata
            if key not in self._sizes and key not in self._foreign:
                n = storage.nbytes()
                self._sizes[key] = n
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tree_map(self._note_input, (args, kwargs))
        out = func(*args, **(kwargs or {}))
        tree_map(self._track, out)
        return out


class _FusedAttention(torch.autograd.Function):
    """Stand-in for fused SDPA on meta tensors: keeps what flash / memory-efficient kernels keep (q, k, v, output,
    log-sum-exp), where the meta device's reference path would materialize the score matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        # [B, H, N, D] as a view of a [B, N, H, D] buffer, as the fused kernels lay it out: transposing it back to
        # tokens x channels is then free
        out = q.new_empty(*q.shape[:-3], q.shape[-2], q.shape[-3], v.shape[-1]).transpose(-2, -3)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FusedAttention.apply(query, key, value)


def trace(run: Callable[[], torch.Tensor], trainable: list[nn.Parameter] = ()) -> Trace:
    """Run ``run`` (a forward on meta tensors; its inputs made beforehand are not counted) and, if its output needs
    a gradient, a backward from it. Gradients of ``trainable`` are dropped as they arrive: the planner counts them
    as resident per network, as FSDP hands them to the reduce-scatter."""
    handles = [p.register_post_accumulate_grad_hook(_drop_grad) for p in trainable]
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        with _LiveBytes() as live:
            out = run()
            held, fwd_peak, out_bytes = live.live, live.peak, out.untyped_storage().nbytes()
            bwd_peak = held
            if out.requires_grad:
                live.peak = live.live
                out.backward(torch.empty_like(out))
                bwd_peak = live.peak
            del out
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    return Trace(held, fwd_peak, bwd_peak, out_bytes)


def _drop_grad(p: nn.Parameter) -> None:
    p.grad = None


# Traces persist in a JSON file (default ~/.cache/motionlab/plan-traces.json; "off" disables it), so that a second
# ``motionlab plan`` reuses them. The file is tied to a fingerprint of the library versions and of the sources that
# decide a trace; any change to them starts it afresh.
PLAN_CACHE_ENV = "MOTIONLAB_PLAN_CACHE"
_TRACED_SOURCES = (
    vae_window,
    discriminators,
    wan_features,
    horn_schunck,
    raft,
    gan,
    transformer_wan,
    autoencoder_kl_wan,
)
_store: dict[str, dict] = {}


def trace_cache_path() -> Path | None:
    raw = os.environ.get(PLAN_CACHE_ENV)
    if raw is None:
        return Path.home() / ".cache" / "motionlab" / "plan-traces.json"
    return None if raw in ("", "off") else Path(raw)


@functools.cache
def _fingerprint() -> str:
    h = hashlib.sha256(f"{torch.__version__} {diffusers.__version__} {torchvision.__version__}".encode())
    for mod in (sys.modules[__name__], sys.modules[FlowEstimator.__module__], *_TRACED_SOURCES):
        h.update(Path(inspect.getsourcefile(mod)).read_bytes())
    return h.hexdigest()[:16]


def _read_store(path: Path) -> dict:
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return blob.get("traces", {}) if isinstance(blob, dict) and blob.get("fingerprint") == _fingerprint() else {}


def _persistent(fn: Callable[..., Trace]) -> Callable[..., Trace]:
    """``fn`` memoised in the process and, for meta-device traces, in the trace file."""
    memo = functools.cache(fn)

    @functools.wraps(fn)
    def cached(*args, **kwargs) -> Trace:
        path = trace_cache_path()
        if path is None or kwargs.get("device", "meta") != "meta":
            return memo(*args, **kwargs)
        store = _store.setdefault(str(path), _read_store(path))
        key = f"{fn.__name__}{args!r}{sorted(kwargs.items())!r}"
        if key not in store:
            store[key] = dataclasses.astuple(memo(*args, **kwargs))
            try:  # merge with what other processes wrote meanwhile; a lost entry is only traced again
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                tmp.write_text(json.dumps({"fingerprint": _fingerprint(), "traces": {**_read_store(path), **store}}))
                os.replace(tmp, path)
            except OSError:
                pass
        return Trace(*store[key])

    cached.cache_clear = memo.cache_clear
    return cached


def extrapolate(raw: Callable[[int], Trace], n: int, lo: int = 1) -> Trace:
    """``raw(n)`` for a structure of ``n`` repeated units (blocks, chunks, frame pairs) from ``raw(lo)`` and
    ``raw(lo + 1)``: its memory is affine in ``n``, and two short traces cost a fraction of a long one."""
    if n <= lo + 1:
        return raw(n)
    a, b = dataclasses.astuple(raw(lo)), dataclasses.astuple(raw(lo + 1))
    return Trace(*(int(x + (n - lo) * (y - x)) for x, y in zip(a, b)))


def _key(d: dict) -> tuple:
    """A model config as a hashable cache key (lists become tuples; ``_config`` turns them back)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()))


def _config(key: tuple) -> dict:
    return {k: (v if k == "patch_size" else list(v)) if isinstance(v, tuple) else v for k, v in key}


def _dit(cfg_key: tuple, num_layers: int, dtype: torch.dtype, device: str = "meta") -> WanTransformer3DModel:
    cfg = _config(cfg_key)
    cfg["num_layers"] = num_layers
    with torch.device(device):
        model = WanTransformer3DModel(**cfg)
    return nn.Module.to(model, dtype)  # every parameter in ``dtype``, as FSDP's bf16 compute copy is


@functools.cache
def _vae(cfg_key: tuple, dtype: torch.dtype, device: str = "meta") -> AutoencoderKLWan:
    with torch.device(device):
        vae = AutoencoderKLWan(**_config(cfg_key))
    return nn.Module.to(vae, dtype).requires_grad_(False)


def _input(shape: tuple[int, ...], device: str, dtype: torch.dtype = torch.float32, grad: bool = False):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def _set_mode(module: nn.Module, mode: str) -> list[nn.Parameter]:
    """``train``: weights get gradients; ``input``: frozen weights, gradient to the input; ``none``: no graph."""
    module.requires_grad_(mode == "train")
    return list(module.parameters()) if mode == "train" else []


def _run(mode: str, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run():
        with torch.set_grad_enabled(mode != "none"):
            return fn()

    return run


# Every trace_* runs one forward at batch 1 (the DiTs: ``batch``) on ``device`` ("meta"; the tests run the same on
# "cpu" to check it).


@_persistent
def trace_dit(
    cfg_key: tuple,
    num_layers: int,
    latent: tuple[int, ...],
    text_len: int,
    dtype: torch.dtype,
    mode: str,
    checkpointing: bool,
    batch: int = 1,
    device: str = "meta",
) -> Trace:
    """A Wan DiT forward (``latent`` = C, F, h, w) as ``predict_velocity`` calls it, then ``x0 = x - sigma v``."""
    model = _dit(cfg_key, num_layers, dtype, device)
    if checkpointing:
        model.enable_gradient_checkpointing()
    trainable = _set_mode(model, mode)
    x = _input((batch, *latent), device, dtype, mode == "input")
    t = torch.full((batch,), 500.0, device=device)
    text = _input((batch, text_len, model.config.text_dim), device, dtype)
    return trace(_run(mode, lambda: x - 0.5 * model(x, t, text, return_dict=False)[0]), trainable)


@_persistent
def trace_decode_window(
    cfg_key: tuple,
    latent: tuple[int, ...],
    length: int,
    dtype: torch.dtype,
    mode: str,
    checkpointing: bool,
    device: str = "meta",
) -> Trace:
    """``decode_window`` of ``length`` chunks placed after chunk 0 (a window at chunk 0 decodes 3 frames less)."""
    vae = _vae(cfg_key, dtype, device)
    start = min(1, latent[1] - length)
    z = _input((1, *latent), device, dtype, mode == "input")
    return trace(_run(mode, lambda: decode_window(vae, z, start, length, checkpoint=checkpointing)[0]))


@_persistent
def trace_encode(
    cfg_key: tuple,
    frames: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    mode: str,
    flow_norm: float | None = None,
    device: str = "meta",
) -> Trace:
    """The VAE encoder on ``frames`` frames (``Generator.encode_video``, posterior mode, normalised). With
    ``flow_norm`` the input is a flow tensor ``[1, T, 3, H, W]`` scaled and laid out as the discriminator does."""
    vae = _vae(cfg_key, dtype, device)
    if flow_norm is None:
        x = _input((1, 3, frames, height, width), device, dtype, mode == "input")
        prep = lambda: x
    else:
        x = _input((1, frames, 3, height, width), device, grad=mode == "input")
        prep = lambda: (x / (flow_norm * min(height, width))).permute(0, 2, 1, 3, 4).to(dtype)
    return trace(_run(mode, lambda: normalize_latents(vae, vae.encode(prep()).latent_dist.mode())))


def _flow(name: str, updates: int = RAFT_UPDATES, device: str = "meta") -> FlowEstimator:
    if name == "horn_schunck":
        return HornSchunckFlow()
    from torchvision.models.optical_flow import raft_large, raft_small

    with torch.device(device):
        model = (raft_large if name == "raft_large" else raft_small)(weights=None, progress=False)
    # RaftFlow's own __init__ loads a weights file; the planner needs the module only (same forward).
    est = RaftFlow.__new__(RaftFlow)
    FlowEstimator.__init__(est)
    est.variant, est.model, est.num_flow_updates, est.pair_chunk = name, model.eval(), updates, None
    est.min_size = raft_min_size(model)
    return est.freeze()


@_persistent
def trace_flow(
    name: str, frames: int, height: int, width: int, mode: str, updates: int = RAFT_UPDATES, device: str = "meta"
) -> Trace:
    """The flow estimator on a ``frames``-frame clip, then ``flow_tensor`` (what MoGAN's discriminator reads).
    Both estimators compute in float32 (RAFT's weights are float32, Horn–Schunck upcasts). ``updates``: RAFT's
    refinement iterations."""
    est = _flow(name, updates, device)
    video = _input((1, frames, 3, height, width), device, grad=mode == "input")
    return trace(_run(mode, lambda: flow_tensor(est(video))))


@_persistent
def trace_motion_disc(
    cfg_key: tuple,
    blocks: int,
    heads: tuple[int, ...],
    text_len: int,
    kind: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    mode: str,
    checkpointing: bool,
    device: str = "meta",
) -> Trace:
    """MoGAN's discriminator on one input: ``kind`` "latent" (encoded flow or video latents ``[C, F, h, w]``) or
    "patch" (a flow tensor ``[T, 3, H, W]`` through its own patch embedding)."""
    disc = _motion_disc(cfg_key, blocks, heads, text_len, kind, dtype, device)
    disc.enable_gradient_checkpointing(checkpointing)
    trainable = _set_mode(disc, mode)
    x = _input((1, *shape), device, dtype, mode == "input")
    return trace(_run(mode, lambda: disc(x)), trainable)


def _motion_disc(
    cfg_key: tuple,
    blocks: int,
    heads: tuple[int, ...],
    text_len: int,
    kind: str,
    dtype: torch.dtype,
    device: str = "meta",
) -> MotionDiscriminator:
    source = _dit(cfg_key, blocks, dtype, device)
    prompt = _input((text_len, source.config.text_dim), device, dtype)
    disc = MotionDiscriminator.from_transformer(
        source,
        num_blocks=blocks,
        head_blocks=heads,
        prompt_embeds=prompt,
        input_kind="flow" if kind == "patch" else "latent",
        flow_encoder="patch",
    )
    return nn.Module.to(disc, dtype)


@_persistent
def trace_feature_disc(
    cfg_key: tuple,
    num_layers: int,
    block_ids: tuple[int, ...],
    head_hidden: int | None,
    latent: tuple[int, ...],
    text_len: int,
    dtype: torch.dtype,
    mode: str,
    checkpointing: bool,
    batch: int = 1,
    device: str = "meta",
) -> Trace:
    """VDOT's register-token discriminator on the fake score's blocks. ``mode``: "input" (generator GAN update: both
    frozen, gradient to the noisy latents), "heads" (discriminator update: only the heads keep a graph), "none"."""
    fake = _dit(cfg_key, num_layers, dtype, device)
    if checkpointing:
        fake.enable_gradient_checkpointing()
    fake.requires_grad_(False)
    disc = nn.Module.to(FeatureDiscriminator.from_transformer(fake, block_ids, head_hidden=head_hidden), dtype)
    trainable = _set_mode(disc, "train" if mode == "heads" else "none")
    x = _input((batch, *latent), device, dtype, mode == "input")
    t = torch.full((batch,), 500.0, device=device)
    text = _input((batch, text_len, fake.config.text_dim), device, dtype)
    return trace(_run("none" if mode == "none" else "train", lambda: disc(fake, x, t, text)), trainable)


# ----------------------------------------------------------------------------------------------------------------
# Networks and their parameter counts
# ----------------------------------------------------------------------------------------------------------------


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def dit_params(cfg_key: tuple, num_layers: int) -> tuple[int, int]:
    """(parameters, parameters of the largest FSDP unit) of a Wan DiT: units are each block, the patch embedding,
    the condition embedder and the rest (trainer/parallel.py)."""
    model = _dit(cfg_key, num_layers, torch.float32)
    units = [*model.blocks, model.patch_embedding, model.condition_embedder]
    rest = _count(model) - sum(_count(u) for u in units)
    return _count(model), max([_count(u) for u in units] + [rest])


@functools.cache
def motion_disc_params(cfg_key: tuple, blocks: int, heads: tuple[int, ...], text_len: int, kind: str) -> int:
    return _count(_motion_disc(cfg_key, blocks, heads, text_len, kind, torch.float32))


@functools.cache
def dit_lora_params(cfg_key: tuple, num_layers: int, rank: int, targets: tuple[str, ...]) -> int:
    """Parameters of a rank-``rank`` LoRA on a Wan DiT's ``targets`` (what ``trainer/lora.py`` trains)."""
    return lora_parameter_count(_dit(cfg_key, num_layers, torch.float32), rank, targets)


@functools.cache
def motion_disc_lora_params(
    cfg_key: tuple, blocks: int, heads: tuple[int, ...], text_len: int, kind: str, rank: int, targets: tuple[str, ...]
) -> int:
    """Trainable parameters of MoGAN's discriminator with a LoRA trunk: the adapter, the heads and classifier, and a
    ``patch`` flow encoder (new weights)."""
    disc = _motion_disc(cfg_key, blocks, heads, text_len, kind, torch.float32)
    fresh = _count(disc.heads) + _count(disc.final) + (_count(disc.trunk.patch_embedding) if kind == "patch" else 0)
    return fresh + lora_parameter_count(disc.trunk, rank, targets)


@functools.cache
def feature_disc_params(cfg_key: tuple, block_ids: tuple[int, ...], head_hidden: int | None) -> int:
    fake = _dit(cfg_key, max(block_ids) + 1, torch.float32)
    with torch.device("meta"):
        return _count(FeatureDiscriminator.from_transformer(fake, block_ids, head_hidden=head_hidden))


@functools.cache
def vae_params(cfg_key: tuple) -> int:
    return _count(_vae(cfg_key, torch.float32))


@functools.cache
def flow_params(name: str) -> int:
    return _count(_flow(name))


@dataclass
class Network:
    """A network resident during training. ``role``: "trained" (weights, gradients, AdamW), "frozen" (a DiT
    sharded like the trained ones under fsdp) or "helper" (VAE, flow estimator: replicated)."""

    name: str
    role: str
    params: int  # trained: the trainable parameters (weights, gradients, AdamW states, EMA)
    unit_params: int = 0  # largest FSDP unit (DiTs)
    ema: bool = False
    label: str = ""
    compute: int = 0  # parameters its forward runs when more than ``params`` (a LoRA network: its frozen base too)


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One forward of a phase: ``graph`` keeps its graph for the phase's backward; a no-grad forward may keep its
    output (``keep``: e.g. the real clips' flow, read by every discriminator pass)."""

    label: str
    trace: Trace
    batch: int
    graph: bool
    keep: bool = False
    extra: int = 0  # bytes per sample beside the trace (e.g. the OT plan's matrices)
    scaled: bool = False  # ``trace`` is for the whole batch already (else: for one sample)


@dataclass
class Phase:
    name: str
    updated: str  # the network this optimizer update trains
    steps: list[Step]
    in_use: tuple[str, ...]  # networks that compute in this phase (their weights are gathered under fsdp)
    in_graph: tuple[str, ...]  # networks whose weights are in the graph (autocast keeps bf16 copies under ddp)


@dataclass
class Row:
    component: str
    bytes: float
    note: str = ""
    group: str = "activations"  # weights | optimizer | gradients | activations (with transient weight copies)

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass
class PhasePlan:
    name: str
    rows: list[Row]
    activations: list[Row]
    activation_peak: float
    total: float  # the phase's own bytes (beside the resident state)


@dataclass
class Suggestion:
    change: dict  # dotted config key (or "gpus") -> value
    total_gib: float
    needed_gib: float

    def flags(self) -> str:
        return " ".join(f"--gpus {v}" if k == "gpus" else f"--set {k}={_yaml(v)}" for k, v in self.change.items())


@dataclass
class Plan:
    method: str
    preset: str
    gpus: int
    gpu_mem_gib: float
    parallel: str
    sharded: bool
    precision: str
    gradient_checkpointing: bool
    micro_batch: int
    grad_accum: int
    batch_size: int
    shape: dict
    resident: list[Row]
    phases: list[PhasePlan]
    peak: PhasePlan
    total: float
    margin: float
    notes: list[str] = field(default_factory=list)
    suggestion: Suggestion | None = None
    searched: bool = False

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    @property
    def needed_gib(self) -> float:
        return (self.total + self.margin) / GIB

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.gpu_mem_gib

    def groups(self) -> dict[str, float]:
        """GiB by group: weights (trained and frozen), optimizer (AdamW states, EMA), gradients (with DDP buckets),
        activations (the peak phase's, with its gathered / cast weight copies and step temporaries)."""
        out = {"weights": 0.0, "optimizer": 0.0, "gradients": 0.0, "activations": 0.0}
        for r in self.resident + self.peak.rows + self.peak.activations:
            out[r.group] += r.gib
        return out


def _yaml(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _precision(cfg: TrainConfig, device: str) -> str:
    mode = cfg.mixed_precision
    if mode == "auto":
        mode = "bf16" if device == "cuda" else "no"
    return mode


def _check_inputs(cfg: TrainConfig, gpus, gpu_mem_gib, device: str) -> None:
    if cfg.method not in PLANNED_METHODS:
        raise PlanError("method", f"{cfg.method!r} cannot be planned; choose one of {list(PLANNED_METHODS)}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS:
        raise PlanError("gpus", f"must be an integer in [1, {MAX_GPUS}], got {gpus!r}")
    if (
        isinstance(gpu_mem_gib, bool)
        or not isinstance(gpu_mem_gib, (int, float))
        or not 0 < gpu_mem_gib <= MAX_GPU_MEM_GIB
    ):
        raise PlanError("gpu_mem_gib", f"must be a number of GiB in (0, {MAX_GPU_MEM_GIB:g}], got {gpu_mem_gib!r}")
    if device not in ("cuda", "cpu"):
        raise PlanError("device", f"must be 'cuda' or 'cpu', got {device!r}")


def plan_memory(
    cfg: TrainConfig, gpus: int, gpu_mem_gib: float, *, device: str = "cuda", suggest_fix: bool = True
) -> Plan:
    """Per-GPU memory of ``cfg`` trained on ``gpus`` devices of ``gpu_mem_gib`` GiB each (see the module doc).

    ``device="cpu"`` plans one CPU process as the loop runs it there (float32, no fused optimizer step).
    Raises ``PlanError`` / ``ConfigError`` naming the argument or config field at fault.
    """
    _check_inputs(cfg, gpus, gpu_mem_gib, device)
    plan = _plan(cfg, gpus, gpu_mem_gib, device)
    if suggest_fix and not plan.fits:
        plan.suggestion = suggest(cfg, gpus, gpu_mem_gib, device)
        plan.searched = True
    return plan


def _plan(cfg: TrainConfig, gpus: int, gpu_mem_gib: float, device: str) -> Plan:
    planner = _Planner(cfg, gpus, device)
    nets = planner.networks()
    phases = planner.phases()
    sharded, precision = planner.sharded, planner.precision
    resident = _resident_rows(nets, sharded, gpus)
    phase_plans = [_phase_plan(p, nets, sharded, gpus, precision, device, cfg.grad_accum) for p in phases]
    peak = max(phase_plans, key=lambda p: p.total)
    total = sum(r.bytes for r in resident) + peak.total
    margin = MARGIN_FIXED_GIB * GIB + MARGIN_FRACTION * total if device == "cuda" else 0.0
    return Plan(
        cfg.method,
        cfg.preset,
        gpus,
        float(gpu_mem_gib),
        cfg.parallel,
        sharded,
        precision,
        cfg.gradient_checkpointing,
        planner.mb,
        cfg.grad_accum,
        cfg.batch_size,
        planner.shape,
        resident,
        phase_plans,
        peak,
        total,
        margin,
        planner.notes,
    )


def _checkpoint_dit_config(cfg: TrainConfig) -> dict | None:
    """The DiT config of the checkpoint the run starts from (``init``, else ``teacher``) where it is on disk: a
    rehearsal at reduced depth plans its own depth, a run from the real weights plans what they hold."""
    for ref in (cfg.init, cfg.teacher):
        if not ref:
            continue
        try:
            path = resolve_checkpoint(ref) / "transformer" / "config.json"
        except (FileNotFoundError, ValueError):
            continue
        if path.is_file():
            return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    return None


def networks(cfg: TrainConfig) -> dict[str, Network]:
    """The networks resident during training of ``cfg``, with exact parameter counts (no activations traced)."""
    _check_inputs(cfg, 1, 1.0, "cuda")
    return _Planner(cfg, 1, "cuda").networks()


class _Planner:
    """One config's shapes and its phases: which forwards each optimizer update runs, in order, at which batch."""

    def __init__(self, cfg: TrainConfig, gpus: int, device: str):
        self.cfg, self.m, self.d = cfg, cfg.method_cfg, cfg.data
        full = cfg.preset == "full"
        self.dit_key = _key(_checkpoint_dit_config(cfg) or (FULL_TRANSFORMER if full else TINY_TRANSFORMER))
        self.vae_key = _key(FULL_VAE if full else TINY_VAE)
        self.text_len = (FULL_SAMPLING if full else TINY_SAMPLING).max_text_len
        self.depth = dict(self.dit_key)["num_layers"]
        self.precision = _precision(cfg, device)
        self.act = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.ckpt = cfg.gradient_checkpointing
        self.sharded = cfg.parallel == "fsdp" and gpus > 1  # one rank trains unwrapped (trainer/parallel.py)
        self.mb = micro_batch(cfg.batch_size, gpus, cfg.grad_accum)
        self.gpus = gpus
        self.notes: list[str] = []
        # latent shape: the VAE's compression from its config, the DiT's patch from its config
        vae_cfg = _vae(self.vae_key, torch.float32).config
        self.r_t, r_s = 2 ** sum(vae_cfg.temperal_downsample), 2 ** (len(vae_cfg.dim_mult) - 1)
        d = self.d
        if (d.num_frames - 1) % self.r_t or d.height % r_s or d.width % r_s:
            raise ConfigError(
                "data.num_frames",
                f"video shape {d.num_frames}x{d.height}x{d.width} does not fit the "
                f"VAE: num_frames must be 1 + {self.r_t}k and height/width "
                f"multiples of {r_s}",
            )
        k = (d.num_frames - 1) // self.r_t + 1
        self.latent = (vae_cfg.z_dim, k, d.height // r_s, d.width // r_s)
        p_t, p_h, p_w = dict(self.dit_key)["patch_size"]
        self.shape = {
            "latent": self.latent,
            "tokens": (k // p_t) * (self.latent[2] // p_h) * (self.latent[3] // p_w),
            "frames": d.num_frames,
            "height": d.height,
            "width": d.width,
            "text_len": self.text_len,
        }
        self.steps_k = len(getattr(self.m, "timesteps", [])) or 1
        if cfg.method == "mogan":
            self._check_mogan()

    # -- networks ----------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, Network]:
        cfg, m = self.cfg, self.m
        total, unit = dit_params(self.dit_key, self.depth)
        ema = cfg.ema_decay > 0
        roles = {
            "sft": [("transformer", "trained", ema)],
            "dfdpo": [("policy", "trained", ema), ("reference", "frozen", False)],
        }.get(
            cfg.method, [("generator", "trained", ema), ("fake_score", "trained", False), ("teacher", "frozen", False)]
        )
        nets = {name: Network(name, role, total, unit, e) for name, role, e in roles}
        if cfg.method == "mogan":
            if not m.use_dmd:  # the ablation trains no fake score
                del nets["fake_score"]
            heads = tuple(int(b) for b in m.head_blocks)
            nets["disc"] = Network(
                "disc",
                "trained",
                motion_disc_params(self.dit_key, m.disc_blocks, heads, self.text_len, self.disc_kind),
                dit_params(self.dit_key, m.disc_blocks)[1],
            )
        if cfg.method == "vdot" and m.use_gan:
            nets["disc"] = Network(
                "disc", "trained", feature_disc_params(self.dit_key, self.vdot_blocks(), m.disc_head_hidden)
            )
        if cfg.lora.enabled:
            self._lora_networks(nets, total, unit)
        nets["vae"] = Network("vae", "helper", vae_params(self.vae_key), label="VAE")
        if cfg.method == "mogan" and m.disc_space == "flow":
            nets["flow"] = Network(
                "flow", "helper", flow_params(m.flow_estimator), label=f"flow estimator {m.flow_estimator}"
            )
        return nets

    # -- traced forwards ---------------------------------------------------------------------------------------
    def dit(self, mode: str, n: int, label: str, graph: bool) -> Step:
        """Traced at 1-2 blocks x batch 1-2: a DiT forward also keeps per-call tensors (rope tables, the time
        embedding) that do not grow with the batch."""

        def raw(layers: int, batch: int) -> Trace:
            return trace_dit(self.dit_key, layers, self.latent, self.text_len, self.act, mode, self.ckpt, batch)

        return Step(
            label, extrapolate(lambda b: extrapolate(lambda d: raw(d, b), self.depth), n), n, graph, scaled=True
        )

    def encode(self, mode: str, frames: int, label: str, n: int, graph: bool, flow_norm: float | None = None) -> Step:
        """The VAE encoder on ``frames`` = 1 + r_t j frames, from traces at j = 1, 2."""
        d = self.d
        raw = lambda j: trace_encode(self.vae_key, 1 + self.r_t * j, d.height, d.width, self.act, mode, flow_norm)
        return Step(label, extrapolate(raw, (frames - 1) // self.r_t), n, graph)

    def sample_steps(self, n: int) -> list[Step]:
        """The no-grad distilled steps before the one with gradient (backward simulation at its longest)."""
        if self.steps_k < 2:
            return []
        return [self.dit("none", n, "generator: earlier distilled steps (no grad)", False)]

    # -- phases --------------------------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        mb, method = self.mb, self.cfg.method
        if method == "sft":
            return [
                Phase(
                    "transformer update",
                    "transformer",
                    [self.dit("train", mb, "transformer", True)],
                    ("transformer",),
                    ("transformer",),
                )
            ]
        if method == "dfdpo":
            return [
                Phase(
                    "policy update",
                    "policy",
                    [
                        self.encode("none", self.d.num_frames, "VAE encode of the lose clips (no grad)", mb, False),
                        self.dit("train", 2 * mb, "policy on win + lose", True),
                        self.dit("none", 2 * mb, "reference on win + lose (no grad)", False),
                    ],
                    ("policy", "reference"),
                    ("policy",),
                )
            ]
        if method == "dmd":
            return self.dmd_phases()
        if method == "vdot":
            return self.vdot_phases()
        return self.mogan_phases()

    def dmd_phases(self, otd: bool = False) -> list[Phase]:
        mb = self.mb
        steps = self.sample_steps(mb) + [
            self.dit("train", mb, "generator: distilled step with gradient", True),
            self.dit("none", 2 * mb, "teacher with CFG (no grad)", False),
            self.dit("none", mb, "fake score (no grad)", False),
        ]
        if otd:
            i = self.latent[2] * self.latent[3]
            steps.append(Step("OT plan (no grad)", Trace(0, 0, 0, 0), mb, False, extra=OT_MATRICES * i * i * 4))
        return [
            Phase(
                "generator OTD + DMD update" if otd else "generator DMD update",
                "generator",
                steps,
                ("generator", "teacher", "fake_score"),
                ("generator",),
            ),
            Phase(
                "fake-score update",
                "fake_score",
                self.sample_steps(mb)
                + [
                    self.dit("none", mb, "generator sample (no grad)", False),
                    self.dit("train", mb, "fake score", True),
                ],
                ("generator", "fake_score"),
                ("fake_score",),
            ),
        ]

    def vdot_blocks(self) -> tuple[int, ...]:
        blocks = tuple(int(b) for b in self.m.disc_blocks)
        if not blocks or min(blocks) < 0 or max(blocks) >= self.depth:
            raise ConfigError(
                "method_cfg.disc_blocks",
                f"need 0-based block indices below the fake score's "
                f"{self.depth} blocks, got {list(self.m.disc_blocks)}",
            )
        return blocks

    def vdot_phases(self) -> list[Phase]:
        m, mb = self.m, self.mb
        phases = self.dmd_phases(otd=m.use_otd)
        if not m.use_gan:
            return phases
        blocks = self.vdot_blocks()

        def fdisc(mode: str, n: int, label: str, graph: bool) -> Step:
            # the fake score runs up to the deepest register block: traced at 1-2 blocks x batch 1-2
            def raw(depth: int, batch: int) -> Trace:
                return trace_feature_disc(
                    self.dit_key,
                    depth,
                    (depth - 1,) * len(blocks),
                    m.disc_head_hidden,
                    self.latent,
                    self.text_len,
                    self.act,
                    mode,
                    self.ckpt,
                    batch,
                )

            trace_n = extrapolate(lambda b: extrapolate(lambda d: raw(d, b), max(blocks) + 1), n)
            return Step(label, trace_n, n, graph, scaled=True)

        return phases + [
            Phase(
                "generator GAN update",
                "generator",
                self.sample_steps(mb)
                + [
                    self.dit("train", mb, "generator: distilled step with gradient", True),
                    fdisc("input", mb, f"fake score blocks to {max(blocks)} + register tokens", True),
                    fdisc("none", mb, "the same on the real clips (no grad)", False),
                ],
                ("generator", "fake_score", "disc"),
                ("generator", "fake_score", "disc"),
            ),
            Phase(
                "discriminator update",
                "disc",
                self.sample_steps(mb)
                + [
                    self.dit("none", mb, "generator sample (no grad)", False),
                    fdisc("heads", 2 * mb, "fake score blocks (no grad) + register tokens", True),
                ],
                ("generator", "fake_score", "disc"),
                ("disc",),
            ),
        ]

    def _lora_networks(self, nets: dict[str, Network], total: int, unit: int) -> None:
        """LoRA (``trainer/lora.py``): a LoRA network's weights, gradients, AdamW states and EMA are its adapter's
        (plus the discriminator's new heads); its frozen base is shared with the teacher or DF-DPO's reference when
        it starts from the same weights (a generator without ``init``, a fake score, the discriminator's trunk, the
        policy), else held once more, frozen. The rank-r intermediates of the adapters are not traced."""
        cfg, m, lora = self.cfg, self.m, self.cfg.lora
        targets = tuple(lora.target_modules)
        product = {"sft": "transformer", "dfdpo": "policy"}.get(cfg.method, "generator")
        names = [product]
        if lora.fake_score == "lora" and "fake_score" in nets:
            names.append("fake_score")
        if lora.disc == "lora" and cfg.method == "mogan":
            names.append("disc")
        adapter = dit_lora_params(self.dit_key, self.depth, lora.rank, targets)
        for name in names:
            n = nets[name]
            if name == "disc":
                heads = tuple(int(b) for b in m.head_blocks)
                params = motion_disc_lora_params(
                    self.dit_key, m.disc_blocks, heads, self.text_len, self.disc_kind, lora.rank, targets
                )
                compute, shared = (
                    n.params
                    + lora_parameter_count(_dit(self.dit_key, m.disc_blocks, torch.float32), lora.rank, targets),
                    True,
                )
            else:
                params, compute = adapter, total + adapter
                # a generator from another init, and SFT's transformer, keep their own frozen base; a fake score
                # continued from init's export too (counted so, whether or not the export kept one)
                shared = cfg.method == "dfdpo" or (cfg.method != "sft" and not cfg.init)
            nets[name] = dataclasses.replace(
                n, params=params, unit_params=0, compute=compute, label=f"{name} (LoRA r={lora.rank})"
            )
            if not shared:
                nets[f"{name}_base"] = Network(f"{name}_base", "frozen", total, unit, label=f"{name} LoRA base")
        self.notes.append(
            f"LoRA r={lora.rank} on {list(targets)}: {', '.join(names)} train "
            f"{', '.join(f'{nets[n].params / 1e6:,.2f}M' for n in names)} parameters"
        )

    # -- MoGAN ----------------------------------------------------------------------------------------------------
    @property
    def disc_kind(self) -> str:
        """What MoGAN's D trunk reads: "latent" (the flow encoded by the VAE, or the window's latents) or "patch"."""
        return "patch" if self.m.disc_space == "flow" and self.m.flow_encoder == "patch" else "latent"

    def _check_mogan(self) -> None:
        m, k = self.m, self.latent[1]
        if m.window_chunks > k:
            raise ConfigError(
                "method_cfg.window_chunks",
                f"{m.window_chunks} exceeds the K={k} latent chunks of a {self.d.num_frames}-frame video",
            )
        if m.disc_space == "flow" and m.window_chunks < 2:
            raise ConfigError(
                "method_cfg.window_chunks", f"a flow window needs at least 2 chunks, got {m.window_chunks}"
            )
        heads = tuple(int(b) for b in m.head_blocks)
        if len(heads) != 3 or min(heads) < 0 or max(heads) >= m.disc_blocks:
            raise ConfigError(
                "method_cfg.head_blocks",
                f"need three 0-based block indices below disc_blocks={m.disc_blocks}, got {list(m.head_blocks)}",
            )

    def mogan_phases(self) -> list[Phase]:
        m, d, mb, latent = self.m, self.d, self.mb, self.latent
        n_disc = (
            micro_batch(m.disc_batch_size, self.gpus, self.cfg.grad_accum, "method_cfg.disc_batch_size")
            if m.disc_batch_size
            else mb
        )
        n_gen = n_disc  # balanced: as many generated motions as real ones per discriminator micro-step
        if n_disc > mb:
            self.notes.append(
                f"discriminator update: the {n_disc} generated motions per micro-step are sampled in "
                f"chunks of {mb} prompts; planned as one batch of {n_disc} (an upper bound)"
            )
        length = m.window_chunks
        frames = 1 + self.r_t * (length - 1)  # the window's frames kept for the flow (1 + 4k)
        flow_space, kind = m.disc_space == "flow", self.disc_kind
        heads = tuple(int(b) for b in m.head_blocks)

        def disc_in(w: int) -> tuple[int, ...]:
            """D's input for a window of ``w`` chunks (one sample)."""
            if kind == "patch":
                return (1 + self.r_t * (w - 1), 3, d.height, d.width)
            return (latent[0], w, latent[2], latent[3])

        def disc(mode: str, n: int, label: str, graph: bool) -> Step:
            # the trunk runs up to its deepest head: traced at 1-2 blocks (heads on the last) x windows of 2-3 chunks
            def raw(b: int, w: int) -> Trace:
                return trace_motion_disc(
                    self.dit_key, b, (b - 1,) * 3, self.text_len, kind, disc_in(w), self.act, mode, self.ckpt
                )

            return Step(
                label, extrapolate(lambda b: extrapolate(lambda w: raw(b, w), length, 2), max(heads) + 1), n, graph
            )

        def flow(mode: str) -> Trace:
            """Affine in frame pairs and (RAFT) in refinement iterations: traced at 1-2 pairs (x 1-2 iterations)."""

            def raw(f: int, u: int = RAFT_UPDATES) -> Trace:
                return trace_flow(m.flow_estimator, f, d.height, d.width, mode, u)

            if m.flow_estimator == "horn_schunck":
                return extrapolate(raw, frames, 2)
            return extrapolate(lambda f: extrapolate(lambda u: raw(f, u), RAFT_UPDATES), frames, 2)

        def motion(mode: str, n: int, who: str) -> list[Step]:
            """Latents -> what D reads: window decode, flow (the VAE encode of the flow is D's first part)."""
            if not flow_space:
                return []
            graph = mode == "input"
            decode = extrapolate(
                lambda w: trace_decode_window(self.vae_key, latent, w, self.act, mode, self.ckpt), length, 2
            )
            return [
                Step(f"{who}: window decode ({length} chunks)", decode, n, graph),
                Step(
                    f"{who}: flow {m.flow_estimator} ({frames - 1} frame pairs)", flow(mode), n, graph, keep=not graph
                ),
            ]

        def encode(mode: str, n: int, label: str, graph: bool) -> list[Step]:
            if not flow_space or kind != "latent":
                return []
            return [self.encode(mode, frames, label, n, graph, flow_norm=FLOW_NORM)]

        phases = self.dmd_phases() if m.use_dmd else []
        gan = self.sample_steps(mb) + [self.dit("train", mb, "generator: distilled step with gradient", True)]
        gan += motion("input", mb, "generated")
        gan += encode("input", mb, "VAE encode of the flow", True)
        gan.append(disc("input", mb, f"discriminator ({max(heads) + 1} blocks)", True))
        in_graph = ("generator", "disc") + (("vae", "flow") if flow_space else ())
        phases.append(Phase("generator GAN update", "generator", gan, ("generator", "disc"), in_graph))

        steps = []
        if flow_space:
            steps.append(Step(f"real clips: flow {m.flow_estimator} (no grad)", flow("none"), n_disc, False, keep=True))
        steps += self.sample_steps(n_gen) + [self.dit("none", n_gen, "generator sample (no grad)", False)]
        steps += motion("none", n_gen, "generated (no grad)")
        passes = [("real", n_disc), ("generated", n_gen)]
        if m.use_r1r2:
            passes += [("real + noise", n_disc), ("generated + noise", n_gen)]
        for who, n in passes:
            steps += encode("none", n, f"VAE encode of the {who} flow (no grad)", False)
            steps.append(disc("train", n, f"discriminator on {who}", True))
        phases.append(Phase("discriminator update", "disc", steps, ("generator", "disc"), ("disc",)))
        return phases


def _shard(n: float, sharded: bool, gpus: int) -> float:
    return n / gpus if sharded else n


def _resident_rows(nets: dict[str, Network], sharded: bool, gpus: int) -> list[Row]:
    rows = []
    how = f"sharded 1/{gpus}" if sharded else "replicated"
    for n in nets.values():
        p = n.params
        name = n.label or n.name
        if n.role == "trained":
            rows.append(
                Row(f"{name}: weights", _shard(4 * p, sharded, gpus), f"{p / 1e6:,.1f}M params, fp32, {how}", "weights")
            )
            rows.append(Row(f"{name}: AdamW states", _shard(8 * p, sharded, gpus), f"2 x fp32, {how}", "optimizer"))
            if n.ema:
                rows.append(Row(f"{name}: EMA", _shard(4 * p, sharded, gpus), f"fp32, {how}", "optimizer"))
            if not sharded and gpus > 1:
                rows.append(Row(f"{name}: DDP gradient buckets", 4 * p, "fp32", "gradients"))
        elif n.role == "frozen":
            rows.append(
                Row(f"{name} (frozen)", _shard(4 * p, sharded, gpus), f"{p / 1e6:,.1f}M params, fp32, {how}", "weights")
            )
        else:
            rows.append(Row(f"{name} (frozen)", 4 * p, f"{p / 1e6:,.1f}M params, fp32, replicated", "weights"))
    return rows


def _phase_plan(
    phase: Phase, nets: dict[str, Network], sharded: bool, gpus: int, precision: str, device: str, grad_accum: int
) -> PhasePlan:
    net = nets[phase.updated]
    p = net.params
    rows = []
    half = precision in ("bf16", "fp16")
    if sharded and grad_accum > 1:
        # micro-steps before the last accumulate unsharded gradients (reduce-dtype float32) before one reduce-scatter
        rows.append(
            Row(f"{net.label or net.name}: gradients", 4 * p, "fp32, unsharded while accumulating", "gradients")
        )
    else:
        rows.append(
            Row(
                f"{net.label or net.name}: gradients",
                _shard(4 * p, sharded, gpus),
                "fp32" + (f", sharded 1/{gpus}" if sharded else ""),
                "gradients",
            )
        )
    in_use = [nets[n] for n in phase.in_use if n in nets]
    if sharded:
        unit_bytes = 2 if half else 4
        gathered = sum(GATHERED_UNITS * n.unit_params for n in in_use if n.unit_params) * unit_bytes
        gathered += net.unit_params * unit_bytes  # the updated unit's unsharded gradient before its reduce-scatter
        rows.append(
            Row(
                "gathered FSDP units",
                gathered,
                f"{GATHERED_UNITS} units x {', '.join(n.name for n in in_use)} + 1 unit's gradient",
            )
        )
    if half:  # float32 weights in the graph: autocast's bf16 casts stay saved for backward (sharded DiTs: gathered)
        copies = [nets[n] for n in phase.in_graph if n in nets and not (sharded and nets[n].role != "helper")]
        if copies:
            rows.append(
                Row(
                    "autocast bf16 weight copies",
                    sum(2 * (n.compute or n.params) for n in copies),
                    ", ".join(n.name for n in copies) + " (kept for backward)",
                )
            )
    if device == "cuda":
        # foreach AdamW: one temporary the size of the (sharded) parameters at the step, when activations are gone
        step_tmp = _shard(4 * p, sharded, gpus)
    else:
        step_tmp = 0.0
    activations, peak = _activation_peak(phase.steps)
    own = sum(r.bytes for r in rows)
    total = own + max(peak, step_tmp)
    if step_tmp > peak:
        rows.append(Row("optimizer step temporaries", step_tmp - peak, "foreach AdamW"))
    return PhasePlan(phase.name, rows, activations, peak, total)


def _activation_peak(steps: list[Step]) -> tuple[list[Row], float]:
    """Chain a phase's forwards: graphs accumulate; each forward peaks on top of what is held before it; backward
    runs the graphs in reverse, each peaking on top of the graphs before it."""
    held = 0.0
    peak = 0.0
    rows: list[Row] = []
    backward: list[tuple[float, Step]] = []
    for s in steps:
        k = 1 if s.scaled else s.batch
        peak = max(peak, held + k * s.trace.fwd_peak + s.batch * s.extra)
        if s.graph:
            backward.append((held, s))
            held += k * s.trace.held
            rows.append(Row(f"graph: {s.label}", k * s.trace.held, f"micro-batch {s.batch}"))
        elif s.keep:
            held += k * s.trace.out
    for before, s in reversed(backward):
        peak = max(peak, before + (1 if s.scaled else s.batch) * s.trace.bwd_peak)
    graphs = sum(r.bytes for r in rows)
    rows.append(Row("transient: no-grad forwards, backward, recomputation", peak - graphs, "at the phase's peak"))
    return rows, peak


# ----------------------------------------------------------------------------------------------------------------
# Suggestions
# ----------------------------------------------------------------------------------------------------------------


def _with(cfg: TrainConfig, change: dict) -> TrainConfig:
    new = copy.deepcopy(cfg)
    for key, value in change.items():
        if key == "gpus":
            continue
        obj, *path = key.split(".")
        target = new
        if obj == "method_cfg":
            target = new.method_cfg
        else:
            path = [obj]
        for part in path[:-1]:
            target = getattr(target, part)
        setattr(target, path[-1], value)
    return new


def _candidates(cfg: TrainConfig, gpus: int) -> list[dict]:
    """Changes to try, in order: each switch alone (gradient checkpointing; FSDP sharding where DDP replicates over
    several GPUs; more GPUs; more gradient accumulation; MoGAN's shorter window, then smaller discriminator batch),
    then combined: checkpointing, sharding and a micro-batch of 1 on as few GPUs as fits, the configured window
    first, then shorter windows, then smaller discriminator batches."""
    m = cfg.method_cfg
    gpu_counts = [gpus]
    while gpu_counts[-1] * 2 <= min(cfg.batch_size, MAX_GPUS):
        gpu_counts.append(gpu_counts[-1] * 2)
    singles: list[dict] = []
    if not cfg.gradient_checkpointing:
        singles.append({"gradient_checkpointing": True})
    if cfg.parallel == "ddp" and gpus > 1:
        singles.append({"parallel": "fsdp"})
    singles += [{"gpus": g} for g in gpu_counts[1:]]
    a = cfg.grad_accum * 2
    while a * gpus <= cfg.batch_size:
        singles.append({"grad_accum": a})
        a *= 2
    windows, disc_batches = [], []
    if cfg.method == "mogan":
        windows = list(range(m.window_chunks - 1, (2 if m.disc_space == "flow" else 1) - 1, -1))
        b = (m.disc_batch_size or 0) // 2
        while b >= 1:
            disc_batches.append(b)
            b //= 2
    singles += [{"method_cfg.window_chunks": w} for w in windows]
    singles += [{"method_cfg.disc_batch_size": b} for b in disc_batches]

    def combo(g: int, **more) -> dict:
        c = {"gradient_checkpointing": True, "gpus": g, "grad_accum": max(cfg.grad_accum, cfg.batch_size // g)}
        if cfg.parallel == "ddp" and g > 1:
            c["parallel"] = "fsdp"
        return {**c, **more}

    combos = [combo(g) for g in gpu_counts]
    combos += [combo(g, **{"method_cfg.window_chunks": w}) for w in windows for g in gpu_counts]
    last = {"method_cfg.window_chunks": windows[-1]} if windows else {}
    combos += [combo(g, **last, **{"method_cfg.disc_batch_size": b}) for b in disc_batches for g in gpu_counts]
    out = []
    for c in singles + combos:
        c = {k: v for k, v in c.items() if _differs(cfg, gpus, k, v)}
        if c and c not in out:
            out.append(c)
    return out


def _differs(cfg: TrainConfig, gpus: int, key: str, value) -> bool:
    if key == "gpus":
        return value != gpus
    obj = cfg.method_cfg if key.startswith("method_cfg.") else cfg
    return getattr(obj, key.split(".")[-1]) != value


def suggest(cfg: TrainConfig, gpus: int, gpu_mem_gib: float, device: str = "cuda") -> Suggestion | None:
    """The first switch (or combination, see ``_candidates``) that makes ``cfg`` fit, found by re-planning it."""
    for change in _candidates(cfg, gpus):
        n = change.get("gpus", gpus)
        try:
            p = _plan(_with(cfg, change), n, gpu_mem_gib, device)
        except ConfigError:  # e.g. a batch that does not split over the GPUs
            continue
        if p.fits:
            return Suggestion(change, p.total_gib, p.needed_gib)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def format_plan(plan: Plan) -> str:
    """The plan as a table: resident state, the peak phase by component, the total and whether it fits (GiB; MiB
    for plans under 1 GiB)."""
    s = plan.shape
    c, f, h, w = s["latent"]
    unit, scale = ("GiB", GIB) if plan.total >= GIB else ("MiB", 2**20)
    head = (
        f"{plan.method} ({plan.preset}) on {plan.gpus} GPU(s) x {plan.gpu_mem_gib:g} GiB: "
        f"parallel={plan.parallel}{' (sharded)' if plan.sharded else ''}, precision={plan.precision}, "
        f"gradient_checkpointing={_yaml(plan.gradient_checkpointing)}"
    )
    batch = (
        f"micro-batch {plan.micro_batch} = batch_size {plan.batch_size} / {plan.gpus} GPU(s) / grad_accum "
        f"{plan.grad_accum}; video {s['frames']}x{s['height']}x{s['width']} -> latents {c}x{f}x{h}x{w} "
        f"({s['tokens']} tokens), text {s['text_len']} tokens"
    )
    lines = [head, batch, ""]
    shown = plan.resident + plan.peak.rows + plan.peak.activations
    width = max(40, max(len(r.component) for r in shown) + 4)

    def row(name: str, nbytes: float, note: str = "") -> str:
        return f"{name:<{width}}{nbytes / scale:>9.2f}  {note}".rstrip()

    lines.append(f"{'component':<{width}}{unit:>9}  note")
    lines += [row(r.component, r.bytes, r.note) for r in plan.resident]
    lines.append(row("= resident", sum(r.bytes for r in plan.resident)))
    lines.append(f"peak phase: {plan.peak.name}")
    lines += [row("  " + r.component, r.bytes, r.note) for r in plan.peak.rows + plan.peak.activations]
    lines.append(row("= peak phase", plan.peak.total))
    lines.append(row("total", plan.total))
    if plan.margin:
        lines.append(
            row(
                "safety margin",
                plan.margin,
                f"{MARGIN_FIXED_GIB:g} GiB CUDA context and workspaces + "
                f"{MARGIN_FRACTION:.0%} of the total for fragmentation",
            )
        )
    lines.append(
        f"needs {plan.needed_gib:.2f} GiB per GPU: {'fits' if plan.fits else 'does NOT fit'} in "
        f"{plan.gpu_mem_gib:g} GiB"
    )
    others = [p for p in plan.phases if p is not plan.peak]
    if others:
        lines.append(
            f"other phases (beside the resident state, {unit}): "
            + "; ".join(f"{p.name} {p.total / scale:.2f}" for p in others)
        )
    lines += [f"note: {n}" for n in plan.notes]
    if not plan.fits and plan.searched:
        if plan.suggestion:
            lines.append(
                f"suggestion: {plan.suggestion.flags()} -> needs {plan.suggestion.needed_gib:.2f} GiB per GPU: fits"
            )
        else:
            big = sorted(shown, key=lambda r: -r.bytes)[:3]
            lines.append(
                "suggestion: none found; no switch tried (gradient_checkpointing, parallel=fsdp, more GPUs, "
                "grad_accum, method_cfg.window_chunks, method_cfg.disc_batch_size, and their combination) "
                "makes it fit. Largest: " + ", ".join(f"{r.component.strip()} {r.gib:.1f} GiB" for r in big)
            )
    return "\n".join(lines)


def plan_dict(plan: Plan) -> dict:
    """The plan as plain data (GiB), e.g. for JSON."""
    d = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("resident", "phases", "peak", "suggestion")}
    d.update(
        total_gib=plan.total_gib,
        needed_gib=plan.needed_gib,
        fits=plan.fits,
        groups=plan.groups(),
        resident=[{"component": r.component, "gib": r.gib, "note": r.note} for r in plan.resident],
        peak_phase=plan.peak.name,
        phases={
            p.name: {
                "gib": p.total / GIB,
                "rows": [{"component": r.component, "gib": r.gib} for r in p.rows + p.activations],
            }
            for p in plan.phases
        },
        suggestion=None
        if plan.suggestion is None
        else {"change": plan.suggestion.change, "needed_gib": plan.suggestion.needed_gib},
    )
    return d
