"""DMD: distribution-matching distillation of a multi-step teacher into a few-step generator (DMD2 style).

Networks: the frozen teacher ``v_real`` (sampled with CFG), a trainable fake score ``v_fake`` and the few-step
generator ``G``, both initialised from the teacher. One iteration:

1. generator update: ``x0_hat`` by backward simulation over the distilled sigmas; ``sigma ~ U[0.02, 0.98]``
   (shifted); ``grad = (x0_fake - x0_real) / mean|x0_hat - x0_real|``; ``L = 0.5 ||x0_hat - sg(x0_hat - grad)||^2``;
2. ``critic_steps`` fake-score updates: flow matching on detached generator samples (TTUR).

    motionlab train dmd --preset tiny --teacher tiny-teacher
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from trainer.config import rng
from trainer.data.shards import attach_shards
from trainer.data.streams import IndexStream, encode_captions, load_captions
from trainer.losses.dmd import denoising_loss, dmd_loss
from trainer.methods.base import Method
from trainer.models.generator import FULL_MODEL_SUBDIR, Generator, weights_dir
from trainer.sampling import few_step_sigmas, few_step_unroll, predict_velocity, shift_sigmas


@dataclass
class Config:
    timesteps: list[float] = field(default_factory=lambda: [1000.0, 757.0, 522.0])
    real_guidance: float = field(default=4.0, metadata=rng(1.0, 50.0))  # teacher CFG (standard form)
    critic_steps: int = field(default=4, metadata=rng(1, 100))  # fake-score updates per generator update
    sigma_min: float = field(default=0.02, metadata=rng(0.0, 1.0))
    sigma_max: float = field(default=0.98, metadata=rng(0.0, 1.0))
    shift: float = field(default=2.0, metadata=rng(0.01, 100.0))
    fake_lr: float | None = field(default=None, metadata=rng(0.0, 1.0))  # default: optim.lr
    num_prompts: int = field(default=2000, metadata=rng(1, 10_000_000))


def sample_dmd_sigmas(n: int, mcfg, device) -> torch.Tensor:
    u = mcfg.sigma_min + (mcfg.sigma_max - mcfg.sigma_min) * torch.rand(n)
    return shift_sigmas(u, mcfg.shift).to(device)


class DMD(Method):
    name = "dmd"
    Config = Config
    product_network = "generator"

    @staticmethod
    def defaults(preset: str) -> dict:
        if preset == "tiny":
            return {"steps": 300, "batch_size": 8, "checkpoint_every": 50, "log_every": 10,
                    "optim": {"lr": 5e-5, "betas": [0.0, 0.999], "weight_decay": 0.0},
                    "data": {"families": {"translate": 4.0, "bounce": 1.0, "rotate": 1.0, "pan": 1.0,
                                          "scale": 1.0, "two_objects": 1.0, "static": 0.5}}}
        return {"steps": 800, "batch_size": 16, "checkpoint_every": 100, "gradient_checkpointing": True,
                "optim": {"lr": 1e-5, "betas": [0.0, 0.999]},
                "data": {"source": "folder", "num_frames": 81, "height": 480, "width": 832}}

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        from trainer.zoo import resolve_checkpoint

        if not cfg.teacher and cfg.preset == "full":
            cfg.teacher = str(weights_dir() / FULL_MODEL_SUBDIR)
        if not cfg.teacher:
            raise ValueError("config field 'teacher': DMD needs a teacher checkpoint (e.g. --teacher tiny-teacher)")
        if not all(0 < t <= 1000 for t in self.mcfg.timesteps):
            raise ValueError(f"config field 'method_cfg.timesteps': values must lie in (0, 1000], "
                             f"got {self.mcfg.timesteps}")
        shards = cfg.data.source == "shards"  # embeddings were preprocessed: the text encoder stays on disk
        self.gen = Generator.from_pretrained(resolve_checkpoint(cfg.teacher), device=device, text_encoder=not shards)
        self.shards = attach_shards(self.gen, cfg) if shards else None
        self.teacher = self.gen.transformer  # frozen real score
        init = Generator.from_pretrained(resolve_checkpoint(cfg.init), device=device, text_encoder=False).transformer \
            if cfg.init else self.teacher
        self.generator = copy.deepcopy(init)
        self.fake_score = copy.deepcopy(self.teacher)
        for m in (self.generator, self.fake_score):
            m.requires_grad_(True)
            if cfg.gradient_checkpointing:
                m.enable_gradient_checkpointing()
        self.networks = {"generator": self.generator, "fake_score": self.fake_score}
        self.frozen_networks = {"teacher": self.teacher}  # the VAE and text encoder stay replicated (small)
        self.learning_rates = {"fake_score": self.mcfg.fake_lr or cfg.optim.lr}
        self.ema_networks = ("generator",)
        self.sigmas = few_step_sigmas(self.mcfg.timesteps).to(device)
        s = self.gen.sampling
        self.latent_shape = self.gen.latent_shape(cfg.data.num_frames, cfg.data.height, cfg.data.width)[1:]
        self.train_sampling = s.few_step(self.mcfg.timesteps)

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

            return [c[1] for c in sample_clips(self.mcfg.num_prompts, d.seed + 1, frames=2, height=d.height,
                                               width=d.width, families=d.families, split="train")]
        return load_captions(d)

    def next_cond(self):
        idx = self.prompts.next(self.micro_batch)  # indices; from shards, the batch itself
        if self.shards is not None:
            return idx["text"].to(self.device)
        return self.text[self.text_index[idx]].to(self.device)

    # -- the pieces ----------------------------------------------------------------------------------------------
    def generator_sample(self, generator, cond, grad: bool) -> torch.Tensor:
        """Backward simulation: run distilled steps ``1..i-1`` without gradient, step ``i`` (uniform) with it."""
        b = cond.shape[0]
        noise = torch.randn(b, *self.latent_shape, device=self.device)
        stop = self.agreed_randint(1, len(self.sigmas) + 1)
        renoise = lambda shape, device, dtype: torch.randn(b, *shape, device=device, dtype=dtype)
        with torch.set_grad_enabled(grad):
            return few_step_unroll(generator, noise, cond, self.sigmas, renoise, stop_at=stop, grad_last=grad)

    def dmd_loss(self, x0_hat, cond):
        b = x0_hat.shape[0]
        sigma = sample_dmd_sigmas(b, self.mcfg, self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        with torch.no_grad():
            x_sigma = (1 - s) * x0_hat.detach() + s * torch.randn_like(x0_hat)
            uncond = self.empty.to(self.device).expand(b, -1, -1)
            v_real = predict_velocity(self.teacher, x_sigma, sigma, cond, uncond, self.mcfg.real_guidance)
            v_fake = predict_velocity(self.fake_score, x_sigma, sigma, cond)
            x0_real, x0_fake = x_sigma - s * v_real, x_sigma - s * v_fake
        return dmd_loss(x0_hat, x0_real, x0_fake)

    def generator_dmd_update(self, ctx):
        def loss_fn():
            cond = self.next_cond()
            x0_hat = self.generator_sample(ctx.net("generator"), cond, grad=True)
            return self.dmd_loss(x0_hat, cond), {}
        return ctx.update("generator", loss_fn)

    def fake_score_update(self, ctx):
        def loss_fn():
            cond = self.next_cond()
            x0 = self.generator_sample(self.generator, cond, grad=False)
            sigma = sample_dmd_sigmas(x0.shape[0], self.mcfg, self.device)
            s = sigma.view(-1, 1, 1, 1, 1)
            eps = torch.randn_like(x0)
            v = ctx.net("fake_score")(((1 - s) * x0 + s * eps), sigma * 1000.0, cond, return_dict=False)[0]
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
        return self.gen.save_pretrained(out_dir, transformer=weights["generator"], sampling=self.product_sampling())

    def state_dict(self):
        return {"prompts": self.prompts.state_dict()}

    def load_state_dict(self, state):
        self.prompts.load_state_dict(state["prompts"])

