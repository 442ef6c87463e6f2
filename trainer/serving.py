"""Generating videos for callers: ``generate_video`` (one video, directly or through a service) and the
``GenerationService`` behind a server (warm models, cached prompt embeddings, request batching, fast paths).

    from trainer.sampling import SamplingOptions
    from trainer.serving import generate_video, shared_service
    frames, info = generate_video("tiny-mogan", "a red ball rolls", 3, SamplingOptions(steps=2))   # on this thread
    frames, info = generate_video("tiny-mogan", "a red ball rolls", 3, service=shared_service("cpu"))  # batched

    from trainer.serving import GenerationService, GenerationRequest
    svc = GenerationService(device="cpu")                    # batching on: window 20 ms, at most 16 per batch
    res = svc.generate(GenerationRequest("tiny-mogan", "a red ball rolls", seed=3))
    res.frames        # uint8 [T, H, W, 3] — the same video the request would get alone (per-sample seeded noise)
    res.timings       # seconds: text_encoding, denoising, vae_decoding, video_encoding, queue, total
    svc.close()

Both run ``trainer.sampling.generate_batch`` (text -> latents -> frames), with the request's options merged into
the checkpoint's settings by ``trainer.sampling.resolve_sampling``. What the service adds:

* **Warm models** — generators come from ``trainer.zoo.load_generator`` (an LRU bounded by
  ``$MOTIONLAB_MODEL_CACHE_MB``); nothing is reloaded per request. Each generator has its own LRU of prompt
  embeddings (``prompt_cache_size`` entries), so a repeated prompt (and the teacher's negative prompt) is encoded once.
* **Batching** — requests with the same checkpoint, sampling settings (FlowMo's included) and video shape that
  arrive within ``window_ms`` of the first (or until ``max_batch`` are waiting) run as one batch on a single
  dispatcher thread.
  Noise is drawn per request from its own seed (``SeededNoise``) and text is padded per prompt, so each request
  gets its own video; batched and unbatched latents agree to float rounding (tests: atol 1e-5).
* **Fast paths** (``FastPaths``), each switchable: ``dtype="bfloat16"`` (transformer + text encoder loaded in it, as
  ``from_pretrained(torch_dtype=...)`` loads them: diffusers keeps the Wan transformer's ``_keep_in_fp32_modules``
  in float32, transformers casts all of UMT5 under bfloat16; the VAE stays float32), ``vae_dtype="bfloat16"``
  (the VAE loaded in it: for a few-step student decoding is most of the work), ``compile`` (``torch.compile`` of
  the transformer), ``channels_last_vae`` (``channels_last_3d`` VAE weights and input), ``sliced_decode=n`` (decode
  ``n`` samples at a time to bound memory; Wan's VAE already decodes one latent frame at a time with a causal
  cache, so long videos are bounded along time by construction). All run anywhere. On CPU, ``dtype`` and
  ``compile`` are for checking their tolerance rather than for speed (``compile`` needs a C++ compiler and compiles
  each new shape on its first request); ``vae_dtype="bfloat16"`` is fast only on CPUs with bfloat16 matrix units
  (AMX, AVX-512 BF16). ``FastPaths.for_device`` is what a service uses unless told otherwise: on CPU
  ``channels_last_vae`` (oneDNN, which runs the VAE on CPU, is faster on channels-last tensors), on CUDA the plain
  path. Speeds: ``bench/serving.py`` and bench/README.md.
  Stated tolerance against the plain float32 path (same seeds): ``sliced_decode`` — exact; ``channels_last_vae``
  — float rounding (pixels within 1e-4); ``compile`` — within 1e-3 on [-1, 1] pixels; ``bfloat16`` — bf16
  rounding compounds over steps, so mean absolute pixel error <= 0.05 on [-1, 1] (about 6/255) for the few-step
  student; ``vae_dtype="bfloat16"`` — the same latents, decoded with mean absolute pixel error <= 0.02 on [-1, 1].
  On CUDA (``tests/trainer/test_serving_gpu.py``, marked ``gpu``): the CPU's video for the same seed (latents within
  1e-3), batched = unbatched within 1e-4, sliced and channels-last decoding within 1e-3 (cuDNN picks its
  algorithms, TF32 included, per batch size and memory format), ``compile`` latents within 1e-3, ``bfloat16`` and
  ``vae_dtype`` as above.

Stage timings are per batch (shared by its requests), except video encoding, which is per request and done in the
caller's thread so it overlaps the next batch's denoising.

All of a service's compute runs on its one dispatcher thread, with or without batching (``batching=False`` means
batches of one). On CPU that is not only tidy: PyTorch's OpenMP pool belongs to the thread that runs an op, and
torch runs markedly slower on a thread other than the first one that computed in the process, so unbatched requests
computed on the callers' threads would make a slow baseline that flatters batching.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch

from trainer.data.video_io import encode_mp4
from trainer.flowmo import FlowMoConfig
from trainer.sampling import SamplingOptions, generate_batch, resolve_sampling
from trainer.zoo import load_generator, resolve_checkpoint

STAGES = ("text_encoding", "denoising", "vae_decoding", "video_encoding")


@dataclass(frozen=True)
class FastPaths:
    """Fast-path switches (all off = the plain float32 path)."""

    dtype: str | None = None  # "bfloat16" or "float16"; None keeps float32
    vae_dtype: str | None = None  # the VAE's, likewise
    compile: bool = False
    channels_last_vae: bool = False
    sliced_decode: int | None = None  # decode this many samples at a time

    @classmethod
    def for_device(cls, device: torch.device | str, **switches) -> FastPaths:
        """The default of a service on ``device`` (see the module docstring), with the ``switches`` that are not
        None set over it (None: the device's default)."""
        default = cls(channels_last_vae=True) if torch.device(device).type == "cpu" else cls()
        return replace(default, **{k: v for k, v in switches.items() if v is not None})

    def check(self, device: torch.device) -> None:
        for name in ("dtype", "vae_dtype"):
            if getattr(self, name) not in (None, "float32", "bfloat16", "float16"):
                raise ValueError(f"fast.{name} must be one of float32, bfloat16, float16 (got {getattr(self, name)!r})")
        if self.sliced_decode is not None and int(self.sliced_decode) < 1:
            raise ValueError(f"fast.sliced_decode must be >= 1 samples (got {self.sliced_decode})")
        if self.compile and device.type == "cpu":
            import shutil

            if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
                raise ValueError(
                    "fast path compile on CPU needs a C++ compiler (c++, g++ or clang++) on PATH for "
                    "torch.compile's inductor backend; none found"
                )

    @property
    def needs_private_model(self) -> bool:
        # These change the modules in place, so they get their own copy instead of the shared zoo instance.
        return (
            self.dtype not in (None, "float32")
            or self.vae_dtype not in (None, "float32")
            or self.compile
            or self.channels_last_vae
        )


@dataclass
class GenerationRequest:
    checkpoint: str  # zoo name or pipeline directory
    prompt: str
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    encode: str | None = None  # None: frames only; "web" / "lossless": also mp4 bytes (write_video quality)
    flowmo: FlowMoConfig | None = None  # FlowMo guidance on the checkpoint's sampler (None: off)

    @classmethod
    def from_options(
        cls, checkpoint: str, prompt: str, seed: int, options: SamplingOptions, encode: str | None = None
    ) -> GenerationRequest:
        return cls(
            checkpoint, prompt, seed, encode=encode, **{f.name: getattr(options, f.name) for f in fields(options)}
        )

    @property
    def options(self) -> SamplingOptions:
        """The request's overrides of its checkpoint's sampling settings (``trainer.sampling.resolve_sampling``)."""
        return SamplingOptions(self.steps, self.guidance, self.num_frames, self.height, self.width, self.flowmo)


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    latents: torch.Tensor  # [C, F, h, w] float32 on CPU (what the tests compare)
    info: dict[str, Any]
    timings: dict[str, float]
    video: bytes | None = None


class _PromptCache:
    """LRU of prompt -> embedding ``[L, D]`` for one generator; thread-safe; counts hits and misses."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def encode(self, gen, prompts: list[str], device) -> torch.Tensor:
        found: dict[str, torch.Tensor] = {}
        with self.lock:  # take the cached ones now, so a concurrent eviction cannot lose them
            for p in dict.fromkeys(prompts):
                if p in self.items:
                    self.items.move_to_end(p)
                    found[p] = self.items[p]
            self.hits += sum(1 for p in prompts if p in found)
            self.misses += sum(1 for p in prompts if p not in found)
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            emb = gen.encode_prompts(missing, device)  # one batched call for all new prompts
            with self.lock:
                for p, e in zip(missing, emb):
                    found[p] = self.items[p] = e.clone()  # not a view: an entry must not pin its whole batch
                    self.items.move_to_end(p)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        return torch.stack([found[p] for p in prompts])


@dataclass
class _Pending:
    request: GenerationRequest
    future: Future
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Groups submitted items by key and runs each group as one batch on a single dispatcher thread.

    A batch starts when ``max_batch`` items with the same key wait, or ``window_ms`` after its first item arrived,
    or (``eager``, the default) at once when every item in flight is already queued — nobody else is mid-batch, so
    waiting out the window would only add latency to a lone request; items that arrive while a batch runs still
    collect into the next one. Groups run oldest first. ``run_batch(key, items)`` returns one result per item, or
    raises (every item's future then gets the exception).
    """

    def __init__(self, run_batch, window_ms: float = 20.0, max_batch: int = 16, eager: bool = True):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0 (got {window_ms})")
        self.run_batch = run_batch
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.eager = eager
        self.in_flight = 0  # submitted and not yet answered
        self.cond = threading.Condition()
        self.queues: OrderedDict[Any, list[_Pending]] = OrderedDict()
        self.closed = False
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._loop, name="generation-batcher", daemon=True)
        self.thread.start()

    def submit(self, key, item: _Pending) -> Future:
        with self.cond:
            if self.closed:
                raise RuntimeError("the generation service is closed")
            self.queues.setdefault(key, []).append(item)
            self.in_flight += 1
            self.cond.notify_all()
        return item.future

    def _next_batch(self):
        with self.cond:
            while True:
                if not self.queues:
                    if self.closed:
                        return None
                    self.cond.wait()
                    continue
                key, items = next(iter(self.queues.items()))  # the oldest group
                due = items[0].arrived + self.window
                now = time.perf_counter()
                idle = self.eager and sum(len(q) for q in self.queues.values()) == self.in_flight
                if len(items) >= self.max_batch or now >= due or self.closed or idle:
                    batch, rest = items[: self.max_batch], items[self.max_batch :]
                    if rest:
                        self.queues[key] = rest
                        self.queues.move_to_end(key)  # others that waited get their turn
                    else:
                        del self.queues[key]
                    return key, batch
                self.cond.wait(due - now)

    def _loop(self):
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            key, batch = nxt
            self.batch_sizes.append(len(batch))
            try:
                results = self.run_batch(key, batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                results, error = None, exc
            else:
                error = None
            with self.cond:
                self.in_flight -= len(batch)
            for i, p in enumerate(batch):
                if error is not None:
                    p.future.set_exception(error)
                else:
                    p.future.set_result(results[i])

    def close(self, wait: bool = True) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if wait:
            self.thread.join()


class GenerationService:
    """Text -> video for a serving process: warm models, prompt-embedding cache, batching, fast paths.

    ``generate`` is thread-safe. With ``batching=False`` each request runs alone (batches of one, one at a time, on
    the same dispatcher thread), which is the baseline the benchmark compares batching against.
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        batching: bool = True,
        window_ms: float = 20.0,
        max_batch: int = 16,
        fast: FastPaths | None = None,
        prompt_cache_size: int = 256,
        timeout_s: float | None = None,
        eager: bool = True,
    ):
        self.device = torch.device(device)
        self.fast = fast if fast is not None else FastPaths.for_device(self.device)
        self.fast.check(self.device)
        self.prompt_cache_size = int(prompt_cache_size)
        self.timeout_s = timeout_s
        self._prompt_caches: WeakKeyDictionary = WeakKeyDictionary()
        self._caches_lock = threading.Lock()
        self._private: dict[tuple, Any] = {}  # fast-path copies (modified in place, so not the zoo's instance)
        self._private_lock = threading.Lock()
        self.batcher = (
            Batcher(self._run_batch, window_ms, max_batch, eager) if batching else Batcher(self._run_batch, 0.0, 1)
        )

    # -- public -----------------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One request -> its own video; blocks until done. Batched with concurrent compatible requests."""
        t0 = time.perf_counter()
        gen = self.generator(request.checkpoint)
        key = self._key(gen, request)
        pending = _Pending(request, Future())
        result = self.batcher.submit(key, pending).result(self.timeout_s)
        if request.encode:
            t = time.perf_counter()
            result.video = encode_mp4(result.frames, result.info["fps"], request.encode)
            result.timings["video_encoding"] = time.perf_counter() - t
        result.timings["total"] = time.perf_counter() - t0
        return result

    def generator(self, checkpoint: str):
        """The warm generator for a checkpoint (the zoo's shared one, or this service's fast-path copy)."""
        if not self.fast.needs_private_model:
            return load_generator(checkpoint, device=str(self.device))
        path = resolve_checkpoint(checkpoint).resolve()
        key = (str(path), path.stat().st_mtime_ns)
        with self._private_lock:
            if key not in self._private:
                # Loaded in the fast path's dtype, as ``from_pretrained(torch_dtype=...)`` loads a model: no float32
                # copy first (15 GB more at full scale), and what the model keeps in float32 stays exact.
                dtype, vae_dtype = (getattr(torch, d) if d else None for d in (self.fast.dtype, self.fast.vae_dtype))
                self._private[key] = self._apply_fast(
                    load_generator(path, device=str(self.device), cached=False, dtype=dtype, vae_dtype=vae_dtype)
                )
            return self._private[key]

    def prompt_cache(self, gen) -> _PromptCache:
        with self._caches_lock:
            cache = self._prompt_caches.get(gen)
            if cache is None:
                cache = self._prompt_caches[gen] = _PromptCache(self.prompt_cache_size)
            return cache

    def close(self) -> None:
        self.batcher.close()
        with self._private_lock:
            self._private.clear()  # its fast-path copies: at full scale, 15 GB each

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals --------------------------------------------------------------------------------------------------
    def _apply_fast(self, gen):
        """The fast paths that change a loaded model in place (``dtype`` is applied by loading in it)."""
        f = self.fast
        if f.channels_last_vae:  # the 3-D convolutions' weights (``Module.to`` refuses the VAE's 2-D ones)
            for m in gen.vae.modules():
                if isinstance(m, torch.nn.Conv3d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
        if f.compile:
            gen.transformer = torch.compile(gen.transformer)
        return gen

    def _key(self, gen, r: GenerationRequest) -> tuple:
        # bad options and shapes fail here, in the caller's thread, before queueing
        s = resolve_sampling(gen.sampling, r.options)
        gen.latent_shape(s.num_frames, s.height, s.width)
        path = resolve_checkpoint(r.checkpoint).resolve()
        flowmo = json.dumps(asdict(r.flowmo), sort_keys=True) if r.flowmo is not None else None
        return (str(path), json.dumps(asdict(s), sort_keys=True), flowmo)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def _run_batch(self, key, batch: list[_Pending]) -> list[GenerationResult]:
        start = time.perf_counter()
        first = batch[0].request  # the whole batch shares its checkpoint and settings (its key)
        gen = self.generator(first.checkpoint)
        seeds = [int(p.request.seed) for p in batch]
        out = generate_batch(
            gen,
            resolve_sampling(gen.sampling, first.options),
            [p.request.prompt for p in batch],
            seeds,
            flowmo=first.flowmo,
            encode=functools.partial(self.prompt_cache(gen).encode, gen),
            decode=functools.partial(self.decode, gen),
        )
        info = {**out.info, "batch_size": len(batch), "fast_paths": asdict(self.fast)}
        lat_cpu = out.latents.float().cpu()
        return [
            GenerationResult(
                out.frames[i],
                lat_cpu[i],
                {**info, "seed": seeds[i]},
                {"queue": start - p.arrived, **out.timings, "video_encoding": 0.0},
            )
            for i, p in enumerate(batch)
        ]

    def decode(self, gen, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels with this service's decoding fast paths (channels-last, slices)."""
        n = self.fast.sliced_decode or latents.shape[0]
        parts = []
        for i in range(0, latents.shape[0], n):
            chunk = latents[i : i + n]
            if self.fast.channels_last_vae:
                chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
            parts.append(gen.decode_latents(chunk).float())
        self._sync()
        return torch.cat(parts)


_SHARED: dict[tuple, GenerationService] = {}
_SHARED_LOCK = threading.Lock()


def shared_service(
    device: str = "cpu", *, fast: FastPaths | None = None, window_ms: float = 20.0, max_batch: int = 16
) -> GenerationService:
    """The process-wide service for a device and configuration (what the API and the infer worker use): one warm
    cache, one batcher.

    Batching across requests needs requests that overlap in this process (e.g. a worker with a thread pool);
    with one request at a time the eager batcher runs each at once, so it costs nothing.
    """
    fast = fast if fast is not None else FastPaths.for_device(device)
    key = (str(device), fast, float(window_ms), int(max_batch))
    with _SHARED_LOCK:
        svc = _SHARED.get(key)
        if svc is None:
            svc = _SHARED[key] = GenerationService(str(device), fast=fast, window_ms=window_ms, max_batch=max_batch)
        return svc


def generate_video(
    checkpoint,
    prompt: str,
    seed: int,
    options: SamplingOptions | None = None,
    *,
    device: str = "cpu",
    service: GenerationService | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One video from a checkpoint (zoo name or directory) -> (uint8 ``[T, H, W, 3]``, info).

    What everything that makes one video calls: ``motionlab generate``, and through
    ``backend.generation.run_generation`` the API's sync generations, the infer worker's jobs and so the web UI.
    ``options``: the request's overrides of the checkpoint's sampling settings (``resolve_sampling``).

    ``service`` None: on the calling thread, with the zoo's warm generator on ``device`` and the plain float32 path.
    A ``GenerationService``: through it (its device and fast paths; batched with concurrent requests). Both end in
    ``trainer.sampling.generate_batch``, so a seed gives the same video either way (to float rounding).

    ``info``: how it was sampled (``video_info``), the seed, ``seconds`` (text encoding + denoising + VAE decoding,
    queueing excluded) and per-stage ``timings``; through a service also the batch size and the fast paths.
    """
    options = options or SamplingOptions()
    if service is not None:
        res = service.generate(GenerationRequest.from_options(str(checkpoint), prompt, int(seed), options))
        frames, info, timings = res.frames, res.info, res.timings
    else:
        gen = load_generator(checkpoint, device=device)
        out = generate_batch(gen, resolve_sampling(gen.sampling, options), [prompt], [int(seed)], flowmo=options.flowmo)
        frames, info, timings = out.frames[0], {**out.info, "seed": int(seed)}, out.timings
    seconds = timings["text_encoding"] + timings["denoising"] + timings["vae_decoding"]
    return frames, {**info, "seconds": seconds, "timings": {k: round(v, 6) for k, v in timings.items()}}
