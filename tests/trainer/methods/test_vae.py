"""The tiny VAE's loss: object pixels are found and weighted, the posterior mean (plus, optionally, noise scaled to
the latents' spread) is what gets decoded; a VAE run can start from a pipeline's VAE."""

import numpy as np
import torch

from trainer.data.synthetic import sample_clips
from trainer.loop import train_run
from trainer.methods.vae import foreground_mask, noisy_latents, vae_loss
from trainer.models.generator import Generator


def _clips(n: int, frames: int = 5) -> torch.Tensor:
    clips = np.stack([c[0] for c in sample_clips(n, seed=3, frames=frames, families={"translate": 1.0})])
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def test_foreground_mask_marks_the_object_and_not_the_background():
    x = _clips(6)
    mask = foreground_mask(x)
    share = mask.mean(dim=(1, 2, 3, 4))
    assert ((share > 0.02) & (share < 0.25)).all(), share  # an object, not the (plain or textured) background
    # the masked pixels are the saturated ones: far more chroma inside than outside
    chroma = x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)
    inside = (chroma * mask).sum() / mask.sum()
    outside = (chroma * (1 - mask)).sum() / (1 - mask).sum()
    assert inside > 4 * outside


def test_foreground_weight_scales_the_error_on_object_pixels_only():
    vae = Generator.build_tiny().vae.eval()
    x = _clips(2)
    with torch.no_grad():
        plain, _ = vae_loss(vae, x, kl_weight=0.0, motion_weight=0.0, foreground_weight=0.0)
        weighted, _ = vae_loss(vae, x, kl_weight=0.0, motion_weight=0.0, foreground_weight=5.0)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample  # deterministic: the posterior mean is decoded
    err = rec - x
    fg = foreground_mask(x)
    expected = plain + 5.0 * ((fg * err.abs()).mean() + (fg * err**2).mean())
    assert torch.allclose(weighted, expected, rtol=1e-4)
    assert weighted > plain


def test_latent_noise_follows_the_latents_scale():
    mu = torch.randn(64, 8, 3, 4, 4) * torch.linspace(0.2, 3.0, 8).view(1, 8, 1, 1, 1)
    assert noisy_latents(mu, 0.0) is mu

    def noise(scale):
        return noisy_latents(scale * mu, 0.5, torch.Generator().manual_seed(1)) - scale * mu

    # the encoder cannot outgrow it: ten times larger latents get ten times the noise
    assert torch.allclose(noise(10.0), 10.0 * noise(1.0), rtol=1e-4, atol=1e-5)
    rel = noise(1.0) / mu.std(dim=(0, 2, 3, 4), keepdim=True)
    per_clip = rel.flatten(1).std(dim=1)
    assert per_clip.max() < 0.5 * 1.15  # a <= latent_noise, up to the sampling error of 384 values
    # a ~ U(0, 0.5): E[a^2] = 0.5^2 / 3, the same in every channel
    per_channel = rel.pow(2).mean(dim=(0, 2, 3, 4))
    assert torch.allclose(per_channel, torch.full((8,), 0.25 / 3), rtol=0.25), per_channel


def test_a_vae_run_fine_tunes_the_init_pipelines_vae_and_keeps_the_rest(tiny_pipeline_dir, tmp_path, differing_weights):
    cfg = {
        "method": "vae",
        "init": str(tiny_pipeline_dir),
        "seed": 5,  # a freshly built tiny generator would differ from the init's everywhere
        "steps": 2,
        "batch_size": 2,
        "checkpoint_every": 2,
        "data": {"num_videos": 4, "num_frames": 5},
        "method_cfg": {"clip_frames": 5, "latent_noise": 0.3},
    }
    export = tmp_path / "run" / "export"
    train_run(cfg, tmp_path / "run", progress_bar=False)
    changed = differing_weights(tiny_pipeline_dir, export)
    assert changed and all(name.startswith("vae/") for name in changed), changed
