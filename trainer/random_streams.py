"""Per-purpose random streams: what one term of a loss draws never moves what another term draws.

A method with ablation switches draws its noise, sigmas and step indices from ``RandomStreams`` instead of the
global RNG. Switching a term off skips that term's draws; on the global RNG that shifts every later draw of every
other term (and of every later step), so an ablation would differ from the full method in more than its switch.
With one stream per purpose the draws of the purposes a switch does not own stay exactly the same.

Draw call ``n`` of purpose ``p`` gets a fresh ``torch.Generator`` (CPU) seeded from ``(seed, rank, p, n)``. The
whole state is one counter per purpose; the ranks make the same calls, so the counters agree on every rank and the
rank-0 method state a checkpoint keeps resumes every rank's streams exactly (each rank's seed includes its rank).

    streams = RandomStreams(cfg.seed, rank)
    g = streams.generator("fake_score")        # one per optimizer micro-step of that purpose
    sigma = torch.rand(n, generator=g); eps = randn(shape, g, device)
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


class RandomStreams:
    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = int(seed), int(rank)
        self.counts: dict[str, int] = {}

    def generator(self, purpose: str) -> torch.Generator:
        """A generator for the next draw call of ``purpose`` (its counter advances; no other purpose's does)."""
        n = self.counts.get(purpose, 0)
        self.counts[purpose] = n + 1
        entropy = [self.seed % 2**64, self.rank, zlib.crc32(purpose.encode()), n]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}


def randn(shape, generator: torch.Generator | None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal ``shape`` from ``generator`` (drawn on the CPU, where it lives, then moved), or from the global
    RNG on ``device`` when ``generator`` is None."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn_like(x) if generator is None else randn(x.shape, generator, x.device, x.dtype)
