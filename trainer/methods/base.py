"""What a post-training method is, as far as the training loop is concerned.

A method owns its config dataclass, its networks and its losses; the loop (``trainer/loop.py``) owns optimizers,
gradient accumulation, clipping, EMA, checkpoints, resume, logging and distribution. Each training iteration the loop
calls ``method.train_step(step, ctx)``; the method calls ``ctx.update(name, loss_fn)`` once per optimizer update it
wants, in the order its paper prescribes (e.g. MoGAN: generator DMD, 4 fake-score steps, generator GAN, D).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


class Method:
    name: str = "base"
    Config: type = object

    @staticmethod
    def defaults(preset: str) -> dict:
        """TrainConfig-level defaults of this method for a preset (nested dict, validated by the config loader)."""
        return {}

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

    def setup_data(self, rank: int, world_size: int) -> None:
        """Build data streams (called once networks exist; may use the VAE / text encoder to cache latents)."""

    def train_step(self, step: int, ctx: "StepContext") -> dict[str, float]:
        raise NotImplementedError

    def export(self, out_dir: Path, weights: dict[str, nn.Module]) -> Path:
        """Write the method's product (a pipeline directory). ``weights`` are the networks to export (EMA if any)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Extra resumable state: data positions, private RNGs, curricula."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StepContext:
    """Handed to ``Method.train_step`` by the loop; ``update`` performs one optimizer step of one network."""

    def __init__(self, update: Callable[[str, Callable[[], tuple[torch.Tensor, dict]]], dict],
                 net: Callable[[str], nn.Module], step: int):
        self.update = update
        self.net = net
        self.step = step
