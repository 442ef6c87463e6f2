"""The benchmark runner: shared seeds across models, videos and records written, and a re-run skips what exists."""

import json

import pytest

from evaluator.benchmark.runner import BenchmarkSpec, JsonlStore, run_benchmark, video_path


def test_runner_scores_then_skips_on_rerun(tiny_pipeline_dir, tmp_path):
    from trainer.models.generator import Generator

    student = tmp_path / "student"
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    gen.save_pretrained(student, sampling=gen.sampling.few_step())
    spec = BenchmarkSpec(
        checkpoints=[str(student)],
        prompts=["a red square moves left", "a blue ball bounces"],
        seeds=[0, 1],
        metrics=["dynamic_degree", "temporal_flickering"],
        workers=1,
    )
    out = tmp_path / "bench"
    records = run_benchmark(spec, out)
    assert {(r["prompt"], r["seed"]) for r in records} == {(p, s) for p in spec.prompts for s in spec.seeds}
    assert len(records) == 2 * 2 * 2 and all(r["backend"] == "lite" for r in records)
    assert len(list((out / "videos" / "student").glob("*.mp4"))) == 4
    before = (out / "records.jsonl").read_text()
    again = run_benchmark(spec, out)  # nothing missing: no generation, no new records
    assert (out / "records.jsonl").read_text() == before
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(
        json.dumps(r, sort_keys=True) for r in records
    )
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
    spec = BenchmarkSpec(
        checkpoints=[str(tiny_pipeline_dir)],
        prompts=prompts,
        seeds=[0],
        metrics=["dynamic_degree", CONFORMANCE],
        workers=1,
    )
    records = run_benchmark(spec, tmp_path / "bench")
    conf = [r for r in records if r["metric"].startswith("conformance/")]
    assert {r["family"] for r in conf} == {"translate", "bounce"}
    assert {r["metric"] for r in conf if r["family"] == "translate"} >= {
        "conformance/colour_ok",
        "conformance/direction_ok",
    }
    assert "conformance/direction_ok" not in {r["metric"] for r in conf if r["family"] == "bounce"}
    summary = conformance_report(records)[tiny_pipeline_dir.name]
    assert summary["overall"]["n"] == 2 and set(summary) == {"translate", "bounce", "overall"}
    report = write_report(records, tmp_path / "report", conformance_reference=real_reference(1))["markdown"]
    assert "## Caption conformance" in report.read_text() and "translate" in report.read_text()


def test_conformance_needs_synthetic_captions():
    with pytest.raises(ValueError, match="a dog running"):
        BenchmarkSpec(checkpoints=["a"], prompts=["a dog running"], metrics=["conformance"])


def test_fidelity_figures_per_seed_against_the_real_videos(tiny_pipeline_dir, tmp_path):
    import numpy as np

    from evaluator.benchmark.runner import CONFORMANCE, FIDELITY_METRICS
    from evaluator.benchmark.suites import real_videos_for
    from evaluator.metrics import score_video
    from evaluator.reports import MOTION_FIDELITY_METRICS, table1

    assert real_videos_for("motion") is None  # no real set ships with the natural-language suites
    prompts = ["a red square moves left", "a static blue circle"]
    spec = BenchmarkSpec(
        checkpoints=[str(tiny_pipeline_dir)],
        prompts=prompts,
        seeds=[0, 1],
        metrics=["dynamic_degree", CONFORMANCE],
        workers=1,
    )
    out = tmp_path / "bench"
    records = run_benchmark(spec, out, real_suite="tiny")
    model = tiny_pipeline_dir.name
    fidelity = {(r["seed"], r["metric"]): r["value"] for r in records if r["metric"] in FIDELITY_METRICS}
    assert set(fidelity) == {(s, m) for s in (0, 1) for m in FIDELITY_METRICS}
    real = real_videos_for("tiny")
    real_dd = np.mean([score_video(v, 8.0, ["dynamic_degree"])["dynamic_degree"].value for v in real])
    for s in (0, 1):
        gen_dd = np.mean([r["value"] for r in records if r["metric"] == "dynamic_degree" and r["seed"] == s])
        assert fidelity[(s, "dynamic_degree_gap")] == pytest.approx(abs(gen_dd - real_dd))

    before = (out / "records.jsonl").read_text()
    run_benchmark(spec, out, real_suite="tiny")  # every figure exists: nothing is added
    assert (out / "records.jsonl").read_text() == before

    table = table1(records)
    group = [c["metric"] for c in table["columns"] if c["group"] == "motion fidelity"]
    assert group == list(MOTION_FIDELITY_METRICS)
    cells = table["rows"][0]["cells"]
    motion_ok = [float(r["value"]) for r in records if r["metric"] == "conformance/motion_ok"]
    assert cells["conformance/motion_ok"]["mean"] == pytest.approx(np.mean(motion_ok))  # every prompt of every seed
    assert cells["dynamic_degree_gap"]["mean"] == pytest.approx(
        np.mean([fidelity[(s, "dynamic_degree_gap")] for s in (0, 1)])
    )
    assert any(n.startswith("motion fidelity") for n in table["notes"])
    assert model == table["rows"][0]["model"]


def test_fidelity_against_real_clips_of_the_generated_length(tiny_pipeline_dir, tmp_path):
    from evaluator.benchmark.suites import real_videos_for
    from evaluator.metrics.fidelity import flow_statistics_distance
    from trainer.data.video_io import read_video

    prompts = ["a red square moves left", "a blue circle moves up"]
    ckpt = str(tiny_pipeline_dir)
    spec = BenchmarkSpec(
        checkpoints=[ckpt],
        prompts=prompts,
        seeds=[0],
        metrics=["dynamic_degree"],
        sampling_overrides={ckpt: {"num_frames": 9}},
        workers=1,
    )
    out = tmp_path / "bench"
    records = run_benchmark(spec, out, real_suite="tiny")
    gen = [read_video(video_path(out, tiny_pipeline_dir.name, p, 0))[0] for p in prompts]
    real = real_videos_for("tiny", frames=9)
    assert {len(v) for v in gen} == {9} and {len(v) for v in real} == {9}
    (swd,) = [r["value"] for r in records if r["metric"] == "motion_swd"]
    assert swd == pytest.approx(flow_statistics_distance(gen, real, seed=0))
