"""Intermediate block features of a diffusers ``WanTransformer3DModel``.

Discriminators in MoGAN (a DiT trunk with heads at three depths) and VDOT (register tokens on three
blocks of the fake-score network) need the token sequence *after* given transformer blocks, not the
model's velocity output. ``WanTransformer3DModel.forward`` does not expose those, so this module
re-does its preamble step by step with the model's own sub-modules:

1. rotary position embedding for the post-patch token grid (``transformer.rope`` buffers),
2. patch embedding (``transformer.patch_embedding``, a strided Conv3d) -> tokens ``[B, N, dim]``,
3. condition embedding (``transformer.condition_embedder``) of the timestep and the text embeddings,

then runs ``transformer.blocks`` in order and stops after the deepest requested block, so the
blocks after it cost nothing. ``wan_output_head`` is the model's output path (norm_out, proj_out,
unpatchify); the tests use it to check that preamble + all blocks + head equals ``transformer(...)``.

Anything with the attributes ``rope``, ``patch_embedding``, ``condition_embedder`` and ``blocks``
works as ``transformer`` (the MoGAN discriminator trunk is such a module). The token grid is read
from the patch embedding's output, so a replaced patch embedding with another kernel works too.

Only Wan2.1-style inputs are supported: timestep ``[B]`` (no per-token timesteps) and no image
embedding (T2V).

Run the tests with ``python -m pytest tests/trainer/models/test_discriminators.py -q``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint


@dataclass
class WanPreamble:
    """Everything the Wan blocks consume, as built by ``wan_preamble``."""

    tokens: torch.Tensor  # [B, N, dim] patch tokens, N = f * h * w
    encoder_hidden_states: torch.Tensor  # [B, L, dim] projected text tokens
    temb: torch.Tensor  # [B, dim] time embedding (used by the output head)
    timestep_proj: torch.Tensor  # [B, 6, dim] per-block modulation input
    rotary_emb: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [1, N, 1, head_dim]
    grid: tuple[int, int, int]  # post-patch (frames, height, width)


def rope_for_grid(rope: nn.Module, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary (cos, sin) tables for a post-patch token grid ``(f, h, w)``.

    Uses the precomputed 1-D tables of a diffusers ``WanRotaryPosEmbed`` (``freqs_cos``/``freqs_sin``
    split into time/height/width parts of sizes ``t_dim``/``h_dim``/``w_dim``) and lays them out in the
    token order of ``patch_embedding(x).flatten(2)`` (frame-major, then row, then column). Computing it
    from the grid instead of from the latent tensor lets a discriminator use a different patch size.
    """
    f, h, w = (int(v) for v in grid)
    max_len = int(rope.max_seq_len)
    if max(f, h, w) > max_len:
        raise ValueError(
            f"token grid {grid} exceeds the transformer's rope_max_seq_len={max_len}; "
            "use smaller inputs or a model built with a larger rope_max_seq_len"
        )
    sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        ft, fh, fw = freqs.split(sizes, dim=1)
        parts = [
            ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ]
        tables.append(torch.cat(parts, dim=-1).reshape(1, f * h * w, 1, -1))
    return tables[0], tables[1]


def embed_patches(patch_embedding: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Patchify ``x [B, C, F, H, W]`` with a Conv3d -> (tokens ``[B, N, dim]``, grid ``(f, h, w)``)."""
    out = patch_embedding(x)
    grid = (int(out.shape[2]), int(out.shape[3]), int(out.shape[4]))
    # The block loop wants a contiguous [B, N, dim] sequence (flatten+transpose is a strided view).
    tokens = out.flatten(2).transpose(1, 2).contiguous()
    return tokens, grid


def _check_inputs(
    transformer: nn.Module, hidden_states: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    if hidden_states.ndim != 5:
        raise ValueError(f"hidden_states must be [B, C, F, h, w], got shape {tuple(hidden_states.shape)}")
    batch = hidden_states.shape[0]
    in_ch = transformer.patch_embedding.in_channels
    if hidden_states.shape[1] != in_ch:
        raise ValueError(f"hidden_states has {hidden_states.shape[1]} channels; the patch embedding takes {in_ch}")
    timestep = torch.as_tensor(timestep, device=hidden_states.device)
    if timestep.ndim == 0:
        timestep = timestep.expand(batch)
    if timestep.ndim != 1 or timestep.shape[0] != batch:
        raise ValueError(f"timestep must be a scalar or [B={batch}], got shape {tuple(timestep.shape)}")
    if text.ndim != 3 or text.shape[0] != batch:
        raise ValueError(f"encoder_hidden_states must be [B={batch}, L, text_dim], got {tuple(text.shape)}")
    text_dim = transformer.condition_embedder.text_embedder.linear_1.in_features
    if text.shape[2] != text_dim:
        raise ValueError(f"encoder_hidden_states last dim is {text.shape[2]}; the transformer's text_dim is {text_dim}")
    return timestep


def wan_preamble_from_tokens(
    transformer: nn.Module,
    tokens: torch.Tensor,
    grid: tuple[int, int, int],
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> WanPreamble:
    """Preamble for tokens that were already patch-embedded (e.g. by a replaced patch embedding)."""
    cos, sin = rope_for_grid(transformer.rope, grid)
    # diffusers keeps the rope tables in float64 (float32 on MPS); the attention processor casts as needed.
    cos, sin = cos.to(tokens.device), sin.to(tokens.device)
    temb, timestep_proj, text, _ = transformer.condition_embedder(timestep, encoder_hidden_states, None)
    timestep_proj = timestep_proj.unflatten(1, (6, -1))
    return WanPreamble(tokens, text, temb, timestep_proj, (cos, sin), grid)


def wan_preamble(
    transformer: nn.Module,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> WanPreamble:
    """Rope + patch embedding + condition embedding, as at the start of ``WanTransformer3DModel.forward``."""
    timestep = _check_inputs(transformer, hidden_states, timestep, encoder_hidden_states)
    tokens, grid = embed_patches(transformer.patch_embedding, hidden_states)
    return wan_preamble_from_tokens(transformer, tokens, grid, timestep, encoder_hidden_states)


def run_blocks(
    blocks: Sequence[nn.Module],
    pre: WanPreamble,
    block_ids: Sequence[int],
    stop_after_last: bool = True,
    checkpoint: bool = False,
) -> dict[int, torch.Tensor]:
    """Run ``blocks`` on a preamble; return ``{i: tokens after block i}`` for every requested ``i``."""
    ids = sorted({int(i) for i in block_ids})
    if not ids:
        raise ValueError("block_ids must name at least one block")
    if ids[0] < 0 or ids[-1] >= len(blocks):
        raise ValueError(f"block_ids {list(block_ids)} out of range: the transformer has {len(blocks)} blocks")
    last = ids[-1] if stop_after_last else len(blocks) - 1
    wanted = set(ids)
    feats: dict[int, torch.Tensor] = {}
    hidden = pre.tokens
    use_ckpt = checkpoint and torch.is_grad_enabled()
    for i in range(last + 1):
        block = blocks[i]
        if use_ckpt:
            hidden = _checkpoint(
                block,
                hidden,
                pre.encoder_hidden_states,
                pre.timestep_proj,
                pre.rotary_emb,
                use_reentrant=False,
            )
        else:
            hidden = block(hidden, pre.encoder_hidden_states, pre.timestep_proj, pre.rotary_emb)
        if i in wanted:
            feats[i] = hidden
    return feats


def run_wan_blocks(
    transformer: nn.Module,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    block_ids: Sequence[int],
    stop_after_last: bool = True,
    checkpoint: bool | None = None,
) -> dict[int, torch.Tensor]:
    """Token features ``[B, N_tokens, dim]`` after each block in ``block_ids`` (0-based).

    hidden_states: latents ``[B, C, F, h, w]``; timestep: ``[B]`` in the transformer's scale
    (``1000 * sigma``); encoder_hidden_states: text embeddings ``[B, L, text_dim]``.
    With ``stop_after_last`` (default) blocks after the deepest requested one are not run.
    ``checkpoint`` (default: the transformer's ``gradient_checkpointing`` flag) recomputes each block in
    backward (only when gradients are enabled). Gradients flow to ``hidden_states`` and to the weights.
    """
    if checkpoint is None:
        checkpoint = bool(getattr(transformer, "gradient_checkpointing", False))
    pre = wan_preamble(transformer, hidden_states, timestep, encoder_hidden_states)
    return run_blocks(transformer.blocks, pre, block_ids, stop_after_last=stop_after_last, checkpoint=checkpoint)


def wan_output_head(
    transformer: nn.Module, tokens: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int, int]
) -> torch.Tensor:
    """The model's output path on final tokens: modulated norm_out, proj_out, unpatchify -> ``[B, C, F, H, W]``."""
    batch = tokens.shape[0]
    p_t, p_h, p_w = transformer.config.patch_size
    f, h, w = grid
    shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (transformer.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
    x = transformer.proj_out(x)
    # token (f, h, w) holds a p_t x p_h x p_w patch of C channels; put each patch back in place.
    x = x.reshape(batch, f, h, w, p_t, p_h, p_w, -1)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(batch, x.shape[1], f * p_t, h * p_h, w * p_w)
