"""How the training loop spreads networks over ranks: DDP (replicated, the default) or FSDP2 (``parallel=fsdp``).

    wrapped = wrap_ddp(net, device)                     # ddp: a DistributedDataParallel wrapper
    shard(net, mixed_precision_policy(cfg, device))    # fsdp: in place, ``net`` stays the module to call
    save_sharded(path, nets, optimizers, ema)           # every rank writes its shards (torch.distributed.checkpoint)
    plain = gather_full(net, skeleton(net), ema_state)  # every rank takes part; rank 0 gets the whole module

Sharding (``trainer/plan.py`` predicts memory from exactly this):

- every trained network and every frozen one a method declares (``Method.frozen_networks``: teacher, reference)
  is sharded: ``fully_shard`` on each block of every ``blocks`` list (the Wan DiT's, the motion discriminator's
  trunk), on the patch and condition embeddings beside them (VDOT's discriminator runs those without the
  transformer's own forward), then on the root. Small helpers (VAE, text encoder, flow estimator) stay replicated;
- parameters stay float32 and sharded: master weights, gradients and AdamW states of trained networks, and the
  frozen networks' weights. With bf16 on CUDA each unit computes with gathered bf16 copies and reduces gradients
  in float32; on CPU everything is float32;
- every unit, the root included, frees its gathered parameters after forward: between calls a network holds only
  its shards, and each call gathers the current weights (and their current ``requires_grad``).

Every call of a sharded network is a collective: all ranks must make the same calls in the same order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

# Siblings of a ``blocks`` list that get their own FSDP unit: code that runs a transformer's blocks without its
# forward (trainer/models/wan_features.py) calls these directly, so they must gather their own parameters.
EMBEDDINGS = ("patch_embedding", "condition_embedder")


def is_sharded(parallel: str, world_size: int) -> bool:
    """Whether networks are sharded: ``parallel=fsdp`` over more than one rank (one rank trains unwrapped)."""
    return parallel == "fsdp" and world_size > 1


def precision(mode: str, device: torch.device) -> str:
    """``mixed_precision`` resolved for a device: ``auto`` is bf16 on CUDA, float32 (``no``) elsewhere."""
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return mode


def mixed_precision_policy(mode: str, device: torch.device) -> MixedPrecisionPolicy:
    """bf16 compute with float32 gradient reduction on CUDA under bf16; otherwise no casting (float32 on CPU).

    Inputs are not cast: timesteps stay float32 (bf16 would round 757 to 756); the loop's autocast casts the
    matmul inputs.
    """
    if precision(mode, device) == "bf16" and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def distribute(
    method, parallel: str, mixed_precision: str, device: torch.device, world_size: int
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Prepare ``method``'s networks for ``world_size`` ranks -> ``(wrapped, templates)``.

    ``wrapped[name]``: what runs network ``name`` (a DDP wrapper, or under fsdp the network itself, sharded in
    place). ``unwrapped_networks`` stay replicated (the loop averages their gradients). Under fsdp the frozen
    networks are sharded too and ``templates`` holds a ``skeleton`` of each sharded trained network (for
    ``gather_full``); otherwise it is empty.
    """
    nets, unwrapped = method.networks, set(method.unwrapped_networks)
    for m in method.frozen_networks.values():
        m.requires_grad_(False)
    if not is_sharded(parallel, world_size):
        return {n: m if n in unwrapped or world_size == 1 else wrap_ddp(m, device) for n, m in nets.items()}, {}
    templates = {n: skeleton(m) for n, m in nets.items() if n not in unwrapped}
    policy = mixed_precision_policy(mixed_precision, device)
    for m in [*(nets[n] for n in templates), *method.frozen_networks.values()]:
        shard(m, policy)
    return dict(nets), templates


def _units(module: nn.Module) -> list[nn.Module]:
    units = []
    for m in module.modules():
        blocks = m._modules.get("blocks")
        if isinstance(blocks, nn.ModuleList):
            units += [m._modules[n] for n in EMBEDDINGS if isinstance(m._modules.get(n), nn.Module)]
            units += list(blocks)
    return units


def shard(module: nn.Module, policy: MixedPrecisionPolicy) -> nn.Module:
    """``fully_shard`` ``module`` in place: each block and embedding (see ``EMBEDDINGS``), then the root."""
    for unit in _units(module):
        fully_shard(unit, mp_policy=policy, reshard_after_forward=True)
    fully_shard(module, mp_policy=policy, reshard_after_forward=True)
    # FSDP2 makes the first unit to run forward its root. VDOT's discriminator may enter the fake score at its
    # patch embedding (an odd step right after a resume), so fix the real root now.
    module._get_fsdp_state()._lazy_init()
    return module


def set_gradient_sync(module: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients after this backward (``sync``), or keep accumulating them unsharded."""
    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(sync)


def skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (before sharding) with its parameters on the meta device: no memory, for export."""
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in module.parameters()
    }
    return copy.deepcopy(module, memo)


def _full(value, is_main: bool):
    """The whole tensor of a shard on CPU (rank 0) or None; a collective for a DTensor."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu() if is_main else None


def gather_full(module: nn.Module, template: nn.Module, ema_state: dict | None, is_main: bool) -> nn.Module | None:
    """The unsharded network (its EMA weights when ``ema_state`` is given) as ``template`` (a ``skeleton``).

    Every rank must call it (the parameters are all-gathered); rank 0 gets the module on CPU, the others None.
    """
    if ema_state is None:
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: _full(v, is_main) for k, v in ema_state.items()}
    if not is_main:
        return None
    template.load_state_dict(state, assign=True)
    return template.to("cpu")


def _checkpoint_state(nets: dict, optimizers: dict, ema: dict, stepped: list[str]) -> dict:
    return {
        "models": {n: get_model_state_dict(m) for n, m in nets.items()},
        # only optimizers that have stepped: asking an empty one for its state dict initialises it with a
        # zero-lr step (AdamW's step count would then differ from an uninterrupted run's)
        "optimizers": {n: get_optimizer_state_dict(nets[n], optimizers[n]) for n in stepped},
        "ema": ema,
    }


def save_sharded(path: Path, nets: dict, optimizers: dict, ema: dict) -> list[str]:
    """Write networks, optimizers and EMA as a distributed checkpoint; every rank its shards. Returns the names
    of the optimizers saved (``load_sharded`` needs them)."""
    stepped = [n for n, o in optimizers.items() if o.state]
    dcp.save(_checkpoint_state(nets, optimizers, ema, stepped), checkpoint_id=str(path))
    return stepped


def load_sharded(path: Path, nets: dict, optimizers: dict, ema: dict, stepped: list[str]) -> None:
    """Read what ``save_sharded`` wrote, resharded to this run's ranks if their number changed. EMA in place."""
    state = _checkpoint_state(nets, optimizers, ema, stepped)
    dcp.load(state, checkpoint_id=str(path))
    for n, m in nets.items():
        set_model_state_dict(m, state["models"][n])
    for n in stepped:
        set_optimizer_state_dict(nets[n], optimizers[n], state["optimizers"][n])
