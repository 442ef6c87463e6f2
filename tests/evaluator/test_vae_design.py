"""bench/vae_design.py trains a design for its time budget and reports held-out figures at the clip size asked."""

import math

from tests.conftest import load_bench


def test_a_design_trains_at_the_clip_size_asked(capsys):
    bench = load_bench("vae_design")
    # the design made for larger clips, on the default small ones: its cheapest run
    args = ["--design", "residual-8x", "--size", "32", "--minutes", "0.01", "--clips", "4", "--held-out", "2"]
    curve = bench.main(args)
    printed = capsys.readouterr().out
    assert curve and "design=residual-8x size=32" in printed and "s/step" in printed
    _minutes, steps, psnr, colour = curve[-1]
    assert steps >= 1 and math.isfinite(psnr) and math.isfinite(colour)
