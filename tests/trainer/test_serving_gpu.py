"""The serving fast paths on a CUDA device, against the stated tolerances (skipped without one).

    python -m pytest -m gpu tests/trainer/test_serving_gpu.py -q     # on a machine with a GPU

Checked against what ``trainer/serving.py``'s docstring states for CUDA, with the tiny models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer import zoo
from trainer.serving import FastPaths, GenerationRequest, GenerationService

pytestmark = pytest.mark.gpu

SHAPE = {"num_frames": 17, "height": 32, "width": 32}  # the tiny models' own shape
PROMPTS = ["a video with good motion", "the video moves slowly", "a video moving quickly", "good motion of the video"]


def _mean_pixel_error(a, b) -> float:
    """Mean absolute difference of two results' frames, on the [-1, 1] scale the tolerances are stated in."""
    return np.abs(a.frames.astype(float) - b.frames.astype(float)).mean() / 127.5


def _request(ckpt, i: int) -> GenerationRequest:
    return GenerationRequest(str(ckpt), PROMPTS[i % len(PROMPTS)], seed=i, **SHAPE)


def test_cuda_gives_the_cpu_video_for_the_same_seed(tiny_student_dir):
    with (
        GenerationService("cpu", batching=False, fast=FastPaths()) as cpu,
        GenerationService("cuda", batching=False) as gpu,
    ):
        for i in (0, 1):
            a, b = cpu.generate(_request(tiny_student_dir, i)), gpu.generate(_request(tiny_student_dir, i))
            torch.testing.assert_close(b.latents, a.latents, atol=1e-3, rtol=0)


def test_batched_equals_unbatched_on_cuda(tiny_student_dir):
    from concurrent.futures import ThreadPoolExecutor

    with (
        GenerationService("cuda", batching=False) as solo,
        GenerationService("cuda", window_ms=200, max_batch=16) as batched,
    ):
        alone = [solo.generate(_request(tiny_student_dir, i)) for i in range(16)]
        batched.generate(_request(tiny_student_dir, 0))  # load before the clients start, so they arrive together
        with ThreadPoolExecutor(16) as ex:
            together = list(ex.map(lambda i: batched.generate(_request(tiny_student_dir, i)), range(16)))
        assert max(batched.batcher.batch_sizes) > 1  # really batched
    for a, b in zip(alone, together, strict=True):
        assert b.info["seed"] == a.info["seed"]
        torch.testing.assert_close(b.latents, a.latents, atol=1e-4, rtol=0)


def test_sliced_and_channels_last_decoding_on_cuda(tiny_student_dir):
    gen = zoo.load_generator(tiny_student_dir, device="cuda")
    latents = torch.randn(3, *gen.latent_shape(17, 32, 32)[1:], generator=torch.Generator().manual_seed(0))
    latents = latents.cuda()
    plain = gen.decode_latents(latents).float()
    with GenerationService("cuda", batching=False, fast=FastPaths(sliced_decode=1)) as sliced:
        torch.testing.assert_close(sliced.decode(gen, latents), plain, atol=1e-3, rtol=0)
    with GenerationService("cuda", batching=False, fast=FastPaths(channels_last_vae=True)) as cl:
        torch.testing.assert_close(cl.decode(cl.generator(tiny_student_dir), latents), plain, atol=1e-3, rtol=0)


def test_bfloat16_and_compile_on_cuda_stay_within_the_stated_tolerances(tiny_student_dir):
    with (
        GenerationService("cuda", batching=False) as plain,
        GenerationService("cuda", batching=False, fast=FastPaths(dtype="bfloat16")) as bf16,
        GenerationService("cuda", batching=False, fast=FastPaths(vae_dtype="bfloat16")) as bf16_vae,
        GenerationService("cuda", batching=False, fast=FastPaths(compile=True)) as comp,
    ):
        assert type(comp.generator(tiny_student_dir).transformer).__name__ == "OptimizedModule"
        for i in (0, 1):
            a, b, v, c = (svc.generate(_request(tiny_student_dir, i)) for svc in (plain, bf16, bf16_vae, comp))
            err, err_vae = _mean_pixel_error(a, b), _mean_pixel_error(a, v)
            assert 0 < err <= 0.05, err
            assert 0 < err_vae <= 0.02, err_vae
            torch.testing.assert_close(c.latents, a.latents, atol=1e-3, rtol=0)
