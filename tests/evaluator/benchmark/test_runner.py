"""The benchmark runner: shared seeds across models, videos and records written, and a re-run skips what exists."""

import json

import pytest

from evaluator.benchmark.runner import BenchmarkSpec, JsonlStore, run_benchmark


def test_runner_scores_then_skips_on_rerun(tiny_pipeline_dir, tmp_path):
    from trainer.models.generator import Generator

    student = tmp_path / "student"
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    gen.save_pretrained(student, sampling=gen.sampling.few_step())
    spec = BenchmarkSpec(checkpoints=[str(student)], prompts=["a red square moves left", "a blue ball bounces"],
                         seeds=[0, 1], metrics=["dynamic_degree", "temporal_flickering"], workers=1)
    out = tmp_path / "bench"
    records = run_benchmark(spec, out)
    assert {(r["prompt"], r["seed"]) for r in records} == {(p, s) for p in spec.prompts for s in spec.seeds}
    assert len(records) == 2 * 2 * 2 and all(r["backend"] == "lite" for r in records)
    assert len(list((out / "videos" / "student").glob("*.mp4"))) == 4
    before = (out / "records.jsonl").read_text()
    again = run_benchmark(spec, out)  # nothing missing: no generation, no new records
    assert (out / "records.jsonl").read_text() == before
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True)
                                                                           for r in records)
    assert JsonlStore(out / "records.jsonl").existing() == {("student", p, s) for p in spec.prompts for s in spec.seeds}


def test_spec_rejects_bad_input():
    with pytest.raises(ValueError, match="checkpoints"):
        BenchmarkSpec(checkpoints=[], prompts=["x"])
    with pytest.raises(ValueError, match="seeds"):
        BenchmarkSpec(checkpoints=["a"], prompts=["x"], seeds=[])
