"""``motionlab generate``: a light CLI import, several prompts x seeds into a folder with one model load, and the
single-video form as before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from backend.cli import app
from tests.conftest import REPO


def _modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the names in its ``sys.modules`` afterwards."""
    probe = code + "\nimport sys, json\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


# what a command that needs them imports in its body: model libraries, the server stack, the evaluator, the UI
HEAVY = {
    "torch",
    "diffusers",
    "transformers",
    "fastapi",
    "uvicorn",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "gradio",
    "evaluator",
    "webui",
}


def _generate(checkpoint, *args):
    """``motionlab generate --checkpoint <checkpoint> <args>`` in process (paths given as they are)."""
    return CliRunner().invoke(app, ["generate", "--checkpoint", str(checkpoint), *map(str, args)])


def test_importing_the_cli_loads_no_model_or_server_libraries():
    mods = _modules_after("import backend.cli")
    assert "typer" in mods and "backend.cli" in mods  # the probe did import the CLI
    # --help and the other commands do not pay for these: the command bodies import them
    assert not HEAVY & mods, sorted(HEAVY & mods)
    assert "diffusers.pipelines" not in mods


def test_generate_help_loads_no_heavy_module_nor_the_settings():
    mods = _modules_after(
        "import sys\n"
        "sys.argv = ['motionlab', 'generate', '--help']\n"
        "from backend.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )
    assert "backend.cli" in mods
    # the settings (pydantic-settings) are read by the commands that use them, not by the console script
    unwanted = HEAVY | {"backend.core.config", "pydantic_settings"}
    assert not unwanted & mods, sorted(unwanted & mods)


def test_the_generation_path_does_not_import_diffusers_pipelines(tiny_student_dir, tmp_path):
    out = tmp_path / "v.mp4"
    mods = _modules_after(
        "from backend.cli import app\n"
        f"app(['generate', '--checkpoint', {str(tiny_student_dir)!r}, '--prompt', 'a red square moves left', "
        f"'--out', {str(out)!r}], standalone_mode=False)"
    )
    assert out.is_file()
    assert "diffusers.models.transformers.transformer_wan" in mods  # the model did load
    assert "diffusers.pipelines" not in mods


def test_several_prompts_and_seeds_write_a_folder_with_one_model_load(tiny_student_dir, tmp_path, monkeypatch):
    import trainer.zoo

    loads = []
    real = trainer.zoo.load_generator
    monkeypatch.setattr(trainer.zoo, "load_generator", lambda *a, **k: loads.append(a) or real(*a, **k))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle moves up\n\n# skipped\na red square moves left\n")
    out = tmp_path / "videos"
    r = CliRunner().invoke(
        app,
        [
            "generate",
            "--checkpoint",
            str(tiny_student_dir),
            "--prompt",
            "a green triangle",
            "--prompts-file",
            str(prompts),
            "--seeds",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(loads) == 1
    rows = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    want = [(p, s) for p in ("a green triangle", "a blue circle moves up", "a red square moves left") for s in (0, 1)]
    assert [(row["prompt"], row["seed"]) for row in rows] == want
    assert rows[0]["path"] == "0-a-green-triangle-seed0.mp4"
    assert rows[-1]["path"] == "2-a-red-square-moves-left-seed1.mp4"
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(row["path"] for row in rows)
    assert all((out / row["path"]).stat().st_size > 0 for row in rows)


def test_repeated_seeds_and_the_single_video_form(tiny_student_dir, tmp_path):
    r = _generate(tiny_student_dir, "--prompt", "a red square", "--seed", "3", "--seed", "5", "--out", tmp_path / "two")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "two").glob("*.mp4")) == [
        "0-a-red-square-seed3.mp4",
        "0-a-red-square-seed5.mp4",
    ]
    single = tmp_path / "one.mp4"
    r = _generate(tiny_student_dir, "--prompt", "a red square", "--seed", "3", "--out", single)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["out"] == str(single) and info["kind"] == "few_step" and single.stat().st_size > 0


def test_a_video_in_a_batch_is_the_single_video_of_its_seed(tiny_student_dir, tmp_path):
    import numpy as np

    from trainer.data.video_io import read_video

    common = ["generate", "--checkpoint", str(tiny_student_dir), "--prompt", "a red square", "--frames", "5"]
    runner = CliRunner()
    single = runner.invoke(app, [*common, "--seed", "5", "--out", str(tmp_path / "one.mp4")])
    batch = runner.invoke(
        app, [*common, "--seed", "3", "--seed", "5", "--batch-size", "2", "--out", str(tmp_path / "batch")]
    )
    assert single.exit_code == 0 and batch.exit_code == 0, single.output + batch.output
    rows = [json.loads(x) for x in batch.stdout.strip().splitlines()]
    assert [r["batch"] for r in rows] == [2, 2] and rows[1]["seed"] == 5
    one = json.loads(single.stdout.strip().splitlines()[-1])
    assert one["seed"] == 5 and set(one["timings"]) >= {"text_encoding", "denoising", "vae_decoding"}
    for k in ("kind", "steps", "fps", "network_evaluations", "sampler"):
        assert rows[1][k] == one[k], k
    alone, _ = read_video(tmp_path / "one.mp4")
    batched, _ = read_video(tmp_path / "batch" / "0-a-red-square-seed5.mp4")
    other, _ = read_video(tmp_path / "batch" / "0-a-red-square-seed3.mp4")
    assert alone.shape == batched.shape == (5, 32, 32, 3)
    # the same seed, alone or in a batch: the same frames (to float rounding before the lossy mp4)
    assert np.abs(alone.astype(float) - batched.astype(float)).mean() < 1.0
    assert np.abs(alone.astype(float) - other.astype(float)).mean() > 1.0  # another seed really differs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps: must be >= 1 (got 0)"),
        (["--steps", "1001"], "--steps: must be <= 1000 (got 1001)"),
        (["--guidance", "-1"], "--guidance: must be >= 0 (got -1)"),
        (["--frames", "0"], "--frames: must be >= 1 (got 0)"),
    ],
)
def test_a_sampling_option_out_of_bounds_names_its_flag_before_any_video(argv, message, tiny_student_dir, tmp_path):
    for out in (tmp_path / "v.mp4", tmp_path / "videos"):
        seeds = ["--seed", "1"] if out.suffix else ["--seeds", "2"]
        r = _generate(tiny_student_dir, "--prompt", "a", *seeds, *argv, "--out", out)
        assert r.exit_code == 2 and message in r.output, r.output
        assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "a", "--seed", "1", "--seed", "2", "--out", "x.mp4"], "need a folder"),
        (["--prompt", "a", "--seed", "1", "--seeds", "2"], "not both"),
        (["--seeds", "2"], "--prompt"),
        (["--prompt", "a", "--seeds", "0"], "at least 1"),
    ],
)
def test_bad_combinations_fail_before_loading_a_model(argv, message, tmp_path):
    r = _generate(tmp_path / "missing", *argv)
    assert r.exit_code == 2
    assert message in r.output


def test_flowmo_sampler_from_the_cli_guides_the_video_and_reports_its_passes(tiny_student_dir, tmp_path):
    runner = CliRunner()
    argv = [
        "generate",
        "--checkpoint",
        str(tiny_student_dir),
        "--prompt",
        "a red square",
        "--seed",
        "3",
        "--frames",
        "9",
        "--height",
        "16",
        "--width",
        "16",
    ]
    plain = runner.invoke(app, [*argv, "--out", str(tmp_path / "plain.mp4")])
    guided = runner.invoke(
        app,
        [
            *argv,
            "--out",
            str(tmp_path / "flowmo.mp4"),
            "--sampler",
            "flowmo",
            "--flowmo-eta",
            "0.5",
            "--flowmo-stop",
            "2",
            "--flowmo-iterations",
            "2",
        ],
    )
    assert plain.exit_code == 0 and guided.exit_code == 0, plain.output + guided.output
    p, g = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (plain, guided))
    assert p["sampler"] == "default" and "flowmo" not in p
    assert g["sampler"] == "flowmo" and g["flowmo"]["guided_steps"] == 2 and g["flowmo"]["eta"] == 0.5
    assert g["network_evaluations"] == p["network_evaluations"] + 2 * 2
    assert g["flowmo"]["backward_evaluations"] == 2 * 2
    assert (tmp_path / "plain.mp4").read_bytes() != (tmp_path / "flowmo.mp4").read_bytes()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "flowmo", "--flowmo-eta", "0"], "--flowmo-eta: must be > 0"),
        (["--sampler", "flowmo", "--flowmo-eta", "1e9"], "--flowmo-eta: must be <= 100"),
        (["--sampler", "flowmo", "--flowmo-iterations", "11"], "--flowmo-iterations: must be in [1, 10]"),
        (["--sampler", "flowmo", "--flowmo-start", "2", "--flowmo-stop", "1"], "--flowmo-stop: must be > flowmo_start"),
        (["--flowmo-eta", "0.5"], "--flowmo-eta: is a FlowMo setting: it needs sampler 'flowmo'"),
        (["--sampler", "dpm"], "--sampler: must be one of default, flowmo"),
    ],
)
def test_bad_flowmo_settings_fail_before_loading_a_model(argv, message, tmp_path):
    r = _generate(tmp_path / "missing", "--prompt", "a", *argv)
    assert r.exit_code == 2
    assert message in " ".join(r.output.split()), r.output


def test_a_flowmo_range_past_the_checkpoints_steps_names_the_flag(tiny_student_dir, tmp_path):
    r = _generate(
        tiny_student_dir,
        "--prompt",
        "a red square",
        "--sampler",
        "flowmo",
        "--flowmo-stop",
        "4",
        "--out",
        tmp_path / "v.mp4",
    )
    assert r.exit_code == 2 and "--flowmo-stop: must be <= 3, the sampler's number of steps" in r.output, r.output
    assert not (tmp_path / "v.mp4").exists()


def test_eval_reports_a_flowmo_row_next_to_the_plain_one_on_a_vbench_suite(tiny_student_dir, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--checkpoints",
            str(tiny_student_dir),
            "--checkpoints",
            f"{tiny_student_dir}@flowmo",
            "--suite",
            "vbench:dynamic_degree",
            "--prompts",
            "1",
            "--seeds",
            "1",
            "--flowmo-eta",
            "0.5",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    models = {rec["model"] for rec in records}
    assert models == {"student", "student@flowmo"}
    assert {rec["prompt"] for rec in records} == {"a person swimming in ocean"}  # VBench's first dynamic_degree one
    guided = [rec for rec in records if rec["model"] == "student@flowmo"]
    assert all(rec["flowmo"]["eta"] == 0.5 and rec["checkpoint"] == str(tiny_student_dir) for rec in guided)
    assert "student@flowmo" in r.output  # a row of the printed report
    bad = CliRunner().invoke(
        app, ["eval", "--checkpoints", str(tiny_student_dir), "--suite", "vbench:speed", "--out", str(tmp_path / "bad")]
    )
    assert bad.exit_code == 2 and "unknown VBench dimension 'speed'" in bad.output and "dynamic_degree" in bad.output
