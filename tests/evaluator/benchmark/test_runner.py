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


def test_conformance_records_per_family_and_in_the_report(tiny_pipeline_dir, tmp_path):
    from evaluator.benchmark.runner import CONFORMANCE
    from evaluator.conformance import conformance_report, real_reference
    from evaluator.reports import write_report

    prompts = ["a red square moves left", "a blue ball bounces"]
    spec = BenchmarkSpec(checkpoints=[str(tiny_pipeline_dir)], prompts=prompts, seeds=[0],
                         metrics=["dynamic_degree", CONFORMANCE], workers=1)
    records = run_benchmark(spec, tmp_path / "bench")
    conf = [r for r in records if r["metric"].startswith("conformance/")]
    assert {r["family"] for r in conf} == {"translate", "bounce"}
    assert {r["metric"] for r in conf if r["family"] == "translate"} >= {"conformance/colour_ok",
                                                                          "conformance/direction_ok"}
    assert "conformance/direction_ok" not in {r["metric"] for r in conf if r["family"] == "bounce"}
    summary = conformance_report(records)[tiny_pipeline_dir.name]
    assert summary["overall"]["n"] == 2 and set(summary) == {"translate", "bounce", "overall"}
    report = write_report(records, tmp_path / "report", conformance_reference=real_reference(1))["markdown"]
    assert "## Caption conformance" in report.read_text() and "translate" in report.read_text()


def test_conformance_needs_synthetic_captions():
    with pytest.raises(ValueError, match="a dog running"):
        BenchmarkSpec(checkpoints=["a"], prompts=["a dog running"], metrics=["conformance"])
