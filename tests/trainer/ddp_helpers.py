"""Helpers of the distributed tests: ``motionlab train`` under torchrun, and functions the tests run inside spawned
ranks (importable by name, so spawn can pickle them)."""

from __future__ import annotations

import hashlib
import sys


def torchrun_train(method: str, run_dir, steps: int, *flags: str) -> list[str]:
    """The command line of ``motionlab train <method> --preset tiny`` on two local ranks under torchrun."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    train = ["-m", "backend.cli", "train", method, "--preset", "tiny", "--run-dir", str(run_dir), "--steps", str(steps)]
    return [*torchrun, *train, *flags]


def train_and_digest(cfg, run_dir) -> list[str]:
    """``train_run``, then every rank's digest of its trained networks (gathered; rank 0's return value)."""
    import torch
    import torch.distributed as tdist

    from trainer.loop import train_run
    from trainer.methods import METHODS

    cls, instances = METHODS[cfg.method], []

    class Capturing(cls):  # the method object of this rank, to read its networks after training
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            instances.append(self)

    METHODS[cfg.method] = Capturing
    try:
        train_run(cfg, run_dir, progress_bar=False)
    finally:
        METHODS[cfg.method] = cls
    h = hashlib.sha256()
    for name, net in sorted(instances[0].networks.items()):
        for key, value in sorted(net.state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(value.detach().to(torch.float64).numpy().tobytes())
    digests: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(digests, h.hexdigest())
    return digests


def fail_with_config_error(field: str) -> None:
    from trainer.config import ConfigError

    raise ConfigError(field, "out of range on purpose")


def train_until_rank_asks_to_stop(cfg, run_dir, asking_rank: int, at_call: int) -> dict:
    """``train_run`` where only ``asking_rank``'s ``should_stop`` says yes, at its ``at_call``-th call: every rank
    must still stop at that step. Returns this rank's result (rank 0's reaches the launcher)."""
    import torch.distributed as tdist

    from trainer.loop import train_run

    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return tdist.get_rank() == asking_rank and calls[0] >= at_call

    result = train_run(cfg, run_dir, should_stop=should_stop, progress_bar=False)
    steps: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(steps, (result["step"], result["stopped"]))
    return {**result, "ranks": steps}
