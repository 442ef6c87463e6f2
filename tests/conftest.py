"""Shared fixtures: tiny models built and saved in diffusers format, loaded back through the real code path."""

from __future__ import annotations

import os

import pytest
import torch

# Keep the suite deterministic and polite on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A randomly initialised tiny generator saved as a WanPipeline directory (no training)."""
    from trainer.models.generator import Generator

    path = tmp_path_factory.mktemp("tiny") / "pipeline"
    Generator.build_tiny(seed=0).save_pretrained(path)
    return path
