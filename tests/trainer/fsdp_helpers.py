"""Functions the FSDP tests run inside spawned ranks (importable by name, so spawn can pickle them)."""

from __future__ import annotations


def train_and_record(runs: list, mogan_dirs: tuple[str, str] | None = None) -> list[list[dict]]:
    """``train_run`` for each ``(cfg, run_dir)`` of ``runs`` in turn (one process start for all); every rank
    records the batch of each transformer call and its micro-batch size. With ``mogan_dirs`` (teacher, init) it
    then builds MoGAN, distributes it as the loop does, and reports how each of its networks, trained and frozen,
    is sharded. Rank 0 returns every rank's records."""
    import torch.distributed as tdist

    from trainer.loop import train_run
    from trainer.methods import METHODS

    records = []
    for cfg, run_dir in runs:
        cls, instances, batches = METHODS[cfg.method], [], []

        class Recording(cls):
            def __init__(self, *args, _batches=batches, _instances=instances, **kwargs):
                super().__init__(*args, **kwargs)
                _instances.append(self)
                self.transformer.register_forward_pre_hook(lambda _m, a: _batches.append(int(a[0].shape[0])))

        METHODS[cfg.method] = Recording
        try:
            train_run(cfg, run_dir, progress_bar=False)
        finally:
            METHODS[cfg.method] = cls
        records.append({"batches": batches, "micro_batch": instances[0].micro_batch})
    if mogan_dirs is not None:
        records.append(_mogan_sharding(*mogan_dirs))
    out: list = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, records)
    return out


def _mogan_sharding(teacher: str, init: str) -> dict:
    """For each MoGAN network: ``[root, every block, embeddings]`` are FSDP units, and the share of the
    network's parameters this rank holds."""
    import torch
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from trainer import parallel
    from trainer.config import load_train_config
    from trainer.methods.mogan import MoGAN

    cfg = load_train_config("mogan", {"teacher": teacher, "init": init, "parallel": "fsdp", "batch_size": 2})
    method = MoGAN(cfg, torch.device("cpu"), torch.float32)
    parallel.distribute(method, "fsdp", "auto", torch.device("cpu"), 2)
    report = {}
    for name, net in {**method.networks, **method.frozen_networks}.items():
        owner = net.trunk if name == "disc" else net
        units = [net, *owner.blocks, owner.patch_embedding, owner.condition_embedder]
        params = list(net.parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        report[name] = {
            "units": [isinstance(u, FSDPModule) for u in units],
            "share": local / sum(p.numel() for p in params),
            "requires_grad": any(p.requires_grad for p in params),
        }
    return report
