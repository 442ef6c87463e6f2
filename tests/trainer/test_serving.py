"""GenerationService: batched == unbatched per seed, no crossed or dropped requests, warm caches, fast-path guards.

python -m pytest tests/trainer/test_serving.py -x -q
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from tests.conftest import load_bench
from trainer import zoo
from trainer.flowmo import FlowMoConfig
from trainer.sampling import SamplingOptions, generate_latents, resolve_sampling
from trainer.serving import (
    Batcher,
    FastPaths,
    GenerationRequest,
    GenerationService,
    _Pending,
    generate_video,
)

SHAPE = {"num_frames": 5, "height": 16, "width": 16}  # smallest shape the tiny VAE takes: keeps CPU tests quick
WORDS = ["a", "the", "video", "with", "good", "motion", "moves", "slowly", "quickly", "moving"]
PROMPTS = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)) for i in range(16)]


def _reference(checkpoint, prompt, seed, steps=None):
    """One request alone through the plain sampler (no service, no cache, batch of one)."""
    gen = zoo.load_generator(checkpoint)
    s = resolve_sampling(gen.sampling, SamplingOptions(steps=steps))
    return generate_latents(gen, [prompt], [seed], sampling=s, **SHAPE)[0]


def _mean_pixel_error(a, b) -> float:
    """Mean absolute difference of two results' frames, on the [-1, 1] scale the tolerances are stated in."""
    return np.abs(a.frames.astype(float) - b.frames.astype(float)).mean() / 127.5


def _concurrently(svc, requests):
    results: dict[int, object] = {}
    errors = []
    barrier = threading.Barrier(len(requests))

    def go(i, r):
        try:
            barrier.wait()
            results[i] = svc.generate(r)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i, r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def test_sixteen_concurrent_requests_each_get_their_own_video(tiny_student_dir):
    reqs = [GenerationRequest(str(tiny_student_dir), PROMPTS[i], seed=100 + i, **SHAPE) for i in range(16)]
    with GenerationService(window_ms=300, max_batch=16, eager=False) as svc:
        results = _concurrently(svc, reqs)
        sizes = list(svc.batcher.batch_sizes)
    assert sorted(results) == list(range(16))  # none dropped
    assert sum(sizes) == 16 and max(sizes) > 1, sizes  # they really were batched
    for i, r in results.items():
        assert r.info["seed"] == 100 + i
        ref = _reference(tiny_student_dir, PROMPTS[i], 100 + i)
        torch.testing.assert_close(r.latents, ref, atol=1e-5, rtol=1e-5)
        assert r.frames.shape == (5, 16, 16, 3) and r.frames.dtype == np.uint8
    # distinct seeds give distinct videos, so matching the reference above means no request got another's video
    assert not torch.allclose(results[0].latents, results[1].latents, atol=1e-3)


def test_batched_equals_unbatched_for_the_teacher_with_cfg(tiny_pipeline_dir):
    reqs = [
        GenerationRequest(str(tiny_pipeline_dir), p, seed=s, steps=2, **SHAPE)
        for p, s in [("a video", 1), ("good motion", 2), ("a video", 3)]
    ]
    with GenerationService(window_ms=300, eager=False) as batched:
        got = _concurrently(batched, reqs)
        assert max(batched.batcher.batch_sizes) == 3
    with GenerationService(batching=False) as solo:
        for i, r in enumerate(reqs):
            alone = solo.generate(r)
            assert alone.info["batch_size"] == 1
            torch.testing.assert_close(got[i].latents, alone.latents, atol=1e-5, rtol=1e-5)
            assert np.abs(got[i].frames.astype(int) - alone.frames.astype(int)).max() <= 1


def test_unbatched_requests_run_one_at_a_time_on_the_service_thread(tiny_student_dir):
    class Recording(GenerationService):  # the real service; it notes which thread ran each batch
        def _run_batch(self, key, batch):
            threads.add(threading.current_thread().name)
            return super()._run_batch(key, batch)

    threads: set[str] = set()
    reqs = [GenerationRequest(str(tiny_student_dir), PROMPTS[i], seed=i, **SHAPE) for i in range(4)]
    with Recording(batching=False) as solo:
        results = _concurrently(solo, reqs)
        assert solo.batcher.batch_sizes == [1, 1, 1, 1]
    assert threads == {"generation-batcher"}  # never the callers' threads (see the module docstring)
    assert [results[i].info["seed"] for i in range(4)] == [0, 1, 2, 3]


def test_warm_cache_no_reload_and_prompt_cache_hits(tiny_student_dir):
    with GenerationService(batching=False) as svc:
        svc.generate(GenerationRequest(str(tiny_student_dir), "a video", seed=0, **SHAPE))
        loads = zoo.cache_info()["loads"]
        cache = svc.prompt_cache(svc.generator(str(tiny_student_dir)))
        hits = cache.hits
        for seed in range(3):
            r = svc.generate(GenerationRequest(str(tiny_student_dir), "a video", seed=seed, **SHAPE, encode="web"))
        assert zoo.cache_info()["loads"] == loads  # nothing reloaded per request
        assert cache.hits == hits + 3 and cache.misses == 1
        assert r.video[4:8] == b"ftyp" and r.timings["video_encoding"] > 0
        assert set(r.timings) >= {"text_encoding", "denoising", "vae_decoding", "video_encoding", "total"}


def test_memory_budget_evicts_least_recently_used(tiny_student_dir, tiny_pipeline_dir, monkeypatch):
    zoo.clear_cache()
    one = zoo.generator_bytes(zoo.load_generator(tiny_student_dir))
    assert one > 100_000  # parameters + buffers, counted in bytes
    monkeypatch.setenv("MOTIONLAB_MODEL_CACHE_MB", str(1.5 * one / 2**20))  # room for one model, not two
    loads = zoo.cache_info()["loads"]
    zoo.load_generator(tiny_pipeline_dir)
    info = zoo.cache_info()
    assert info["loads"] == loads + 1 and info["keys"] == [str(tiny_pipeline_dir.resolve())]
    monkeypatch.setenv("MOTIONLAB_MODEL_CACHE_MB", str(3 * one / 2**20))
    zoo.load_generator(tiny_student_dir)
    zoo.load_generator(tiny_pipeline_dir)
    info = zoo.cache_info()
    assert info["loads"] == loads + 2 and info["entries"] == 2  # student reloaded once, teacher still warm


def test_cpu_fast_paths_within_tolerance(tiny_student_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))  # no C++ compiler to be found
        with pytest.raises(ValueError, match="compile on CPU needs a C\\+\\+ compiler"):
            GenerationService(fast=FastPaths(compile=True))
    with pytest.raises(ValueError, match="sliced_decode"):
        GenerationService(fast=FastPaths(sliced_decode=0))
    assert GenerationService(batching=False).fast == FastPaths(channels_last_vae=True)  # the CPU default
    gen = zoo.load_generator(tiny_student_dir)
    latents = torch.randn(3, *gen.latent_shape(5, 16, 16)[1:], generator=torch.Generator().manual_seed(0))
    plain = gen.decode_latents(latents)
    sliced = GenerationService(batching=False, fast=FastPaths(sliced_decode=1)).decode(gen, latents)
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=1e-5)
    service = GenerationService(batching=False, fast=FastPaths(channels_last_vae=True))
    channels_last = service.decode(service.generator(tiny_student_dir), latents)
    torch.testing.assert_close(channels_last, plain, atol=1e-4, rtol=0)  # the stated tolerance


def test_batcher_limits_batch_size_and_fails_every_request_of_a_failed_batch():
    seen = []

    def run(key, items):
        seen.append(len(items))
        if key == "bad":
            raise RuntimeError("boom")
        return [it.request * 2 for it in items]

    b = Batcher(run, window_ms=200, max_batch=4, eager=False)
    futs = [b.submit("k", _Pending(i, Future())) for i in range(10)]
    bad = [b.submit("bad", _Pending(0, Future())) for _ in range(2)]
    assert [f.result(10) for f in futs] == [2 * i for i in range(10)]
    for f in bad:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(10)
    b.close()
    assert max(seen) == 4 and sum(seen) == 12
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("k", _Pending(0, Future()))


def test_window_bounds_the_wait_of_a_lone_request():
    b = Batcher(lambda key, items: [None] * len(items), window_ms=50, max_batch=16, eager=False)
    t = time.perf_counter()
    b.submit("k", _Pending(None, Future())).result(10)
    assert 0.04 <= time.perf_counter() - t < 5
    b.close()


def test_eager_batcher_runs_a_lone_request_at_once_and_collects_arrivals_during_a_batch():
    release = threading.Event()
    sizes = []

    def run(key, items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)  # the first batch holds the device while others arrive
        return [None] * len(items)

    b = Batcher(run, window_ms=5000, max_batch=16)
    t = time.perf_counter()
    first = b.submit("k", _Pending(None, Future()))
    while not sizes and time.perf_counter() - t < 2:
        time.sleep(0.005)
    assert sizes == [1]  # started well inside the 5 s window: a lone request does not wait it out
    rest = [b.submit("k", _Pending(None, Future())) for _ in range(5)]
    release.set()
    for f in [first, *rest]:
        f.result(10)
    b.close()
    assert sizes == [1, 5] and time.perf_counter() - t < 4


def test_one_video_is_the_same_on_the_calling_thread_and_through_a_service(tiny_student_dir, tiny_pipeline_dir):
    cases = [
        (tiny_student_dir, SamplingOptions(**SHAPE)),
        (tiny_pipeline_dir, SamplingOptions(steps=2, guidance=3.0, flowmo=FlowMoConfig(eta=0.5, stop=1), **SHAPE)),
    ]
    with GenerationService(batching=False) as svc:
        for checkpoint, options in cases:
            here, info_here = generate_video(checkpoint, "good motion", 7, options)
            served, info = generate_video(checkpoint, "good motion", 7, options, service=svc)
            assert here.shape == served.shape == (5, 16, 16, 3) and here.dtype == np.uint8
            assert np.abs(served.astype(int) - here.astype(int)).max() <= 1  # channels-last decoding: rounding
            same = ("network_evaluations", "kind", "steps", "fps", "sampler", "seed")
            assert {k: info[k] for k in same} == {k: info_here[k] for k in same}
            assert info["batch_size"] == 1 and "batch_size" not in info_here
            for i in (info, info_here):
                assert i["seconds"] > 0 and i["timings"]["denoising"] > 0
    assert info_here["kind"] == "teacher" and info_here["steps"] == 2 and info_here["flowmo"]["guided_steps"] == 1
    # CFG pairs: 2 steps x 2, and FlowMo's guided step with its CFG pair
    assert info_here["network_evaluations"] == 2 * 2 + 2


def test_the_service_checks_a_requests_options_before_queueing_it(tiny_student_dir):
    with GenerationService(batching=False) as svc:
        with pytest.raises(ValueError, match=r"steps: must be >= 1 \(got 0\)"):
            svc.generate(GenerationRequest(str(tiny_student_dir), "a video", steps=0, **SHAPE))
        with pytest.raises(ValueError, match="flowmo_stop: must be <= 3, the sampler's number of steps"):
            svc.generate(GenerationRequest(str(tiny_student_dir), "a video", flowmo=FlowMoConfig(stop=4), **SHAPE))
        assert svc.batcher.batch_sizes == []  # neither reached the dispatcher


def test_serving_benchmark_prints_every_figure_in_one_run(capsys):
    mod = load_bench("serving")
    assert (
        mod.main(
            [
                "--num-frames",
                "5",
                "--height",
                "16",
                "--width",
                "16",
                "--reps",
                "1",
                "--rounds",
                "1",
                "--concurrency",
                "1,2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "100 network evaluations" in out and "3 network evaluations" in out and "NFE ratio 100/3" in out
    for stage in ("text_encoding", "denoising", "vae_decoding", "video_encoding"):
        assert out.count(stage) == 2  # teacher and student shares
    assert "outside network evaluations and VAE decoding" in out and "max RSS" in out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


def test_prompt_cache_is_an_lru_and_returns_the_encoder_output(tiny_student_dir):
    from trainer.serving import _PromptCache

    gen = zoo.load_generator(tiny_student_dir)
    cache = _PromptCache(size=2)
    got = cache.encode(gen, ["a video", "good motion", "a video"], "cpu")
    torch.testing.assert_close(got, gen.encode_prompts(["a video", "good motion", "a video"]), atol=1e-6, rtol=0)
    assert (cache.hits, cache.misses) == (0, 3)  # the repeat in one call is encoded once but counted as a miss
    cache.encode(gen, ["the video"], "cpu")  # evicts the least recently used ("a video")
    assert list(cache.items) == ["good motion", "the video"]
    cache.encode(gen, ["good motion"], "cpu")
    assert cache.hits == 1


def test_bfloat16_keeps_the_float32_modules_and_stays_within_the_stated_tolerance(tiny_student_dir, tiny_pipeline_dir):
    for checkpoint, steps in ((tiny_student_dir, None), (tiny_pipeline_dir, 4)):  # the few-step student; a CFG teacher
        with (
            GenerationService(batching=False) as plain,
            GenerationService(batching=False, fast=FastPaths(dtype="bfloat16")) as bf16,
        ):
            model = bf16.generator(checkpoint).transformer
            dtypes = {n: p.dtype for n, p in model.named_parameters()}
            assert dtypes["patch_embedding.weight"] == torch.bfloat16
            kept = [n for n in dtypes if set(n.split(".")) & set(model._keep_in_fp32_modules)]
            assert kept and all(dtypes[n] == torch.float32 for n in kept)
            assert zoo.load_generator(checkpoint).transformer.patch_embedding.weight.dtype == torch.float32  # shared
            for seed in (0, 1):
                r = GenerationRequest(str(checkpoint), PROMPTS[seed], seed=seed, steps=steps, **SHAPE)
                a, b = plain.generate(r), bf16.generate(r)
                err = _mean_pixel_error(a, b)
                assert 0 < err <= 0.05, err  # really bfloat16 (not identical), within the stated tolerance


def test_bfloat16_vae_decodes_in_bfloat16_within_the_stated_tolerance(tiny_student_dir):
    with (
        GenerationService(batching=False) as plain,
        GenerationService(batching=False, fast=FastPaths(vae_dtype="bfloat16")) as bf16,
    ):
        gen = bf16.generator(tiny_student_dir)
        assert {p.dtype for p in gen.vae.parameters()} == {torch.bfloat16}
        assert gen.transformer.patch_embedding.weight.dtype == torch.float32  # dtype and vae_dtype are separate
        assert next(zoo.load_generator(tiny_student_dir).vae.parameters()).dtype == torch.float32  # shared
        for seed in (0, 1):
            r = GenerationRequest(str(tiny_student_dir), PROMPTS[seed], seed=seed, **SHAPE)
            a, b = plain.generate(r), bf16.generate(r)
            torch.testing.assert_close(b.latents, a.latents, atol=0, rtol=0)  # the same denoising
            err = _mean_pixel_error(a, b)
            assert 0 < err <= 0.02, err  # really bfloat16 (not identical), within the stated tolerance


def test_fast_paths_name_a_bad_dtype():
    for name in ("dtype", "vae_dtype"):
        with pytest.raises(ValueError, match=f"fast.{name} must be one of float32, bfloat16, float16"):
            GenerationService(batching=False, fast=FastPaths(**{name: "int8"}))


@pytest.mark.slow  # torch.compile's first call compiles (~30 s on 2 cores)
def test_compiled_transformer_stays_within_the_stated_tolerance(tiny_student_dir):
    with (
        GenerationService(batching=False) as plain,
        GenerationService(batching=False, fast=FastPaths(compile=True)) as comp,
    ):
        assert type(comp.generator(tiny_student_dir).transformer).__name__ == "OptimizedModule"  # really compiled
        for seed in (0, 1):
            r = GenerationRequest(str(tiny_student_dir), PROMPTS[seed], seed=seed, **SHAPE)
            a, b = plain.generate(r), comp.generate(r)
            torch.testing.assert_close(b.latents, a.latents, atol=1e-3, rtol=0)
            assert np.abs(a.frames.astype(float) - b.frames.astype(float)).max() / 127.5 <= 1e-3 + 1 / 127.5
