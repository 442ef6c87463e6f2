"""VDOT: few-step distillation with optimal-transport distillation (OTD) + DMD + a real-data GAN.

Networks: the frozen teacher (real score, sampled with CFG), the trainable fake score and few-step generator
(as in :class:`~trainer.methods.dmd.DMD`, which this class extends), and a :class:`FeatureDiscriminator`:
three register tokens cross-attending to blocks ``disc_blocks`` of the fake score, concatenated -> linear ->
logit.

One training iteration ``step`` (the paper's alternation; ``critic_steps`` = TTUR ratio, 5 in the paper):

* even ``step`` (distribution matching):
    1. generator update with ``L_OTD + lambda_dmd * L_DMD``. Both terms use the same noisy ``x_t`` of the
       generator sample: ``x0_real`` from the teacher with CFG, ``x0_fake`` from the fake score;
       ``L_OTD = otd_loss(x0_hat, x0_fake, x0_real, ot_reg)`` (entropic OT plan between the ``h*w`` spatial
       points of ``x0_fake`` and ``x0_real``, see ``trainer/losses/ot.py``);
    2. ``critic_steps`` fake-score updates with the denoising (flow-matching) loss on generator samples;
* odd ``step`` (adversarial):
    3. generator update with ``lambda_gan * L_GAN``, relativistic: ``-(D(x_t_fake) - D(x_t_real))``;
    4. ``critic_steps`` discriminator updates with the opposite loss ``D(x_t_fake) - D(x_t_real)``.

``x_t_real``: a real clip (VAE latents, cached once per run) noised to the same sigma as the paired generator
sample; the generator is conditioned on that clip's caption ("the real video corresponding to the prompt").

Does the discriminator loss train the fake score's weights? **No**: step 4 updates only the register tokens
and the classifier (``disc``, their own optimizer and ``disc_lr``); the fake-score blocks are a frozen feature
extractor during it, and are trained by the denoising loss alone. Why: the paper writes the odd critic
objective as ``L_GAN(tau)`` (the discriminator's parameters) next to ``L_Denoising(phi)``; it presents the
register-token head as a way to *reuse* the fake score's features ("saves parameters"); and the fake score
must stay the denoiser of the generator's distribution, since ``x0_fake`` enters both the DMD and the OTD
gradient -- a GAN loss on its weights would bias them. (DMD2 instead trains the backbone with its classifier
loss; that is not what is done here.) The generator's GAN gradient does flow through the fake-score blocks to
``x_t_fake``.

Ablations (VDOT table), each a config switch: ``use_otd=false, use_gan=false`` = DMD only (Self-Forcing
style); ``use_gan=false`` = without GAN (every step is a distribution-matching step); ``use_otd=false`` =
without OTD.

Random draws (noise, sigmas, backward-simulation steps) come from one stream per update kind (``generator_dm``,
``fake_score``, ``generator_gan``, ``disc``; ``trainer/random_streams.py``), kept in ``state_dict``: a switch
changes only the draws of the terms it owns. Without GAN every step is a distribution-matching step, and the
``k``-th one draws the same prompts, noise and sigmas as the ``k``-th distribution-matching step of the full method.

Initialisation: the generator from ``init`` (at full scale required: a DMD-distilled student), the fake score from
``init``'s export when it kept one (``fake_score/``, see ``trainer/methods/dmd.py``), else from the teacher.

Logging: an iteration runs one phase only, and the loop logs every ``log_every``-th iteration; so every record
carries the latest value of every key of both phases (kept in, and resumed from, ``state_dict``).

    motionlab train vdot --preset tiny --teacher tiny-teacher
    python -m pytest tests/trainer/methods/test_vdot.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from trainer.config import ConfigError, VDOTConfig
from trainer.losses.dmd import dmd_loss
from trainer.losses.ot import otd_loss
from trainer.methods.dmd import DMD, require_student_init, sample_dmd_sigmas
from trainer.methods.sft import LatentData, ShardLatentData
from trainer.models.discriminators import FeatureDiscriminator
from trainer.random_streams import RandomStreams, randn_like
from trainer.sampling import renoise


def relativistic_g_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor, form: str = "linear") -> torch.Tensor:
    """Generator side of the relativistic GAN, mean over pairs ``i`` (fake i is paired with real i).

    ``linear`` (the paper): ``-(D_f - D_r)``; ``softplus``: ``softplus(-(D_f - D_r))`` (RpGAN, bounded below).
    """
    _check_pair(logits_fake, logits_real)
    gap = logits_fake.float() - logits_real.float()
    return (-gap).mean() if form == "linear" else F.softplus(-gap).mean()


def relativistic_d_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor, form: str = "linear") -> torch.Tensor:
    """Discriminator side, the opposite: ``linear`` ``D_f - D_r``; ``softplus`` ``softplus(D_f - D_r)``."""
    _check_pair(logits_fake, logits_real)
    gap = logits_fake.float() - logits_real.float()
    return gap.mean() if form == "linear" else F.softplus(gap).mean()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"logits must be paired per-sample vectors [B]; got {tuple(a.shape)} and {tuple(b.shape)}")


class VDOT(DMD):
    name = "vdot"
    Config = VDOTConfig

    def __init__(self, cfg, device, dtype):
        require_student_init(cfg, "VDOT")
        m = cfg.method_cfg
        if not (m.use_otd or m.use_dmd):
            raise ConfigError(
                "method_cfg.use_otd",
                "at least one of use_otd / use_dmd must be true (the even-step generator loss would be empty)",
            )
        super().__init__(cfg, device, dtype)
        if m.use_gan:
            blocks = [int(b) for b in m.disc_blocks]
            depth = len(self.fake_score.blocks)
            if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0 or max(blocks) >= depth:
                raise ConfigError(
                    "method_cfg.disc_blocks",
                    f"need distinct 0-based block indices below the fake score's {depth} blocks, got {m.disc_blocks}",
                )
            self.disc = FeatureDiscriminator.from_transformer(
                self.fake_score, blocks, head_hidden=m.disc_head_hidden
            ).to(device)
            self.disc.requires_grad_(True)
            self.networks["disc"] = self.disc
            self.learning_rates["disc"] = m.disc_lr or cfg.optim.lr
        self._last_logs: dict[str, float] = {}

    # -- data: DMD's prompts + cached real latents with their captions ---------------------------------------
    def setup_data(self, rank, world_size):
        super().setup_data(rank, world_size)
        self.streams = RandomStreams(self.cfg.seed, rank)
        if not self.mcfg.use_gan:
            return
        d = self.cfg.data
        if self.shards is not None:  # the shards' clips: latents of the teacher's VAE (checked) and their captions
            self.shards.check_against(self.gen, d, latents=True)
            self.real = ShardLatentData(self.gen, self.shards, d.seed + 2, rank, world_size)
            return
        real = (
            d.model_copy(update={"num_videos": self.mcfg.num_real, "seed": d.seed + 2})
            if d.source == "synthetic"
            else d
        )
        # The real latents come from the teacher's VAE (the generator's latent space); cached per (data, VAE).
        self.real = LatentData(
            self.gen, SimpleNamespace(data=real, init=str(self.cfg.teacher)), self.run_dir, rank, world_size
        )

    # -- even steps: L_OTD + lambda L_DMD --------------------------------------------------------------------
    def dm_loss(
        self, x0_hat: torch.Tensor, cond: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        m = self.mcfg
        x0_real, x0_fake = self.real_and_fake_x0(x0_hat, cond, rng)  # one shared x_t for both terms
        loss = x0_hat.new_zeros((), dtype=torch.float32)
        logs = {}
        if m.use_otd:
            l_otd = otd_loss(x0_hat, x0_fake, x0_real, m.ot_reg, max_iter=m.ot_max_iter, tol=m.ot_tol)
            loss = loss + l_otd
            logs["otd"] = l_otd.detach()
        if m.use_dmd:
            l_dmd = dmd_loss(x0_hat, x0_real, x0_fake)
            loss = loss + m.lambda_dmd * l_dmd
            logs["dmd"] = l_dmd.detach()
        return loss, logs

    def generator_dm_update(self, ctx) -> dict:
        def loss_fn():
            rng = self.random_stream("generator_dm")
            cond = self.next_cond()
            x0_hat = self.generator_sample(ctx.net("generator"), cond, grad=True, rng=rng)
            return self.dm_loss(x0_hat, cond, rng)

        return ctx.update("generator", loss_fn)

    # -- odd steps: relativistic GAN on noisy latents --------------------------------------------------------
    def noised_pair(self, x0_fake: torch.Tensor, x0_real: torch.Tensor, rng: torch.Generator | None = None):
        """Both noised to the same sigma (per pair), own noise -> ``(x_t_fake, x_t_real, 1000 sigma)``."""
        sigma = sample_dmd_sigmas(x0_fake.shape[0], self.mcfg, self.device, rng)
        x_t_fake = renoise(x0_fake, sigma, randn_like(x0_fake, rng))
        x_t_real = renoise(x0_real, sigma, randn_like(x0_real, rng))
        return x_t_fake, x_t_real, sigma * 1000.0

    def generator_gan_update(self, ctx) -> dict:
        m = self.mcfg

        def loss_fn():
            rng = self.random_stream("generator_gan")
            x0_real, cond, _ = self.real.next(self.micro_batch, self.device)
            x0_hat = self.generator_sample(ctx.net("generator"), cond, grad=True, rng=rng)
            x_t_fake, x_t_real, t = self.noised_pair(x0_hat, x0_real, rng)
            # The fake score and D are frozen in this update (the loop sets requires_grad); the gradient
            # reaches x_t_fake through the fake-score blocks. D(x_t_real) is a constant for the generator: no
            # graph.
            d_fake = self.disc(self.fake_score, x_t_fake, t, cond)
            with torch.no_grad():
                d_real = self.disc(self.fake_score, x_t_real, t, cond)
            loss = m.lambda_gan * relativistic_g_loss(d_fake, d_real, m.gan_form)
            return loss, {"d_fake": d_fake.mean().detach(), "d_real": d_real.mean().detach()}

        return ctx.update("generator", loss_fn)

    def disc_update(self, ctx) -> dict:
        m = self.mcfg

        def loss_fn():
            rng = self.random_stream("disc")
            x0_real, cond, _ = self.real.next(self.micro_batch, self.device)
            x0_fake = self.generator_sample(self.generator, cond, grad=False, rng=rng)
            x_t_fake, x_t_real, t = self.noised_pair(x0_fake, x0_real, rng)
            b = x0_fake.shape[0]
            # One batched pass; only the register tokens and the classifier are trained (see the module doc).
            logits = ctx.net("disc")(
                self.fake_score, torch.cat([x_t_fake, x_t_real]), torch.cat([t, t]), torch.cat([cond, cond])
            )
            d_fake, d_real = logits[:b], logits[b:]
            loss = relativistic_d_loss(d_fake, d_real, m.gan_form)
            return loss, {
                "d_fake": d_fake.mean().detach(),
                "d_real": d_real.mean().detach(),
                "acc": (d_real > d_fake).float().mean(),
            }

        return ctx.update("disc", loss_fn)

    # -- one iteration ---------------------------------------------------------------------------------------
    def train_step(self, step, ctx):
        m = self.mcfg
        if m.use_gan and step % 2 == 1:
            logs = {k.replace("generator/", "generator_gan/"): v for k, v in self.generator_gan_update(ctx).items()}
            for _ in range(m.critic_steps):
                disc_logs = self.disc_update(ctx)
            logs.update(disc_logs)
        else:
            logs = self.generator_dm_update(ctx)
            logs.update(self.critic_updates(ctx))
        logs["phase_gan"] = float(m.use_gan and step % 2 == 1)
        self._last_logs.update({k: float(v) for k, v in logs.items()})
        return dict(self._last_logs)

    def state_dict(self):
        state = {**super().state_dict(), "last_logs": dict(self._last_logs), "streams": self.streams.state_dict()}
        if self.mcfg.use_gan:
            state["real"] = self.real.stream.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._last_logs = dict(state.get("last_logs", {}))
        self.streams.load_state_dict(state.get("streams", {"counts": {}}))
        if self.mcfg.use_gan:
            self.real.stream.load_state_dict(state["real"])
