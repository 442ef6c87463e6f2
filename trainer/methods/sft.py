"""SFT: flow-matching fine-tuning of the generator (how the tiny teacher is trained).

    L = || v_theta(x_sigma, sigma, c) - (eps - x0) ||^2,   x_sigma = (1 - sigma) x0 + sigma eps

sigma is drawn logit-normal (or uniform) and then Wan-shifted; captions are dropped 10% of the time so that the
model also learns the unconditional velocity that classifier-free guidance needs.

    motionlab train sft --preset tiny        # trains the tiny VAE first, then this
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import SFTConfig
from trainer.data.shards import ShardSet, attach_shards
from trainer.data.streams import IndexStream, cached, data_key, encode_captions, encode_clips, load_clips
from trainer.methods.base import Method
from trainer.models.generator import Generator
from trainer.sampling import renoise, shift_sigmas


def sample_sigmas(n: int, how: str, shift: float, device, generator=None) -> torch.Tensor:
    if how == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        u = torch.rand(n, generator=generator)
    return shift_sigmas(u, shift).to(device)


def flow_matching_loss(transformer, x0, cond, sigma, eps) -> torch.Tensor:
    v = transformer(renoise(x0, sigma, eps), sigma * 1000.0, cond, return_dict=False)[0]
    return torch.mean((v.float() - (eps - x0).float()) ** 2)


class LatentData:
    """Training clips as cached normalised latents + caption embeddings, in a resumable order."""

    def __init__(self, gen: Generator, cfg, run_dir: Path, rank: int, world_size: int):
        key = data_key(cfg.data, str(cfg.init))

        def build():
            clips, captions = load_clips(cfg.data)
            return {"latents": encode_clips(gen, clips), "captions": captions}

        blob = cached(run_dir / "cache" / f"latents-{key}.pt", build)
        self.latents = blob["latents"]
        self.captions = blob["captions"]
        self.text, self.text_index = encode_captions(gen, self.captions)
        self.empty = gen.encode_prompts([gen.sampling.negative_prompt]).float().cpu()
        self.stream = IndexStream(len(self.latents), cfg.data.seed, rank, world_size)

    def next(self, k: int, device):
        idx = self.stream.next(k)
        return self.latents[idx].to(device), self.text[self.text_index[idx]].to(device), [self.captions[i] for i in idx]


class ShardLatentData:
    """``LatentData`` read from preprocessed shards: latents and caption embeddings streamed per rank (bounded
    memory), the empty-prompt embedding from the shards' prompt table. ``stream`` is the resumable reader."""

    def __init__(self, gen: Generator, shards: ShardSet, seed: int, rank: int, world_size: int):
        self.stream = shards.reader("clips", ("latents", "text"), seed, rank, world_size)
        self.empty = gen.encode_prompts([gen.sampling.negative_prompt]).float().cpu()

    def next(self, k: int, device):
        batch = self.stream.next(k)
        return batch["latents"].float().to(device), batch["text"].to(device), batch["caption"]


class SFT(Method):
    name = "sft"
    Config = SFTConfig
    product_network = "transformer"

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        if cfg.init is None and cfg.preset == "full":
            from trainer.models.generator import FULL_MODEL_SUBDIR, weights_dir

            cfg.init = str(weights_dir() / FULL_MODEL_SUBDIR)
        if cfg.init is None:
            self.gen = Generator.build_tiny(seed=cfg.seed)
        else:
            from trainer.zoo import resolve_checkpoint

            self.gen = Generator.from_pretrained(resolve_checkpoint(cfg.init), text_encoder=cfg.data.source != "shards")
        self.gen.to(device).eval().requires_grad_(False)
        self.shards = attach_shards(self.gen, cfg, latents=True) if cfg.data.source == "shards" else None
        self.transformer = self.gen.transformer
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.networks = {"transformer": self.transformer}
        self.ema_networks = ("transformer",)

    def setup_data(self, rank, world_size):
        if self.shards is not None:
            self.data = ShardLatentData(self.gen, self.shards, self.cfg.data.seed, rank, world_size)
        else:
            self.data = LatentData(self.gen, self.cfg, self.run_dir, rank, world_size)

    def train_step(self, step, ctx):
        def loss_fn():
            x0, cond, _ = self.data.next(self.micro_batch, self.device)
            b = x0.shape[0]
            drop = torch.rand(b) < self.mcfg.caption_dropout
            cond = torch.where(drop.view(-1, 1, 1).to(self.device), self.data.empty.to(self.device), cond)
            sigma = sample_sigmas(b, self.mcfg.timestep_sampling, self.mcfg.shift, self.device)
            eps = torch.randn_like(x0)
            return flow_matching_loss(ctx.net("transformer"), x0, cond, sigma, eps), {}

        return ctx.update("transformer", loss_fn)

    def export(self, out_dir, weights):
        return self.gen.save_pretrained(out_dir, transformer=weights["transformer"], sampling=self.product_sampling())

    def state_dict(self):
        return {"data": self.data.stream.state_dict()}

    def load_state_dict(self, state):
        self.data.stream.load_state_dict(state["data"])
