"""Training the tiny video VAE (``AutoencoderKLWan``): reconstruction + KL, so decoded videos mean something.

    L = mean(w |x_rec - x|) + mean(w (x_rec - x)^2) + w_motion |d/dt x_rec - d/dt x|_1 + w_kl KL(q(z|x) || N(0, I))
    w = 1 + foreground_weight * [pixel differs from the clip's background]
    x_rec = decode(mu + a * std_c(mu) * n),   a ~ U(0, latent_noise) per clip,  n ~ N(0, I)

Why each part:
- The foreground weight: the objects cover ~10% of a synthetic frame. With an unweighted loss the VAE first learns
  the dark background and then sits on that plateau (a grey smudge where the object was) for hundreds of steps, even
  when over-fitting 8 images; weighting the object pixels takes it off the plateau at once.
- ``x_rec`` decodes the posterior mean: diffusion trains on posterior means (``encode_clips``), and at initialisation
  the posterior's sampling noise (std ~1) drowns the small objects' signal. The KL term still bounds the latents.
- ``latent_noise`` (on in the presets' defaults): a diffusion model's latents miss by a fraction of their spread, and a
  decoder that only saw exact means turns such misses into flicker. Noise scaled to each channel's spread cannot be
  outgrown by scaling the latents up, so the encoder must code what matters above it (bench/README.md, "Two levers
  aimed at the flicker"). ``--init <pipeline>`` fine-tunes that pipeline's VAE instead of a new one:

      motionlab train vae --init tiny-teacher --steps 500 --set optim.lr=2e-4 --set method_cfg.latent_noise=0.8
- The temporal-difference term weights what this project cares about: a VAE that blurs motion would make every
  motion metric downstream meaningless.

Training uses short clips (the Wan VAE is causal and chunked); the export records the latents' per-channel mean and
std in the VAE config (``latents_mean`` / ``latents_std``, as Wan does) so that diffusion sees unit-variance latents.
"""

from __future__ import annotations

import torch

from trainer.config import VAEConfig
from trainer.data.streams import IndexStream, load_clips
from trainer.locations import resolve_checkpoint
from trainer.methods.base import Method
from trainer.models.generator import Generator

# A pixel whose colour is this far (on [-1, 1], any channel) from its clip's median colour is foreground: ~38/255,
# above the textured backgrounds' +-9/255 and below every object's contrast (> 100/255).
FOREGROUND_THRESHOLD = 0.3


def foreground_mask(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, T, H, W]`` float mask of the pixels of ``x`` ``[B, 3, T, H, W]`` (in [-1, 1]) that stand out from
    their clip's background, estimated as the clip's per-channel median colour."""
    background = x.flatten(2).median(dim=2).values[..., None, None, None]
    return ((x - background).abs().amax(dim=1, keepdim=True) > FOREGROUND_THRESHOLD).to(x.dtype)


def noisy_latents(mu: torch.Tensor, latent_noise: float, generator=None) -> torch.Tensor:
    """``mu + a * std_c * n``: per clip ``a ~ U(0, latent_noise)``, ``std_c`` each channel's spread over the batch
    (detached, so the noise follows the latents' scale instead of being a target the encoder can grow away from)."""
    if latent_noise == 0:
        return mu
    std = mu.detach().std(dim=(0, 2, 3, 4), keepdim=True)
    a = torch.rand((mu.shape[0],) + (1,) * (mu.dim() - 1), generator=generator).to(mu) * latent_noise
    n = torch.randn(mu.shape, generator=generator).to(mu)
    return mu + a * std * n


def vae_loss(
    vae,
    x: torch.Tensor,
    kl_weight: float,
    motion_weight: float,
    foreground_weight: float = 0.0,
    latent_noise: float = 0.0,
):
    post = vae.encode(x).latent_dist
    rec = vae.decode(noisy_latents(post.mode(), latent_noise)).sample
    w = 1.0 + foreground_weight * foreground_mask(x)
    err = rec - x
    l1 = (w * err.abs()).mean()
    l2 = (w * err**2).mean()
    motion = (rec.diff(dim=2) - x.diff(dim=2)).abs().mean() if x.shape[2] > 1 else rec.new_zeros(())
    kl = post.kl().mean() / x[0].numel()
    loss = l1 + l2 + motion_weight * motion + kl_weight * kl
    return loss, {"l1": err.abs().mean().detach(), "motion": motion.detach(), "kl": kl.detach()}


class VAE(Method):
    name = "vae"
    Config = VAEConfig

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        if cfg.preset != "tiny":
            raise ValueError("config field 'preset': VAE training is for the tiny preset (full scale uses Wan's VAE)")
        if cfg.init is None:
            self.gen = Generator.build_tiny(seed=cfg.seed)
        else:  # fine-tune that pipeline's VAE; the export keeps its transformer and text encoder
            self.gen = Generator.from_pretrained(resolve_checkpoint(cfg.init))
        self.gen.to(device)
        self.networks = {"vae": self.gen.vae}
        self.unwrapped_networks = ("vae",)  # its loss calls encode/decode, not forward (see the loop)

    def setup_data(self, rank, world_size):
        clips, _ = load_clips(self.cfg.data, num_frames=self.mcfg.clip_frames)
        self.clips = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()  # uint8 [N, 3, T, H, W]
        self.stream = IndexStream(len(self.clips), self.cfg.data.seed, rank, world_size)

    def train_step(self, step, ctx):
        def loss_fn():
            x = self.clips[self.stream.next(self.micro_batch)].float().to(self.device) / 127.5 - 1
            m = self.mcfg
            return vae_loss(ctx.net("vae"), x, m.kl_weight, m.motion_weight, m.foreground_weight, m.latent_noise)

        return ctx.update("vae", loss_fn)

    @torch.no_grad()
    def export(self, out_dir, weights):
        vae = weights["vae"].eval()
        # Per-channel statistics of the posterior means over (a sample of) the training clips.
        x = self.clips[:256].float().to(self.device) / 127.5 - 1
        z = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mode() for i in range(0, len(x), 32)])
        mean = z.mean(dim=(0, 2, 3, 4)).tolist()
        std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
        vae.register_to_config(latents_mean=mean, latents_std=std)
        self.gen.vae = vae
        return self.gen.save_pretrained(out_dir)

    def state_dict(self):
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state):
        self.stream.load_state_dict(state["data"])
