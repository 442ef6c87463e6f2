"""Tests for trainer.models.vae_window: window decoding with truncated BPTT through the Wan VAE decoder.

Run: python -m pytest tests/trainer/models/test_vae_window.py -q
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from trainer.models.vae_window import (
    decode_window,
    denormalize_latents,
    normalize_latents,
    temporal_upsample_factor,
    window_frame_range,
)


def latent_stats(z_dim: int) -> dict[str, list[float]]:
    """Non-trivial latent statistics, so that a wrong (un)normalization would show."""
    return {"latents_mean": [0.1 * i - 0.3 for i in range(z_dim)], "latents_std": [0.5 + 0.2 * i for i in range(z_dim)]}


def make_vae(temporal: list[bool]) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=8,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=temporal,
        **latent_stats(8),
    )
    return vae.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    # temporal x4 like Wan2.1: 17 frames <-> 5 latent chunks (1 + 4 + 4 + 4 + 4 frames)
    return make_vae([True, True])


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(2, 8, 5, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full(vae, latents) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(denormalize_latents(vae, latents)).sample


def test_tiny_vae_shapes(vae, full):
    assert temporal_upsample_factor(vae) == 4
    assert full.shape == (2, 3, 17, 32, 32)
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 17, 32, 32)).latent_dist.mode()
    assert z.shape == (1, 8, 5, 8, 8)


@pytest.mark.parametrize("start,length", [(0, 1), (0, 2), (0, 5), (1, 2), (2, 3), (4, 1), (3, 2)])
def test_window_equals_slice_of_full_decode(vae, latents, full, start, length):
    with torch.no_grad():
        pixels, frame_start = decode_window(vae, latents, start, length)
    expected_start, expected_end = window_frame_range(vae, start, length)
    assert frame_start == expected_start == (0 if start == 0 else 1 + 4 * (start - 1))
    assert pixels.shape == (2, 3, expected_end - expected_start, 32, 32)
    torch.testing.assert_close(pixels, full[:, :, expected_start:expected_end], atol=1e-5, rtol=0)


def test_frame_mapping_with_temporal_factor_two():
    # the brief's tiny config (temperal_downsample=[False, True]) only halves time: 17 frames <-> 9 chunks
    vae2 = make_vae([False, True])
    assert temporal_upsample_factor(vae2) == 2
    z = torch.randn(1, 8, 9, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae2.decode(denormalize_latents(vae2, z)).sample
        pixels, frame_start = decode_window(vae2, z, 3, 4)
    assert full.shape[2] == 17
    assert (frame_start, pixels.shape[2]) == (5, 8)
    torch.testing.assert_close(pixels, full[:, :, 5:13], atol=1e-5, rtol=0)


def test_raw_latents_option(vae, latents, full):
    raw = denormalize_latents(vae, latents)
    torch.testing.assert_close(normalize_latents(vae, raw), latents, atol=1e-6, rtol=0)
    with torch.no_grad():
        pixels, frame_start = decode_window(vae, raw, 1, 3, latents_normalized=False)
    torch.testing.assert_close(pixels, full[:, :, frame_start : frame_start + 12], atol=1e-5, rtol=0)


def test_gradient_reaches_only_the_window(vae, latents):
    start, length = 2, 2
    z = latents.clone().requires_grad_(True)
    pixels, _ = decode_window(vae, z, start, length)
    pixels.square().mean().backward()
    per_chunk = z.grad.abs().sum(dim=(0, 1, 3, 4))
    assert torch.all(per_chunk[:start] == 0)
    assert torch.all(per_chunk[start + length :] == 0)
    assert torch.all(per_chunk[start : start + length] > 0)


def _autograd_reference(vae, latents, weights, start, length):
    """Gradient of sum(weights * frames) taken by autograd through diffusers' own vae.decode."""
    z = latents.clone().requires_grad_(True)
    frames = vae.decode(denormalize_latents(vae, z)).sample
    f0, f1 = window_frame_range(vae, start, length)
    (frames[:, :, f0:f1] * weights).sum().backward()
    return z.grad


@pytest.mark.parametrize("checkpoint", [True, False])
def test_gradients_match_autograd_through_full_decode(vae, latents, checkpoint):
    start, length = 1, 3
    f0, f1 = window_frame_range(vae, start, length)
    weights = torch.randn(2, 3, f1 - f0, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = _autograd_reference(vae, latents, weights, start, length)

    # without truncation the gradient is the exact one, also into the chunks before the window
    z = latents.clone().requires_grad_(True)
    pixels, _ = decode_window(vae, z, start, length, checkpoint=checkpoint, detach_state=False)
    (pixels * weights).sum().backward()
    torch.testing.assert_close(z.grad, ref, atol=1e-5, rtol=1e-4)
    assert z.grad[:, :, :start].abs().sum() > 0

    # truncated BPTT: same gradient on the window's chunks, none before it
    z = latents.clone().requires_grad_(True)
    pixels, _ = decode_window(vae, z, start, length, checkpoint=checkpoint, detach_state=True)
    (pixels * weights).sum().backward()
    torch.testing.assert_close(z.grad[:, :, start:], ref[:, :, start:], atol=1e-5, rtol=1e-4)
    assert torch.all(z.grad[:, :, :start] == 0)


def test_decoding_stops_after_the_window(vae, latents):
    calls = []
    handle = vae.decoder.register_forward_hook(lambda mod, args, out: calls.append(out.shape[2]))
    try:
        with torch.no_grad():
            decode_window(vae, latents, 1, 2)
    finally:
        handle.remove()
    # chunk 0 (warm-up) + chunks 1, 2; chunks 3 and 4 of K = 5 are never decoded
    assert calls == [1, 4, 4]


@pytest.mark.parametrize(
    "start,length,match",
    [
        (-1, 2, "start=-1"),
        (5, 1, "start=5"),
        (0, 0, "length=0"),
        (3, 3, "exceeds K=5"),
        (1.0, 2, "start=1.0"),
    ],
)
def test_bad_window_is_rejected(vae, latents, start, length, match):
    with pytest.raises(ValueError, match=match):
        decode_window(vae, latents, start, length)


def test_bad_latents_are_rejected(vae, latents):
    with pytest.raises(ValueError, match="z_dim is 8"):
        decode_window(vae, latents[:, :4], 0, 1)
    with pytest.raises(ValueError, match=r"\[B, C, K, h, w\]"):
        decode_window(vae, latents[0], 0, 1)


@pytest.mark.parametrize("start,length", [(0, 2), (2, 3), (4, 1)])
def test_window_equals_full_decode_with_the_residual_tiny_vae(start, length):
    """The shipped tiny VAE uses Wan2.2's residual up blocks (their shortcut repeats frames): windows still match."""
    from trainer.models.generator import TINY_VAE

    torch.manual_seed(0)
    z_dim = TINY_VAE["z_dim"]
    vae = AutoencoderKLWan(**{**TINY_VAE, **latent_stats(z_dim)}).eval().requires_grad_(False)
    z = torch.randn(2, z_dim, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = decode_window(vae, z, 0, 5)[0]
        pixels, frame_start = decode_window(vae, z, start, length)
    frame_end = window_frame_range(vae, start, length)[1]
    torch.testing.assert_close(pixels, full[:, :, frame_start:frame_end], atol=1e-5, rtol=0)
