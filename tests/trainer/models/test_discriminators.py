"""Tests for trainer.models.wan_features and trainer.models.discriminators (MoGAN / VDOT discriminators).

Run: python -m pytest tests/trainer/models/test_discriminators.py -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from trainer.models.discriminators import (
    CrossAttentionHead,
    FeatureDiscriminator,
    MotionDiscriminator,
)
from trainer.models.vae_window import normalize_latents
from trainer.models.wan_features import (
    rope_for_grid,
    run_wan_blocks,
    wan_output_head,
    wan_preamble,
)


def make_transformer(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=8,
        out_channels=8,
        text_dim=32,
        freq_dim=64,
        ffn_dim=128,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


@pytest.fixture(scope="module")
def transformer() -> WanTransformer3DModel:
    return make_transformer()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return (
        AutoencoderKLWan(
            base_dim=16,
            z_dim=8,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[True, True],
            latents_mean=[0.0] * 8,
            latents_std=[1.0] * 8,
        )
        .eval()
        .requires_grad_(False)
    )


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randn(6, 32, generator=torch.Generator().manual_seed(5))


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, 5, 8, 8, generator=g)
    t = torch.tensor([900.0, 250.0][:batch])
    text = torch.randn(batch, 7, 32, generator=g)
    return x, t, text


def count_block_calls(module_blocks):
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(module_blocks)]
    return calls, handles


# ---------------------------------------------------------------- wan_features


def test_preamble_blocks_and_head_reproduce_forward(transformer):
    x, t, text = inputs()
    with torch.no_grad():
        ref = transformer(x, t, text).sample
        feats = run_wan_blocks(transformer, x, t, text, block_ids=[0, 1, 2, 3])
        pre = wan_preamble(transformer, x, t, text)
        out = wan_output_head(transformer, feats[3], pre.temb, pre.grid)
    assert set(feats) == {0, 1, 2, 3}
    assert feats[1].shape == (2, 5 * 4 * 4, 64)
    assert ref.abs().mean() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_rope_for_grid_matches_diffusers(transformer):
    x, _, _ = inputs()
    cos, sin = transformer.rope(x)
    my_cos, my_sin = rope_for_grid(transformer.rope, (5, 4, 4))
    torch.testing.assert_close(my_cos, cos, atol=0, rtol=0)
    torch.testing.assert_close(my_sin, sin, atol=0, rtol=0)


def test_run_wan_blocks_stops_after_deepest_block(transformer):
    x, t, text = inputs()
    calls, handles = count_block_calls(transformer.blocks)
    try:
        with torch.no_grad():
            early = run_wan_blocks(transformer, x, t, text, block_ids=[1, 0])
            assert calls == [0, 1]
            calls.clear()
            late = run_wan_blocks(transformer, x, t, text, block_ids=[1], stop_after_last=False)
            assert calls == [0, 1, 2, 3]
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(early[1], late[1], atol=0, rtol=0)


def test_run_wan_blocks_checkpointed_gradients_match(transformer):
    x, t, text = inputs()
    grads = []
    for ckpt in (False, True):
        xx = x.clone().requires_grad_(True)
        feats = run_wan_blocks(transformer, xx, t, text, block_ids=[2], checkpoint=ckpt)
        feats[2].square().mean().backward()
        grads.append(xx.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_run_wan_blocks_rejects_bad_input(transformer):
    x, t, text = inputs()
    with pytest.raises(ValueError, match="4 blocks"):
        run_wan_blocks(transformer, x, t, text, block_ids=[4])
    with pytest.raises(ValueError, match="channels"):
        run_wan_blocks(transformer, x[:, :3], t, text, block_ids=[0])
    with pytest.raises(ValueError, match="text_dim is 32"):
        run_wan_blocks(transformer, x, t, text[..., :16], block_ids=[0])
    with pytest.raises(ValueError, match="timestep"):
        run_wan_blocks(transformer, x, t[:1].repeat(3), text, block_ids=[0])


# ---------------------------------------------------------------- heads and motion tensor


def test_cross_attention_head_shapes():
    head = CrossAttentionHead(64, hidden=16)
    assert head(torch.randn(3, 10, 64)).shape == (3, 16)
    assert CrossAttentionHead(64, hidden=None)(torch.randn(3, 10, 64)).shape == (3, 64)
    with pytest.raises(ValueError, match="tokens"):
        head(torch.randn(3, 10, 32))


# ---------------------------------------------------------------- MotionDiscriminator


def motion_disc(transformer, prompt, **kw) -> MotionDiscriminator:
    kw.setdefault("flow_patch", (4, 8, 8))  # tiny VAE compresses space by 4, DiT patch 2
    kw.setdefault("head_hidden", 32)
    return MotionDiscriminator.from_transformer(
        transformer, num_blocks=3, head_blocks=(0, 1, 2), prompt_embeds=prompt, **kw
    )


def test_motion_discriminator_copies_trunk(transformer, prompt):
    disc = motion_disc(transformer, prompt, flow_encoder="vae")
    assert len(disc.trunk.blocks) == 3
    for i in range(3):
        mine, theirs = disc.trunk.blocks[i].state_dict(), transformer.blocks[i].state_dict()
        assert mine.keys() == theirs.keys()
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], atol=0, rtol=0)
            assert mine[k].data_ptr() != theirs[k].data_ptr()  # a copy, not shared
    torch.testing.assert_close(disc.trunk.patch_embedding.weight, transformer.patch_embedding.weight, atol=0, rtol=0)
    torch.testing.assert_close(disc.prompt_embeds, prompt, atol=0, rtol=0)
    assert disc.config["transformer"]["num_layers"] == 3
    # the pixel-patch variant gets a new embedding over the 3 flow channels
    patch = motion_disc(transformer, prompt, flow_encoder="patch")
    assert patch.trunk.patch_embedding.weight.shape == (64, 3, 4, 8, 8)


def test_motion_discriminator_shapes_and_gradients(transformer, prompt, vae):
    flow = torch.randn(2, 17, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2

    def encode(x):
        return normalize_latents(vae, vae.encode(x).latent_dist.mode())

    for kind in ("patch", "vae"):
        disc = motion_disc(transformer, prompt, flow_encoder=kind, encode=encode)
        o = flow.clone().requires_grad_(True)
        logits = disc(o)
        assert logits.shape == (2,) and logits.dtype == torch.float32
        logits.sum().backward()
        assert o.grad is not None and o.grad.abs().sum() > 0, kind
        assert all(p.grad is not None for p in disc.heads.parameters())

    latent_disc = motion_disc(transformer, prompt, input_kind="latent")
    z = torch.randn(2, 8, 5, 8, 8, requires_grad=True)
    out = latent_disc(z)
    assert out.shape == (2,)
    out.sum().backward()
    assert z.grad.abs().sum() > 0


def test_motion_discriminator_rejects_bad_config_and_input(transformer, prompt):
    with pytest.raises(ValueError, match="head_blocks"):
        MotionDiscriminator.from_transformer(transformer, 2, (0, 1, 2), prompt)
    with pytest.raises(ValueError, match="num_blocks=5"):
        MotionDiscriminator.from_transformer(transformer, 5, (0, 1, 2), prompt)
    with pytest.raises(ValueError, match="prompt_embeds"):
        MotionDiscriminator.from_transformer(transformer, 3, (0, 1, 2), torch.zeros(4, 16))
    disc = motion_disc(transformer, prompt, flow_encoder="vae")
    with pytest.raises(ValueError, match="encode callable"):
        disc(torch.zeros(1, 17, 3, 32, 32))
    with pytest.raises(ValueError, match="T=16 frames"):
        disc(torch.zeros(1, 16, 3, 32, 32), encode=lambda x: x)
    patch = motion_disc(transformer, prompt, flow_encoder="patch")
    with pytest.raises(ValueError, match="T = 1 \\+ 4k"):
        patch(torch.zeros(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 8, 8"):
        patch(torch.zeros(1, 5, 3, 36, 32))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        patch(torch.zeros(1, 5, 2, 32, 32))


def logistic_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return (F.softplus(-d_real) + F.softplus(d_fake)).mean()


def test_motion_discriminator_learns_to_separate_flows(transformer, prompt):
    torch.manual_seed(0)
    disc = motion_disc(transformer, prompt, flow_encoder="patch")
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    real = torch.ones(2, 5, 3, 16, 16)  # constant +1 flow
    fake = -torch.ones(2, 5, 3, 16, 16)
    fake[:, :, 2] = 1.0  # magnitude channel is positive for both; only the direction differs
    losses = []
    for _ in range(12):
        loss = logistic_d_loss(disc(real), disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        assert (disc(real) > disc(fake)).all()
    assert losses[-1] < 0.5 * losses[0], losses


def test_motion_discriminator_save_load_round_trip(tmp_path, transformer, prompt, vae):
    flow = torch.randn(2, 17, 3, 32, 32, generator=torch.Generator().manual_seed(4))

    def encode(x):
        return normalize_latents(vae, vae.encode(x).latent_dist.mode())

    for kind in ("patch", "vae"):
        disc = motion_disc(transformer, prompt, flow_encoder=kind, encode=encode).eval()
        with torch.no_grad():  # move the heads away from their init so the check is meaningful
            for p in disc.final.parameters():
                p.add_(0.1)
            before = disc(flow)
        disc.save_pretrained(tmp_path / kind)
        loaded = MotionDiscriminator.from_pretrained(tmp_path / kind, encode=encode).eval()
        with torch.no_grad():
            after = loaded(flow)
        torch.testing.assert_close(after, before, atol=0, rtol=0)
        assert loaded.config == disc.config
    with pytest.raises(ValueError, match="not a 'FeatureDiscriminator'"):
        FeatureDiscriminator.from_pretrained(tmp_path / "patch")


# ---------------------------------------------------------------- FeatureDiscriminator


def test_feature_discriminator_shapes_gradients_and_early_stop(transformer):
    disc = FeatureDiscriminator.from_transformer(transformer, block_ids=(0, 1, 2))
    assert not any(p is q for p in disc.parameters() for q in transformer.parameters())
    x, t, text = inputs()
    x.requires_grad_(True)
    calls, handles = count_block_calls(transformer.blocks)
    try:
        logits = disc(transformer, x, t, text)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]  # block 3 is never run
    assert logits.shape == (2,) and logits.dtype == torch.float32
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="4 blocks"):
        FeatureDiscriminator.from_transformer(transformer, block_ids=(1, 2, 4))


def test_feature_discriminator_learns_and_round_trips(tmp_path):
    fake_score = make_transformer(seed=3).requires_grad_(False)
    torch.manual_seed(0)
    disc = FeatureDiscriminator.from_transformer(fake_score, block_ids=(1, 2, 3), head_hidden=16)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(7)
    t = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 7, 32, generator=g)
    losses = []
    for _ in range(12):
        real = 0.5 * torch.randn(2, 8, 5, 8, 8, generator=g) + 1.0
        fake = 0.5 * torch.randn(2, 8, 5, 8, 8, generator=g) - 1.0
        loss = logistic_d_loss(disc(fake_score, real, t, text), disc(fake_score, fake, t, text))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses

    x, _, _ = inputs()
    with torch.no_grad():
        before = disc(fake_score, x, t, text)
    disc.save_pretrained(tmp_path / "fd")
    loaded = FeatureDiscriminator.from_pretrained(tmp_path / "fd")
    with torch.no_grad():
        after = loaded(fake_score, x, t, text)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
