"""Fixtures of the metric tests.

``vbench_standin``: writers of random-initialised stand-in weights of the right architectures, written in
VBench's cache layout. They prove the wiring of the vbench backend (same files -> same numbers as VBench's own
functions) without the real checkpoints; the numbers themselves are meaningless. Never used outside tests.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from evaluator.metrics import weights as W


def write_raft(weights_dir: Path, seed: int = 0) -> Path:
    import torch
    from easydict import EasyDict
    from vbench.third_party.RAFT.core.raft import RAFT

    torch.manual_seed(seed)
    path = W.weight_path("raft_things", weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = RAFT(EasyDict({"small": False, "mixed_precision": False, "alternate_corr": False}))
    # the released checkpoint was saved from DataParallel ("module." prefixes), which VBench strips
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def write_amt_s(weights_dir: Path, seed: int = 0) -> Path:
    import torch
    import vbench
    from omegaconf import OmegaConf
    from vbench.third_party.amt.utils.build_utils import build_from_cfg

    torch.manual_seed(seed)
    cfg = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
    net = build_from_cfg(OmegaConf.load(cfg).network)
    path = W.weight_path("amt_s", weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict()}, path)
    return path


def write_aesthetic(weights_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A LAION head (Linear 768 -> 1, the real architecture) and a *reduced-width* CLIP: same class, loaded by the
    same ``clip.load`` path (which infers the architecture from the state dict), ViT-L/14's patch size, input size
    and 768-d embedding, but 1 layer of width 64 (the real ViT-L/14 is ~1.7 GB of random numbers)."""
    import torch
    from clip.model import CLIP

    torch.manual_seed(seed)
    head_path = W.weight_path("laion_aesthetic_head", weights_dir)
    clip_path = W.weight_path("clip_vit_l14", weights_dir)
    head_path.parent.mkdir(parents=True, exist_ok=True)
    clip_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.nn.Linear(768, 1).state_dict(), head_path)
    model = CLIP(
        embed_dim=768,
        image_resolution=224,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=14,
        context_length=77,
        vocab_size=64,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    ).eval()
    # OpenAI's ViT-L-14.pt is a TorchScript archive, and clip.load (openai-clip 1.0.1) only reads that form on
    # this torch: its fallback for a plain state dict re-reads an exhausted file handle (EOFError).
    traced = torch.jit.trace(model, (torch.rand(1, 3, 224, 224), torch.randint(0, 64, (1, 77))))
    traced.save(str(clip_path))
    return clip_path, head_path


def write_musiq(weights_dir: Path, seed: int = 0) -> Path:
    import torch
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(seed)
    path = W.weight_path("musiq_spaq", weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(MUSIQ(pretrained=False).state_dict(), path)  # VBench's MUSIQ(): the default (SPAQ, 1-class) shape
    return path


@pytest.fixture(scope="session")
def vbench_standin():
    """The stand-in weight writers (a fixture because the suite imports test modules with importlib)."""
    return types.SimpleNamespace(
        write_raft=write_raft,
        write_amt_s=write_amt_s,
        write_aesthetic=write_aesthetic,
        write_musiq=write_musiq,
    )
