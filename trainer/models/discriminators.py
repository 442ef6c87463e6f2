"""Discriminators for adversarial post-training: MoGAN's motion discriminator and VDOT's feature discriminator.

``MotionDiscriminator`` (MoGAN, paper section 4.3 and appendix A) is a Wan DiT trunk -- the first
``num_blocks`` blocks of the generator's transformer, initialized from its weights -- that reads a
three-channel optical-flow tensor ``[B, T, 3, H, W]`` (u, v, |o|; see ``trainer.losses.gan.flow_tensor``) at
the fixed timestep ``t* = 0`` and the fixed prompt "a video with good motion". Lightweight heads at
three depths (a learnable token cross-attending to that block's tokens, then a small MLP) are
concatenated into a final MLP that gives one logit per sample.

How the flow enters the trunk. The paper says the flow tensor "matches the video input shape
(e.g. 81 x 3 x 480 x 832)" and is fed to a discriminator adapted from the Wan DiT, and its
video-space ablation removes "the flow estimator and downstream encoder/decoder" -- so in the flow
variant the flow is encoded with the video VAE encoder like a video and then goes through the DiT's
own (pretrained) patch embedding. That is ``flow_encoder="vae"`` (the default): pass an ``encode``
callable mapping a video-like tensor ``[B, 3, T, H, W]`` to *normalized* latents ``[B, C, F, h, w]``
(e.g. ``(vae.encode(x).latent_dist.mode() - mean) / std``, differentiable so the generator receives
gradients). The VAE is not owned by the discriminator (not in its parameters or checkpoint).
``flow_encoder="patch"`` is a cheaper variant without the VAE: a new Conv3d patch embedding over the
flow pixels with patch ``(4, 16, 16)`` (VAE compression x DiT patch), the first frame replicated in
front so ``T = 1 + 4k`` frames give ``1 + k`` token frames as the VAE would.
In both variants T must be ``1 + 4k`` (``flow_patch[0]`` = the VAE's temporal factor): a decoded
window that does not start at chunk 0 has ``4L`` frames, so drop its last 3 frames (or the flow's)
before building the motion tensor. ``input_kind="latent"`` is the paper's video-space ablation: the
input is video latents ``[B, C, F, h, w]`` through the original patch embedding.

Flow normalization: u, v and |o| are divided by ``flow_norm * min(H, W)`` (default 0.05, so a
displacement of 5% of the short side per frame becomes 1). A fixed, resolution-relative scale keeps
the amount of motion visible to the discriminator (per-sample normalization would erase it).

``FeatureDiscriminator`` (VDOT) owns only three register tokens (cross-attention heads) and a linear
classifier; the features come from three blocks of the fake-score transformer passed at forward
time (``run_wan_blocks`` stops after the deepest one). Gradients flow to the noisy latents so the
generator is trained through it; whether the fake-score weights are updated by the discriminator
loss is the caller's choice (they are not in ``FeatureDiscriminator.parameters()``).

Both save/load with ``save_pretrained(dir)`` / ``from_pretrained(dir)``: ``config.json`` and
``model.safetensors``.

Tests: ``python -m pytest tests/trainer/models/test_discriminators.py -q``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.models.wan_features import embed_patches, run_blocks, run_wan_blocks, wan_preamble_from_tokens

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


def _default_num_heads(dim: int) -> int:
    # about 128 channels per head, and a divisor of dim (nn.MultiheadAttention requires it)
    heads = max(1, dim // 128)
    while dim % heads:
        heads -= 1
    return heads


class CrossAttentionHead(nn.Module):
    """A learnable query token cross-attending to a block's tokens, then a small MLP.

    tokens ``[B, N, dim]`` -> features ``[B, out_dim]``. With ``hidden=None`` there is no MLP and the
    attended token (``dim`` features) is returned, as VDOT's register tokens are.
    """

    def __init__(self, dim: int, hidden: int | None, num_heads: int | None = None, out_dim: int | None = None):
        super().__init__()
        num_heads = num_heads or _default_num_heads(dim)
        if dim % num_heads:
            raise ValueError(f"CrossAttentionHead: dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        # Block outputs of a DiT have a large, block-dependent scale; normalizing keys/values keeps
        # the attention logits and the head's output in a sane range from the first step.
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        if hidden is None:
            self.mlp: nn.Module = nn.Identity()
            self.out_dim = dim
        else:
            self.out_dim = out_dim or hidden
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, self.out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[2] != self.dim:
            raise ValueError(f"CrossAttentionHead expects tokens [B, N, {self.dim}], got {tuple(tokens.shape)}")
        tokens = tokens.to(self.query.dtype)
        kv = self.norm_kv(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        attended, _ = self.attn(q, kv, kv, need_weights=False)
        feat = self.norm_out(q + attended)[:, 0]
        return self.mlp(feat)


class WanTrunk(nn.Module):
    """The parts of a Wan transformer a discriminator trunk needs: rope, patch/condition embedding, blocks."""

    def __init__(
        self,
        rope: nn.Module,
        patch_embedding: nn.Module,
        condition_embedder: nn.Module,
        blocks: nn.ModuleList,
    ):
        super().__init__()
        self.rope = rope
        self.patch_embedding = patch_embedding
        self.condition_embedder = condition_embedder
        self.blocks = blocks


def _transformer_config(transformer: nn.Module) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(cfg, default=list))  # tuples -> lists, JSON-safe


def _build_wan(cfg: dict[str, Any]) -> nn.Module:
    from diffusers import WanTransformer3DModel

    cfg = dict(cfg)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


def _write(directory: str | Path, config: dict[str, Any], module: nn.Module) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    return out


def _read_config(directory: str | Path, kind: str) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{kind}: no {CONFIG_NAME} in {directory}")
    config = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path} describes a {config.get('kind')!r}, not a {kind!r}")
    return config


class MotionDiscriminator(nn.Module):
    """MoGAN's DiT-based motion discriminator. Build it with ``from_transformer`` or ``from_pretrained``."""

    def __init__(
        self,
        trunk: WanTrunk,
        config: dict[str, Any],
        prompt_embeds: torch.Tensor,
        encode: EncodeFn | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        self.config = config
        self.head_blocks: tuple[int, ...] = tuple(config["head_blocks"])
        dim = trunk.patch_embedding.out_channels
        hidden = int(config["head_hidden"])
        self.heads = nn.ModuleList(
            CrossAttentionHead(dim, hidden, num_heads=config.get("head_num_heads")) for _ in self.head_blocks
        )
        self.final = nn.Sequential(nn.Linear(hidden * len(self.head_blocks), hidden), nn.SiLU(), nn.Linear(hidden, 1))
        if prompt_embeds.ndim == 3:
            prompt_embeds = prompt_embeds[0]
        if prompt_embeds.ndim != 2 or prompt_embeds.shape[1] != config["transformer"]["text_dim"]:
            raise ValueError(
                f"prompt_embeds must be [L, text_dim={config['transformer']['text_dim']}] (or [1, L, text_dim]), "
                f"got {tuple(prompt_embeds.shape)}"
            )
        # The fixed condition c* ("a video with good motion"), saved with the weights.
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=True)
        # Not a submodule: the VAE (if used) is shared with the generator and not trained here.
        self.encode = encode
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_transformer(
        cls,
        transformer: nn.Module,
        num_blocks: int,
        head_blocks: tuple[int, int, int],
        prompt_embeds: torch.Tensor,
        in_channels: int = 3,
        input_kind: str = "flow",
        flow_encoder: str = "vae",
        encode: EncodeFn | None = None,
        flow_patch: tuple[int, int, int] = (4, 16, 16),
        flow_norm: float = 0.05,
        head_hidden: int = 256,
        head_num_heads: int | None = None,
    ) -> MotionDiscriminator:
        """Copy ``transformer``'s config and first ``num_blocks`` blocks (deep copies) into a discriminator.

        head_blocks: 0-based block indices whose outputs feed the three heads (full scale with 16 blocks:
        ``(7, 13, 15)``). prompt_embeds: text-encoder embedding ``[L, text_dim]`` of the fixed prompt.
        input_kind: ``"flow"`` (input ``[B, T, in_channels, H, W]``) or ``"latent"`` (video latents
        ``[B, C, F, h, w]``, the video-space ablation). flow_encoder (flow only): ``"vae"`` (encode
        with ``encode`` then the DiT's own patch embedding) or ``"patch"`` (new Conv3d with kernel
        ``flow_patch`` over flow pixels).
        """
        cfg_t = _transformer_config(transformer)
        n_layers = len(transformer.blocks)
        if not 1 <= num_blocks <= n_layers:
            raise ValueError(f"num_blocks={num_blocks} must be in [1, {n_layers}] (the transformer's block count)")
        head_blocks = tuple(int(b) for b in head_blocks)
        if not head_blocks or min(head_blocks) < 0 or max(head_blocks) >= num_blocks:
            raise ValueError(f"head_blocks {head_blocks} must be 0-based indices below num_blocks={num_blocks}")
        if input_kind not in ("flow", "latent"):
            raise ValueError(f"input_kind must be 'flow' or 'latent', got {input_kind!r}")
        if flow_encoder not in ("vae", "patch"):
            raise ValueError(f"flow_encoder must be 'vae' or 'patch', got {flow_encoder!r}")
        if flow_norm <= 0:
            raise ValueError(f"flow_norm must be > 0, got {flow_norm}")
        cfg_t["num_layers"] = num_blocks
        config = {
            "kind": "MotionDiscriminator",
            "transformer": cfg_t,
            "num_blocks": num_blocks,
            "head_blocks": list(head_blocks),
            "in_channels": in_channels,
            "input_kind": input_kind,
            "flow_encoder": flow_encoder,
            "flow_patch": [int(p) for p in flow_patch],
            "flow_norm": float(flow_norm),
            "head_hidden": int(head_hidden),
            "head_num_heads": head_num_heads,
            "prompt_len": int(prompt_embeds.shape[-2]),
        }
        patch_embedding = copy.deepcopy(transformer.patch_embedding)
        if input_kind == "flow" and flow_encoder == "patch":
            patch_embedding = nn.Conv3d(
                in_channels,
                patch_embedding.out_channels,
                kernel_size=tuple(flow_patch),
                stride=tuple(flow_patch),
            ).to(
                device=transformer.patch_embedding.weight.device,
                dtype=transformer.patch_embedding.weight.dtype,
            )
        trunk = WanTrunk(
            rope=copy.deepcopy(transformer.rope),
            patch_embedding=patch_embedding,
            condition_embedder=copy.deepcopy(transformer.condition_embedder),
            blocks=copy.deepcopy(transformer.blocks[:num_blocks]),
        )
        disc = cls(trunk, config, prompt_embeds, encode=encode)
        ref = transformer.patch_embedding.weight
        return disc.to(device=ref.device)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (trunk, heads, prompt embedding) to ``directory``."""
        return _write(directory, self.config, self)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        encode: EncodeFn | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MotionDiscriminator:
        config = _read_config(directory, "MotionDiscriminator")
        source = _build_wan(config["transformer"])
        text_dim = config["transformer"]["text_dim"]
        disc = cls.from_transformer(
            source,
            num_blocks=config["num_blocks"],
            head_blocks=tuple(config["head_blocks"]),
            prompt_embeds=torch.zeros(config["prompt_len"], text_dim),
            in_channels=config["in_channels"],
            input_kind=config["input_kind"],
            flow_encoder=config["flow_encoder"],
            encode=encode,
            flow_patch=tuple(config["flow_patch"]),
            flow_norm=config["flow_norm"],
            head_hidden=config["head_hidden"],
            head_num_heads=config["head_num_heads"],
        )
        del source
        disc.load_state_dict(load_file(str(Path(directory) / WEIGHTS_NAME)), strict=True)
        return disc.to(device=device, dtype=dtype)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ forward
    def _flow_to_trunk_input(self, flow: torch.Tensor, encode: EncodeFn | None) -> torch.Tensor:
        cfg = self.config
        if flow.ndim != 5 or flow.shape[2] != cfg["in_channels"]:
            raise ValueError(
                f"MotionDiscriminator (flow) expects [B, T, {cfg['in_channels']}, H, W], got {tuple(flow.shape)}"
            )
        height, width = flow.shape[-2:]
        x = flow / (cfg["flow_norm"] * min(height, width))
        x = x.permute(0, 2, 1, 3, 4)  # -> [B, 3, T, H, W], the video layout
        frames, pt = x.shape[2], cfg["flow_patch"][0]
        if (frames - 1) % pt:
            # the Wan VAE encoder would silently drop the frames after the last full group of pt
            raise ValueError(
                f"flow has T={frames} frames; need T = 1 + {pt}k (trim a decoded window to such a length, "
                f"e.g. drop its last {(frames - 1) % pt} frames)"
            )
        if cfg["flow_encoder"] == "vae":
            encode = encode or self.encode
            if encode is None:
                raise ValueError(
                    "MotionDiscriminator with flow_encoder='vae' needs an encode callable "
                    "([B, 3, T, H, W] -> normalized latents); pass encode= at construction or forward"
                )
            z = encode(x)
            if z.ndim != 5 or z.shape[1] != self.trunk.patch_embedding.in_channels:
                raise ValueError(
                    f"encode returned shape {tuple(z.shape)}; expected [B, "
                    f"{self.trunk.patch_embedding.in_channels}, F, h, w] latents"
                )
            return z
        _, ph, pw = cfg["flow_patch"]
        if height % ph or width % pw:
            raise ValueError(
                f"flow of {height}x{width} pixels does not fit flow_patch {cfg['flow_patch']}: "
                f"need H, W divisible by {ph}, {pw}"
            )
        if pt > 1:
            # causal layout like the VAE's: the first frame alone forms the first token frame
            x = torch.cat([x[:, :, :1].expand(-1, -1, pt - 1, -1, -1), x], dim=2)
        return x

    def forward(self, x: torch.Tensor, encode: EncodeFn | None = None) -> torch.Tensor:
        """Logits ``[B]`` (float32). ``x``: flow tensor ``[B, T, 3, H, W]`` or, for ``input_kind='latent'``,
        video latents ``[B, C, F, h, w]``."""
        if self.config["input_kind"] == "flow":
            x = self._flow_to_trunk_input(x, encode)
        elif x.ndim != 5 or x.shape[1] != self.trunk.patch_embedding.in_channels:
            raise ValueError(
                f"MotionDiscriminator (latent) expects [B, {self.trunk.patch_embedding.in_channels}, F, h, w], "
                f"got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        x = x.to(self.trunk.patch_embedding.weight.dtype)
        tokens, grid = embed_patches(self.trunk.patch_embedding, x)
        # t* = 0 and the fixed prompt make D a deterministic function of the motion.
        timestep = torch.zeros(batch, device=x.device)
        text = self.prompt_embeds.unsqueeze(0).expand(batch, -1, -1).to(x.dtype)
        pre = wan_preamble_from_tokens(self.trunk, tokens, grid, timestep, text)
        feats = run_blocks(self.trunk.blocks, pre, self.head_blocks, checkpoint=self.gradient_checkpointing)
        h = torch.cat([head(feats[b]) for head, b in zip(self.heads, self.head_blocks)], dim=-1)
        return self.final(h)[:, 0].float()


class FeatureDiscriminator(nn.Module):
    """VDOT's discriminator: register tokens on three blocks of the (not owned) fake-score transformer."""

    def __init__(
        self,
        dim: int,
        block_ids: Sequence[int] = (13, 21, 29),
        head_hidden: int | None = None,
        num_heads: int | None = None,
    ):
        super().__init__()
        self.block_ids = tuple(int(b) for b in block_ids)
        if len(self.block_ids) == 0 or min(self.block_ids) < 0:
            raise ValueError(f"block_ids must be non-negative block indices, got {block_ids}")
        self.config = {
            "kind": "FeatureDiscriminator",
            "dim": int(dim),
            "block_ids": list(self.block_ids),
            "head_hidden": head_hidden,
            "num_heads": num_heads,
        }
        self.heads = nn.ModuleList(CrossAttentionHead(dim, head_hidden, num_heads=num_heads) for _ in self.block_ids)
        self.classifier = nn.Linear(sum(h.out_dim for h in self.heads), 1)

    @classmethod
    def from_transformer(
        cls,
        transformer: nn.Module,
        block_ids: Sequence[int],
        head_hidden: int | None = None,
        num_heads: int | None = None,
    ) -> FeatureDiscriminator:
        """Size the heads for ``transformer`` (the fake-score net) and check ``block_ids`` against its depth."""
        n_layers = len(transformer.blocks)
        if max(block_ids) >= n_layers:
            raise ValueError(f"block_ids {list(block_ids)} out of range: the transformer has {n_layers} blocks")
        dim = transformer.patch_embedding.out_channels
        ref = transformer.patch_embedding.weight
        return cls(dim, block_ids, head_hidden=head_hidden, num_heads=num_heads).to(device=ref.device)

    def forward(
        self,
        fake_score: nn.Module,
        noisy_latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        checkpoint: bool | None = None,
    ) -> torch.Tensor:
        """Logits ``[B]`` (float32) for noisy latents ``[B, C, F, h, w]`` at ``timestep [B]`` (``1000 * sigma``)."""
        feats = run_wan_blocks(
            fake_score, noisy_latents, timestep, encoder_hidden_states, self.block_ids, checkpoint=checkpoint
        )
        h = torch.cat([head(feats[b]) for head, b in zip(self.heads, self.block_ids)], dim=-1)
        return self.classifier(h)[:, 0].float()

    def save_pretrained(self, directory: str | Path) -> Path:
        return _write(directory, self.config, self)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FeatureDiscriminator:
        config = _read_config(directory, "FeatureDiscriminator")
        disc = cls(config["dim"], config["block_ids"], config["head_hidden"], config["num_heads"])
        disc.load_state_dict(load_file(str(Path(directory) / WEIGHTS_NAME)), strict=True)
        return disc.to(device=device, dtype=dtype)


__all__ = [
    "CrossAttentionHead",
    "FeatureDiscriminator",
    "MotionDiscriminator",
    "WanTrunk",
]
