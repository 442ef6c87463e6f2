"""Preprocessed tiny shard directories shared by the shard tests (built once per session)."""

from __future__ import annotations

import pytest

from trainer.data.preprocess import PreprocessConfig, preprocess

# 12 synthetic clips in 3 shards of 4, 10 synthetic generation prompts (3 shards), flow and frames stored: every
# field every method reads.
TINY_SHARDS = {
    "source": "synthetic",
    "num_videos": 12,
    "num_prompts": 10,
    "flow": "horn_schunck",
    "pixels": True,
    "shard_size": 4,
}


@pytest.fixture(scope="session")
def shards_dir(tiny_pipeline_dir, tmp_path_factory):
    """bf16 latents / embeddings, float16 flow (the default precision)."""
    out = tmp_path_factory.mktemp("shards") / "half"
    preprocess(PreprocessConfig(model=str(tiny_pipeline_dir), **TINY_SHARDS), out, progress=False)
    return out


@pytest.fixture(scope="session")
def shards_full_dir(tiny_pipeline_dir, tmp_path_factory):
    """The same in float32."""
    out = tmp_path_factory.mktemp("shards") / "full"
    preprocess(PreprocessConfig(model=str(tiny_pipeline_dir), precision="full", **TINY_SHARDS), out, progress=False)
    return out
