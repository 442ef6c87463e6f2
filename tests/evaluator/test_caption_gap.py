"""bench/caption_gap.py: counterfactual captions flip exactly the word a family turns on, and the error gaps share
their noise (a caption against itself gaps by exactly 0). Tiny random pipeline."""

from __future__ import annotations

import json
import math

import pytest

from evaluator.conformance import conformance_prompts, parse_caption
from tests.conftest import load_bench
from trainer.models.generator import Generator


def test_counterfactuals_flip_the_family_word():
    bench = load_bench("caption_gap")
    for p in conformance_prompts(3, seed=5):
        true, other = parse_caption(p["caption"]), bench.counterfactual(p["caption"])
        family = p["family"]
        if family == "bounce":
            assert other is None
            continue
        if other is None:  # two objects moving the same way: nothing to swap
            assert family == "two_objects" and true["objects"][0]["direction"] == true["objects"][1]["direction"]
            continue
        flipped = parse_caption(other)
        if family == "static":
            assert flipped["family"] == "translate" and flipped["direction"] == "right"
        elif family == "two_objects":
            a, b = true["objects"]
            assert [o["direction"] for o in flipped["objects"]] == [b["direction"], a["direction"]]
            assert [o["colour"] for o in flipped["objects"]] == [a["colour"], b["colour"]]
        else:
            assert flipped["family"] == family and flipped["direction"] != true["direction"]
            assert (flipped["colour"], flipped["shape"]) == (true["colour"], true["shape"])
    with pytest.raises(ValueError, match="not a synthetic caption"):
        bench.counterfactual("a cat sleeps")


def test_gaps_share_their_noise_and_the_script_runs(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    bench = load_bench("caption_gap")
    prompts = [p for p in conformance_prompts(1, seed=0) if p["family"] in ("translate", "static")]
    gen = Generator.from_pretrained(tiny_pipeline_dir).eval()
    rows = bench.caption_gaps(gen, prompts, sigmas=(0.8, 0.2))
    assert len(rows) == 4 and all(math.isfinite(r["gap_counterfactual"]) for r in rows)
    assert any(r["gap_counterfactual"] != 0 for r in rows)
    monkeypatch.setattr(bench, "counterfactual", lambda caption: caption)
    same = bench.caption_gaps(gen, prompts, sigmas=(0.8, 0.2))
    assert [r["gap_counterfactual"] for r in same] == [0.0] * 4
    assert [r["error"] for r in same] == [r["error"] for r in rows]
    monkeypatch.undo()

    out = tmp_path / "gaps.json"
    bench.main(["--checkpoint", str(tiny_pipeline_dir), "--per-family", "1", "--sigma", "0.5", "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    with_a_word = {p["family"] for p in conformance_prompts(1, seed=0) if bench.counterfactual(p["caption"])}
    assert {r["family"] for r in saved} == with_a_word and {"translate", "rotate", "static"} <= with_a_word
    assert "rotate" in printed and "bounce" not in printed
    with pytest.raises(SystemExit):
        bench.main(["--checkpoint", str(tiny_pipeline_dir), "--sigma", "0"])
