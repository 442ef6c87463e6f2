"""What a post-training method is, as far as the training loop is concerned.

A method owns its networks and its losses (its ``method_cfg`` model and preset defaults are declared in
``trainer/config.py``, which validates a run without importing any method); the loop (``trainer/loop.py``) owns
optimizers, gradient accumulation, clipping, EMA, checkpoints, resume, logging and distribution. Each training
iteration the loop calls ``method.train_step(step, ctx)``; the method calls ``ctx.update(name, loss_fn)`` once per
optimizer update it wants, in the order its paper prescribes (e.g. MoGAN: generator DMD, 4 fake-score steps,
generator GAN, D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from trainer.config import MethodConfig, micro_batch
from trainer.random_streams import RandomStreams
from trainer.sampling import generate_videos


class Method:
    name: str = "base"
    Config: type[MethodConfig] = MethodConfig  # its ``method_cfg`` model, one of ``trainer.config.METHOD_CONFIGS``
    # The network ``export`` writes as the pipeline's transformer, sampled by ``validation_videos``; None: the
    # method's product is not a text-to-video sampler (the VAE).
    product_network: str | None = None
    # Per-purpose random streams (``trainer/random_streams.py``) of a method whose ablation switches must not shift
    # the draws of the terms they do not own; None: the method draws from the global RNG.
    streams: RandomStreams | None = None

    @classmethod
    def defaults(cls, preset: str) -> dict:
        """TrainConfig-level defaults of this method for a preset (nested dict, validated by the config loader)."""
        return cls.Config.defaults(preset)

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg
        self.mcfg = cfg.method_cfg
        self.device = device
        self.dtype = dtype
        self.networks: dict[str, nn.Module] = {}  # trainable; the loop makes one optimizer each
        self.learning_rates: dict[str, float] = {}  # per network; default cfg.optim.lr
        self.ema_networks: tuple[str, ...] = ()  # networks the loop keeps an EMA of (when cfg.ema_decay > 0)
        # networks whose loss calls other methods than forward: not DDP-wrapped, gradients averaged explicitly
        self.unwrapped_networks: tuple[str, ...] = ()
        # frozen networks run for inference only (teacher, reference): sharded like the trained ones under fsdp
        self.frozen_networks: dict[str, nn.Module] = {}
        # under fsdp every forward of a sharded network is a collective: control flow must agree across ranks
        self.sharded = False
        self.set_layout(1)

    def set_layout(self, world_size: int) -> None:
        """Split the global batch sizes over ranks and micro-steps (the loop calls this before ``setup_data``).

        ``micro_batch``: samples one rank draws per accumulation micro-step; raises ConfigError if uneven.
        """
        self.world_size = world_size
        self.micro_batch = micro_batch(self.cfg.batch_size, world_size, self.cfg.grad_accum)

    def layout(self) -> dict:
        """The batch split, recorded in the run's config.yaml under ``layout:``."""
        return {
            "world_size": self.world_size,
            "per_rank_batch_size": self.micro_batch * self.cfg.grad_accum,
            "micro_batch_size": self.micro_batch,
        }

    def random_stream(self, purpose: str) -> torch.Generator | None:
        """The generator of the next draw call of ``purpose`` from ``self.streams``; None (the global RNG) for a
        method without streams."""
        return None if self.streams is None else self.streams.generator(purpose)

    def agreed_randint(self, low: int, high: int, generator: torch.Generator | None = None) -> int:
        """``torch.randint(low, high)`` from ``generator`` (default: this rank's RNG); with several ranks, rank 0's
        draw on every rank: a random number of forward passes through a wrapped network would leave the ranks'
        collectives unmatched (FSDP's all-gathers, DDP's buffer broadcast on every forward)."""
        value = torch.randint(low, high, (1,), generator=generator)
        if tdist.is_initialized() and tdist.get_world_size() > 1:
            value = value.to(self.device)
            tdist.broadcast(value, src=0)
        return int(value)

    def setup_data(self, rank: int, world_size: int) -> None:
        """Build data streams (called once networks exist; may use the VAE / text encoder to cache latents)."""

    def train_step(self, step: int, ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    def export(self, out_dir: Path, weights: dict[str, nn.Module]) -> Path:
        """Write the method's product (a pipeline directory). ``weights`` are the networks to export (EMA if any)."""
        raise NotImplementedError

    def product_sampling(self):
        """How the exported pipeline is sampled (its ``SamplingConfig``): the bundle's own unless a method changes it,
        at the training clips' shape (a model trained on longer clips than its init's samples them).

        ``export`` saves it; ``validation_videos`` samples with it, so validation shows what serving will.
        """
        return self.data_shaped(self.gen.sampling)

    def data_shaped(self, sampling):
        """``sampling`` with the video shape (frames, height, width) of the training data."""
        d = self.cfg.data
        return replace(sampling, num_frames=d.num_frames, height=d.height, width=d.width)

    @torch.no_grad()
    def validation_videos(
        self, prompts: list[str], seed: int, net: Callable[[str], nn.Module] | None = None
    ) -> np.ndarray:
        """``prompts[i]`` sampled from the current ``product_network`` with seed ``seed + i`` -> uint8
        ``[N, T, H, W, 3]`` at the training clips' size, with the product's sampler (``trainer/sampling.py``).

        ``net(name)`` gives the module to run (the loop passes its distributed wrapper); batches of at most
        ``micro_batch`` prompts. The caller sets eval mode and keeps the RNG state.
        """
        if self.product_network is None:
            raise NotImplementedError(f"method {self.name!r} has no text-to-video product to sample")
        transformer = (net or self.networks.__getitem__)(self.product_network)
        d, k = self.cfg.data, self.micro_batch
        videos = []
        for i in range(0, len(prompts), k):
            chunk = list(prompts[i : i + k])
            videos += generate_videos(
                self.gen,
                chunk,
                [seed + i + j for j in range(len(chunk))],
                sampling=self.product_sampling(),
                transformer=transformer,
                num_frames=d.num_frames,
                height=d.height,
                width=d.width,
            )
        return np.stack(videos)

    def state_dict(self) -> dict:
        """Extra resumable state: data positions, private RNGs, curricula."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StepContext:
    """Handed to ``Method.train_step`` by the loop; ``update`` performs one optimizer step of one network."""

    def __init__(
        self,
        update: Callable[[str, Callable[[], tuple[torch.Tensor, dict]]], dict],
        net: Callable[[str], nn.Module],
        step: int,
    ):
        self.update = update
        self.net = net
        self.step = step
