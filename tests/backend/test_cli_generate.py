"""``motionlab generate``: a light CLI import, several prompts x seeds into a folder with one model load, and the
single-video form as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app

REPO = Path(__file__).resolve().parents[2]


def _modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the names in its ``sys.modules`` afterwards."""
    probe = code + "\nimport sys, json\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def test_importing_the_cli_loads_no_model_libraries():
    mods = _modules_after("import backend.cli")
    assert "diffusers.pipelines" not in mods
    # --help and the other commands do not pay for torch/diffusers: the command bodies import them
    assert not {"torch", "diffusers", "transformers"} & mods


def test_the_generation_path_does_not_import_diffusers_pipelines(tiny_student_dir, tmp_path):
    out = tmp_path / "v.mp4"
    mods = _modules_after(
        "from backend.cli import app\n"
        f"app(['generate', '--checkpoint', {str(tiny_student_dir)!r}, '--prompt', 'a red square moves left', "
        f"'--out', {str(out)!r}], standalone_mode=False)")
    assert out.is_file()
    assert "diffusers.models.transformers.transformer_wan" in mods  # the model did load
    assert "diffusers.pipelines" not in mods


def test_several_prompts_and_seeds_write_a_folder_with_one_model_load(tiny_student_dir, tmp_path, monkeypatch):
    import trainer.sampling

    loads = []
    real = trainer.sampling.load_sampler
    monkeypatch.setattr(trainer.sampling, "load_sampler", lambda *a, **k: loads.append(a) or real(*a, **k))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle moves up\n\n# skipped\na red square moves left\n")
    out = tmp_path / "videos"
    r = CliRunner().invoke(app, ["generate", "--checkpoint", str(tiny_student_dir), "--prompt", "a green triangle",
                                 "--prompts-file", str(prompts), "--seeds", "2", "--batch-size", "4",
                                 "--out", str(out)])
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
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "--checkpoint", str(tiny_student_dir), "--prompt", "a red square",
                            "--seed", "3", "--seed", "5", "--out", str(tmp_path / "two")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "two").glob("*.mp4")) == ["0-a-red-square-seed3.mp4",
                                                                       "0-a-red-square-seed5.mp4"]
    single = tmp_path / "one.mp4"
    r = runner.invoke(app, ["generate", "--checkpoint", str(tiny_student_dir), "--prompt", "a red square",
                            "--seed", "3", "--out", str(single)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["out"] == str(single) and info["kind"] == "few_step" and single.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a", "--seed", "1", "--seed", "2", "--out", "x.mp4"], "need a folder"),
    (["--prompt", "a", "--seed", "1", "--seeds", "2"], "not both"),
    (["--seeds", "2"], "--prompt"),
    (["--prompt", "a", "--seeds", "0"], "at least 1"),
])
def test_bad_combinations_fail_before_loading_a_model(argv, message, tmp_path):
    r = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path / "missing"), *argv])
    assert r.exit_code == 2
    assert message in r.output
