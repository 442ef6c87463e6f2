"""The tiny recipe: stage dependencies, and a smoke run of dependent stages in parallel worker processes."""

import json

from evaluator.recipes import merge_training_seeds, recipe_tiny, seeded_stages, stage_dependencies, tiny_stages


def test_stages_wait_for_the_checkpoints_they_start_from():
    deps = stage_dependencies(tiny_stages(ablations=True))
    assert deps["dmd"] == {"teacher"}
    assert deps["mogan"] == {"teacher", "dmd"}
    assert all(deps[n] == {"teacher", "dmd"} for n in ("mogan-no-dmd", "mogan-no-r1r2", "mogan-video-disc"))
    assert deps["vdot"] == deps["dfdpo"] == deps["vdot-no-otd"] == {"teacher"}
    names = [s[0] for s in tiny_stages(ablations=False)]
    assert "mogan-no-dmd" not in names and names.index("dmd") < names.index("mogan")


def test_other_training_seeds_continue_their_own_seed(tmp_path):
    base = tiny_stages(ablations=True)
    stages = base + seeded_stages(base, 1, tmp_path) + seeded_stages(base, 2, tmp_path)
    deps = stage_dependencies(stages, tmp_path)
    assert deps["mogan-seed2"] == {"teacher", "dmd-seed2"} and deps["mogan-no-dmd-seed1"] == {"teacher", "dmd-seed1"}
    assert deps["vdot-seed1"] == {"teacher"}
    by_name = {s[0]: s for s in stages}
    _name, method, over, zoo = by_name["mogan-seed2"]
    assert method == "mogan" and zoo is None and over["seed"] == 2 and over["teacher"] == "tiny-teacher"
    assert over["init"] == str(tmp_path / "dmd-seed2" / "export")
    assert by_name["mogan"][2]["init"] == "tiny-dmd" and "seed" not in by_name["mogan"][2]  # seed 0 unchanged


def test_training_seeds_merge_into_one_row():
    recs = [
        {"model": m, "prompt": "p", "seed": s, "metric": "x", "value": 1.0, "backend": "lite"}
        for m in ("mogan", "mogan-seed1", "mogan-seed2", "teacher-50step")
        for s in (0, 1)
    ]
    merged = merge_training_seeds(recs)
    assert {r["model"] for r in merged} == {"mogan", "teacher-50step"}
    assert sorted(r["seed"] for r in merged if r["model"] == "mogan") == [0, 1, 1000, 1001, 2000, 2001]


def test_recipe_runs_dependent_stages_in_worker_processes(tmp_path, monkeypatch, tiny_pipeline_dir):
    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(tmp_path / "zoo"))
    from trainer.zoo import register_checkpoint, resolve_checkpoint

    register_checkpoint(tiny_pipeline_dir, "tiny-teacher")
    result = recipe_tiny(
        tmp_path / "runs",
        only=["dmd", "mogan"],
        workers=2,
        train_seeds=2,
        eval_seeds=1,
        n_prompts=2,
        overrides={"steps": 2, "checkpoint_every": 1, "data": {"num_videos": 8}},
    )
    assert set(result["timings_s"]) == {"dmd", "mogan", "dmd-seed1", "mogan-seed1", "benchmark"}
    # MoGAN started from the DMD student this run registered, not from anything older
    assert resolve_checkpoint("tiny-mogan").is_dir()
    mogan_cfg = (tmp_path / "runs" / "mogan" / "config.yaml").read_text()
    assert "init: tiny-dmd" in mogan_cfg
    assert (
        f"init: {tmp_path / 'runs' / 'dmd-seed1' / 'export'}"
        in (tmp_path / "runs" / "mogan-seed1" / "config.yaml").read_text()
    )
    for name in ("dmd", "mogan", "dmd-seed1", "mogan-seed1"):
        metrics = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == 2
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "dmd" in report and "mogan" in report and "teacher-50step" in report and "-seed1" not in report
    table = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    mogan = next(r for r in table["rows"] if r["model"] == "mogan")
    assert mogan["cells"]["dynamic_degree"]["n_seeds"] == 2  # 2 training seeds x 1 evaluation seed
    assert "## The papers' claims on this table" in report
    assert json.loads((tmp_path / "runs" / "recipe.json").read_text())["total_s"] > 0
