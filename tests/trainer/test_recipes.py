"""The tiny recipe: stage dependencies, and a smoke run of dependent stages in parallel worker processes."""

import json

from trainer.recipes import recipe_tiny, stage_dependencies, tiny_stages


def test_stages_wait_for_the_checkpoints_they_start_from():
    deps = stage_dependencies(tiny_stages(ablations=True))
    assert deps["dmd"] == {"teacher"}
    assert deps["mogan"] == {"teacher", "dmd"}
    assert all(deps[n] == {"teacher", "dmd"} for n in ("mogan-no-dmd", "mogan-no-r1r2", "mogan-video-disc"))
    assert deps["vdot"] == deps["dfdpo"] == deps["vdot-no-otd"] == {"teacher"}
    names = [s[0] for s in tiny_stages(ablations=False)]
    assert "mogan-no-dmd" not in names and names.index("dmd") < names.index("mogan")


def test_recipe_runs_dependent_stages_in_worker_processes(tmp_path, monkeypatch, tiny_pipeline_dir):
    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(tmp_path / "zoo"))
    from trainer.zoo import register_checkpoint, resolve_checkpoint

    register_checkpoint(tiny_pipeline_dir, "tiny-teacher")
    result = recipe_tiny(tmp_path / "runs", only=["dmd", "mogan"], workers=2, seeds=1, n_prompts=2,
                         overrides={"steps": 2, "checkpoint_every": 1, "data": {"num_videos": 8}})
    assert set(result["timings_s"]) == {"dmd", "mogan", "benchmark"}
    # MoGAN started from the DMD student this run registered, not from anything older
    assert resolve_checkpoint("tiny-mogan").is_dir()
    mogan_cfg = (tmp_path / "runs" / "mogan" / "config.yaml").read_text()
    assert "init: tiny-dmd" in mogan_cfg
    for name in ("dmd", "mogan"):
        metrics = [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == 2
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "dmd" in report and "mogan" in report and "teacher-50step" in report
    assert json.loads((tmp_path / "runs" / "recipe.json").read_text())["total_s"] > 0
