"""DMD: distribution-matching distillation of a multi-step teacher into a few-step generator (DMD2 style).

Networks: the frozen teacher ``v_real`` (sampled with CFG), a trainable fake score ``v_fake`` and the few-step
generator ``G``, both initialised from the teacher (``G`` from ``init`` when given). One iteration:

1. generator update: ``x0_hat`` by backward simulation over the distilled sigmas; ``sigma ~ U[0.02, 0.98]``
   (shifted); ``grad = (x0_fake - x0_real) / mean|x0_hat - x0_real|``; ``L = 0.5 ||x0_hat - sg(x0_hat - grad)||^2``;
2. ``critic_steps`` fake-score updates: flow matching on detached generator samples (TTUR).

The export is the student's pipeline plus the fake score in ``fake_score/`` (diffusers format, not listed in
``model_index.json``: stock ``WanPipeline`` loads the directory as a plain pipeline). A run whose ``init`` is such an
export (a zoo name, the export directory, or the run directory) continues that fake score instead of copying the
teacher again: MoGAN and VDOT started from a DMD run keep DMD's critic of the very student they start from.

    motionlab train dmd --preset tiny --teacher tiny-teacher
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from trainer.config import ConfigError, DMDConfig
from trainer.data.shards import attach_shards
from trainer.data.streams import IndexStream, encode_captions, load_captions
from trainer.losses.dmd import denoising_loss, dmd_loss
from trainer.methods.base import Method
from trainer.models.generator import FULL_MODEL_SUBDIR, Generator, weights_dir
from trainer.random_streams import randn, randn_like
from trainer.sampling import (
    few_step_sigmas,
    few_step_unroll,
    predict_velocity,
    renoise,
    shift_sigmas,
    x0_from_v,
)
from trainer.zoo import FAKE_SCORE_DIR, find_fake_score, resolve_checkpoint

log = logging.getLogger(__name__)


def sample_dmd_sigmas(n: int, mcfg, device, generator: torch.Generator | None = None) -> torch.Tensor:
    u = mcfg.sigma_min + (mcfg.sigma_max - mcfg.sigma_min) * torch.rand(n, generator=generator)
    return shift_sigmas(u, mcfg.shift).to(device)


def require_student_init(cfg, method: str) -> None:
    """The full presets of MoGAN and VDOT post-train a DMD-distilled student: ``init`` must name it (checked before
    any weights load)."""
    if cfg.preset == "full" and not cfg.init:
        raise ConfigError(
            "init",
            f"the full {method} preset post-trains a DMD-distilled student and continues its "
            f"fake score; pass --init with the DMD run directory, its export/ or its zoo name "
            f"(a run of `motionlab train dmd --preset full`)",
        )


class DMD(Method):
    name = "dmd"
    Config = DMDConfig
    product_network = "generator"

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        if not cfg.teacher and cfg.preset == "full":
            cfg.teacher = str(weights_dir() / FULL_MODEL_SUBDIR)
        if not cfg.teacher:
            raise ValueError("config field 'teacher': DMD needs a teacher checkpoint (e.g. --teacher tiny-teacher)")
        if not all(0 < t <= 1000 for t in self.mcfg.timesteps):
            raise ValueError(
                f"config field 'method_cfg.timesteps': values must lie in (0, 1000], got {self.mcfg.timesteps}"
            )
        shards = cfg.data.source == "shards"  # embeddings were preprocessed: the text encoder stays on disk
        self.gen = Generator.from_pretrained(resolve_checkpoint(cfg.teacher), device=device, text_encoder=not shards)
        self.shards = attach_shards(self.gen, cfg) if shards else None
        self.teacher = self.gen.transformer  # frozen real score
        init_dir = resolve_checkpoint(cfg.init) if cfg.init else None
        init = (
            Generator.from_pretrained(init_dir, device=device, text_encoder=False).transformer
            if init_dir
            else self.teacher
        )
        self.generator = copy.deepcopy(init)
        self.fake_score = self.initial_fake_score(init_dir)
        for m in (self.generator, self.fake_score):
            m.requires_grad_(True)
            if cfg.gradient_checkpointing:
                m.enable_gradient_checkpointing()
        self.networks = {"generator": self.generator, "fake_score": self.fake_score}
        self.frozen_networks = {"teacher": self.teacher}  # the VAE and text encoder stay replicated (small)
        self.learning_rates = {"fake_score": self.mcfg.fake_lr or cfg.optim.lr}
        self.ema_networks = ("generator",)
        self.sigmas = few_step_sigmas(self.mcfg.timesteps).to(device)
        self.latent_shape = self.gen.latent_shape(cfg.data.num_frames, cfg.data.height, cfg.data.width)[1:]
        self.train_sampling = self.data_shaped(self.gen.sampling.few_step(self.mcfg.timesteps))

    def initial_fake_score(self, init_dir: Path | None) -> torch.nn.Module:
        """The fake score ``init`` was trained with, if its export kept one; else a copy of the teacher."""
        found = find_fake_score(init_dir) if init_dir is not None else None
        if found is None:
            if init_dir is not None:
                log.warning(
                    "fake score: %s has no %s/ (it is not the export of a DMD, MoGAN or VDOT run); the fake "
                    "score starts as a copy of the teacher %s",
                    init_dir,
                    FAKE_SCORE_DIR,
                    self.cfg.teacher,
                )
            return copy.deepcopy(self.teacher)
        fake = type(self.teacher).from_pretrained(found, torch_dtype=self.teacher.dtype).to(self.device)
        want, got = _architecture(self.teacher), _architecture(fake)
        if want != got:
            key = next(k for k in sorted(want.keys() | got.keys()) if want.get(k) != got.get(k))
            raise ConfigError(
                "init",
                f"the fake score in {found} does not fit the teacher {self.cfg.teacher} "
                f"({key}: {got.get(key)!r} vs the teacher's {want.get(key)!r})",
            )
        log.info("fake score: continued from %s", found)
        return fake

    # -- data: prompts only (DMD needs no real videos) ---------------------------------------------------------
    def setup_data(self, rank, world_size):
        if self.shards is not None:  # prompt embeddings streamed from the shards; ``next`` yields batches
            self.empty = self.gen.encode_prompts([self.gen.sampling.negative_prompt]).float().cpu()
            self.prompts = self.shards.reader("prompts", ("text",), self.cfg.data.seed, rank, world_size)
            return
        captions = self._captions()
        self.text, self.text_index = encode_captions(self.gen, captions)
        self.empty = self.gen.encode_prompts([self.gen.sampling.negative_prompt]).float().cpu()
        self.prompts = IndexStream(len(captions), self.cfg.data.seed, rank, world_size)

    def _captions(self) -> list[str]:
        d = self.cfg.data
        if d.source == "synthetic":
            from trainer.data.synthetic import sample_clips

            return [
                c[1]
                for c in sample_clips(
                    self.mcfg.num_prompts,
                    d.seed + 1,
                    frames=2,
                    height=d.height,
                    width=d.width,
                    families=d.families,
                    split="train",
                )
            ]
        return load_captions(d)

    def next_cond(self):
        idx = self.prompts.next(self.micro_batch)  # indices; from shards, the batch itself
        if self.shards is not None:
            return idx["text"].to(self.device)
        return self.text[self.text_index[idx]].to(self.device)

    # -- the pieces ----------------------------------------------------------------------------------------------
    def generator_sample(self, generator, cond, grad: bool, rng: torch.Generator | None = None) -> torch.Tensor:
        """Backward simulation: run distilled steps ``1..i-1`` without gradient, step ``i`` (uniform) with it.

        ``rng``: where the noise and ``i`` come from (None: the global RNG)."""
        b = cond.shape[0]
        noise = randn((b, *self.latent_shape), rng, self.device)
        stop = self.agreed_randint(1, len(self.sigmas) + 1, rng)
        renoise = lambda shape, device, dtype: randn((b, *shape), rng, device, dtype)
        with torch.set_grad_enabled(grad):
            return few_step_unroll(generator, noise, cond, self.sigmas, renoise, stop_at=stop, grad_last=grad)

    @torch.no_grad()
    def real_and_fake_x0(self, x0_hat, cond, rng: torch.Generator | None = None):
        """``x0_hat`` re-noised to a DMD sigma, then denoised by the teacher (with CFG) and by the fake score."""
        b = x0_hat.shape[0]
        sigma = sample_dmd_sigmas(b, self.mcfg, self.device, rng)
        x_sigma = renoise(x0_hat.detach(), sigma, randn_like(x0_hat, rng))
        uncond = self.empty.to(self.device).expand(b, -1, -1)
        v_real = predict_velocity(self.teacher, x_sigma, sigma, cond, uncond, self.mcfg.real_guidance)
        v_fake = predict_velocity(self.fake_score, x_sigma, sigma, cond)
        return x0_from_v(x_sigma, sigma, v_real), x0_from_v(x_sigma, sigma, v_fake)

    def dmd_loss(self, x0_hat, cond, rng: torch.Generator | None = None):
        return dmd_loss(x0_hat, *self.real_and_fake_x0(x0_hat, cond, rng))

    def generator_dmd_update(self, ctx):
        def loss_fn():
            rng = self.random_stream("generator_dmd")
            cond = self.next_cond()
            x0_hat = self.generator_sample(ctx.net("generator"), cond, grad=True, rng=rng)
            return self.dmd_loss(x0_hat, cond, rng), {}

        return ctx.update("generator", loss_fn)

    def fake_score_update(self, ctx):
        def loss_fn():
            rng = self.random_stream("fake_score")
            cond = self.next_cond()
            x0 = self.generator_sample(self.generator, cond, grad=False, rng=rng)
            sigma = sample_dmd_sigmas(x0.shape[0], self.mcfg, self.device, rng)
            eps = randn_like(x0, rng)
            v = ctx.net("fake_score")(renoise(x0, sigma, eps), sigma * 1000.0, cond, return_dict=False)[0]
            return denoising_loss(v, x0, eps), {}

        return ctx.update("fake_score", loss_fn)

    def critic_updates(self, ctx) -> dict:
        logs = {}
        for _ in range(self.mcfg.critic_steps):
            logs = self.fake_score_update(ctx)
        return logs

    # -- one iteration -------------------------------------------------------------------------------------------
    def train_step(self, step, ctx):
        logs = self.generator_dmd_update(ctx)
        logs.update(self.critic_updates(ctx))
        return logs

    def product_sampling(self):
        return self.train_sampling  # the few-step sampler over the distilled timesteps

    def export(self, out_dir, weights):
        # the fake score travels with the student (see the module doc); a run that trained none (MoGAN without
        # DMD) exports the student alone
        extra = {FAKE_SCORE_DIR: weights["fake_score"]} if "fake_score" in weights else None
        return self.gen.save_pretrained(
            out_dir, transformer=weights["generator"], sampling=self.product_sampling(), extra=extra
        )

    def state_dict(self):
        return {"prompts": self.prompts.state_dict()}

    def load_state_dict(self, state):
        self.prompts.load_state_dict(state["prompts"])


def _architecture(transformer) -> dict:
    """A transformer's config without diffusers' bookkeeping keys (``_class_name``, ``_diffusers_version``...)."""
    return json.loads(json.dumps({k: v for k, v in transformer.config.items() if not k.startswith("_")}))
