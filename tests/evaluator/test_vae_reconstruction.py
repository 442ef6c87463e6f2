"""bench/vae_reconstruction.py: clips of any length the VAE codes; other lengths are refused by name. Tiny random
pipeline."""

from __future__ import annotations

import pytest

from tests.conftest import load_bench
from trainer.models.generator import Generator


def test_frames_sets_the_clip_length_and_a_length_the_vae_cannot_code_is_refused(tiny_pipeline_dir, capsys):
    bench = load_bench("vae_reconstruction")
    out = bench.main(["--checkpoint", str(tiny_pipeline_dir), "--n", "2", "--frames", "9"])
    chunks = Generator.from_pretrained(tiny_pipeline_dir).latent_shape(9, 32, 32)[2]
    assert len(out["psnr_per_chunk"]) == chunks
    assert out["colour_per_family"]
    for family in out["colour_per_family"].values():  # a clip's worst frame is at least as far off as its mean
        assert family["worst_frame_colour_error"] >= family["colour_error"]
    assert "(held-out, 9 frames)" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        bench.main(["--checkpoint", str(tiny_pipeline_dir), "--n", "2", "--frames", "10"])
    err = capsys.readouterr().err
    assert "--frames 10" in err and "1 + 4k" in err
