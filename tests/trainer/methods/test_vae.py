"""The tiny VAE's loss: object pixels are found and weighted, and the posterior mean is what gets decoded."""

import numpy as np
import torch

from trainer.data.synthetic import sample_clips
from trainer.methods.vae import foreground_mask, vae_loss
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
