"""Window decoding through the chunk-recurrent Wan VAE decoder with truncated BPTT (MoGAN appendix A).

The Wan decoder (diffusers ``AutoencoderKLWan``) decodes one latent frame ("chunk") at a time;
every causal temporal convolution keeps the last two frames of its input from earlier chunks in a
feature cache, so the cache is the decoder's recurrent state. Chunk 0 gives 1 pixel frame, every
later chunk gives ``r`` frames (``r = 2 ** number of temporal upsamplings``, 4 for Wan2.1).

``decode_window`` decodes only chunks ``start .. start + length - 1`` with gradients:

1. the cache is warmed on chunks ``0 .. start-1`` exactly as a full decode would (under
   ``torch.no_grad()`` when ``detach_state``) -- the cache depends on all earlier chunks (the
   decoder's temporal receptive field is longer than any clip), so nothing shorter is exact;
2. the state is detached at the window start (truncated BPTT): no gradient reaches earlier latents;
3. the window is run chunk by chunk, each chunk under ``torch.utils.checkpoint`` (non-reentrant)
   as a pure function ``(latent chunk, cache) -> (pixels, new cache)``: the diffusers decoder updates
   the cache list in place, so each call gets its own copy of the list and a recomputation in
   backward sees the same state as the first run;
4. decoding stops after the window; later chunks are never touched.

Peak memory therefore grows with the window length (caches + output pixels of the window, plus one
chunk's activations in backward), not with the clip length K. The forward output equals the
matching frames of ``vae.decode`` (same ops in the same order, the clamp to [-1, 1] included).

Latent convention: by default the function expects *normalized* latents, ``(z - latents_mean) /
latents_std`` with the VAE config's statistics, as the trainer and ``WanPipeline`` use them; it
un-normalizes them (``z = z_n * std + mean``) the way ``WanPipeline`` does before ``vae.decode``.
Pass ``latents_normalized=False`` for raw latents. Spatial tiling (``vae.use_tiling``) is not used.

Run the tests with ``python -m pytest tests/trainer/models/test_vae_window.py -q``; the memory
benchmark is ``python bench/window_memory.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint


def temporal_upsample_factor(vae: nn.Module) -> int:
    """Pixel frames produced by each latent chunk after the first (4 for Wan2.1's VAE)."""
    flags = getattr(vae, "temperal_upsample", None)
    if flags is None:
        flags = list(vae.config.temperal_downsample)[::-1]
    return 2 ** sum(bool(f) for f in flags)


def window_frame_range(vae: nn.Module, start: int, length: int) -> tuple[int, int]:
    """Pixel frames ``[frame_start, frame_end)`` decoded from latent chunks ``start .. start+length-1``."""
    r = temporal_upsample_factor(vae)

    def frames_before(chunk: int) -> int:
        return 0 if chunk == 0 else 1 + (chunk - 1) * r

    return frames_before(start), frames_before(start + length)


def _num_causal_convs(decoder: nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())


def _latent_stats(vae: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def denormalize_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Normalized latents -> raw VAE latents: ``z_n * latents_std + latents_mean`` (as WanPipeline)."""
    mean, std = _latent_stats(vae, latents)
    return latents * std + mean


def normalize_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> normalized: ``(z - latents_mean) / latents_std``."""
    mean, std = _latent_stats(vae, latents)
    return (latents - mean) / std


def _decode_chunk(vae: nn.Module, first: bool, z_chunk: torch.Tensor, *cache: Any) -> tuple[Any, ...]:
    """One recurrent step, side-effect free: (latent chunk, cache entries) -> (pixels, new cache entries).

    Cache entries are tensors, ``None`` (not yet filled) or the string ``"Rep"`` (diffusers' marker
    for "first chunk, no temporal upsampling yet").
    """
    state = list(cache)  # the decoder rewrites entries in place; work on a private copy
    x = vae.post_quant_conv(z_chunk)  # 1x1x1 conv, so per-chunk application equals the full-tensor one
    out = vae.decoder(x, feat_cache=state, feat_idx=[0], first_chunk=first)
    return (out, *state)


def _step(vae: nn.Module, index: int, z_chunk: torch.Tensor, cache: Sequence[Any], use_checkpoint: bool):
    if use_checkpoint and torch.is_grad_enabled():
        result = _checkpoint(_decode_chunk, vae, index == 0, z_chunk, *cache, use_reentrant=False)
    else:
        result = _decode_chunk(vae, index == 0, z_chunk, *cache)
    return result[0], list(result[1:])


def _validate(vae: nn.Module, latents: torch.Tensor, start: int, length: int) -> None:
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, C, K, h, w], got shape {tuple(latents.shape)}")
    z_dim = int(vae.config.z_dim)
    if latents.shape[1] != z_dim:
        raise ValueError(f"latents have {latents.shape[1]} channels; the VAE's z_dim is {z_dim}")
    num_chunks = latents.shape[2]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < num_chunks:
        raise ValueError(f"start={start!r} must be an int in [0, K-1] = [0, {num_chunks - 1}] (K = latent frames)")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} must be an int >= 1 (number of latent chunks in the window)")
    if start + length > num_chunks:
        raise ValueError(
            f"window start={start} + length={length} exceeds K={num_chunks} latent frames (need start + length <= K)"
        )


def decode_window(
    vae: nn.Module,
    latents: torch.Tensor,
    start: int,
    length: int,
    checkpoint: bool = True,
    detach_state: bool = True,
    latents_normalized: bool = True,
    clamp: bool = True,
) -> tuple[torch.Tensor, int]:
    """Decode latent chunks ``start .. start+length-1`` -> ``(pixels [B, 3, T_w, H, W], frame_start)``.

    ``pixels`` are the frames ``frame_start .. frame_start + T_w - 1`` of the full decode
    (see ``window_frame_range``). latents: ``[B, C, K, h, w]``, normalized unless
    ``latents_normalized=False``. checkpoint: recompute each window chunk in backward.
    detach_state: truncated BPTT -- warm the cache without gradient so only the window's latents
    receive gradient; with ``False`` the gradient also flows through the state into earlier latents
    (their chunks are then run with grad, checkpointed as well). clamp: clip to [-1, 1] as
    ``vae.decode`` does (this zeroes the gradient of saturated pixels).
    """
    _validate(vae, latents, start, length)
    dtype = vae.post_quant_conv.weight.dtype
    # Only chunks up to the window end are needed; later chunks are never decoded.
    z = latents[:, :, : start + length].to(dtype)
    if latents_normalized:
        z = denormalize_latents(vae, z)
    cache: list[Any] = [None] * _num_causal_convs(vae.decoder)

    warm_ctx = torch.no_grad() if detach_state else contextlib.nullcontext()
    with warm_ctx:
        for i in range(start):
            _, cache = _step(vae, i, z[:, :, i : i + 1], cache, use_checkpoint=checkpoint)
    if detach_state:
        cache = [c.detach() if isinstance(c, torch.Tensor) else c for c in cache]

    outs = []
    for i in range(start, start + length):
        out, cache = _step(vae, i, z[:, :, i : i + 1], cache, use_checkpoint=checkpoint)
        outs.append(out)
    del cache  # the state after the window is not needed
    pixels = torch.cat(outs, dim=2)

    patch = getattr(vae.config, "patch_size", None)
    if patch is not None:  # Wan2.2-style VAE packs pixels into channels
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        pixels = unpatchify(pixels, patch_size=patch)
    if clamp:
        pixels = pixels.clamp(-1.0, 1.0)

    frame_start, frame_end = window_frame_range(vae, start, length)
    if pixels.shape[2] != frame_end - frame_start:  # guards the frame mapping against other VAE layouts
        raise RuntimeError(
            f"decoded {pixels.shape[2]} frames for chunks {start}..{start + length - 1}, "
            f"expected {frame_end - frame_start}"
        )
    return pixels, frame_start
