"""A DMD run keeps its fake score, and MoGAN / VDOT started from it continue that fake score.

The export of a DMD-family run holds the fake score in ``fake_score/`` next to the pipeline parts (not a pipeline
component: stock diffusers loads the directory as a plain pipeline); ``--init`` with the run directory, its export or a
zoo name of it hands the fake score on; an init without one falls back to the teacher, saying so; and the full presets
of MoGAN and VDOT refuse to start without ``init``. Tiny, CPU only:

    python -m pytest tests/trainer/methods/test_fake_score_continuity.py -q
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import ConfigError, load_train_config
from trainer.loop import train_run
from trainer.methods.mogan import MoGAN
from trainer.methods.vdot import VDOT
from trainer.zoo import FAKE_SCORE_DIR, find_fake_score, register_checkpoint

CPU = torch.device("cpu")


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no weights in {d}"
    return out


def _same(a: dict, b: dict) -> bool:
    a = {k: v.detach().cpu() for k, v in a.items()}
    b = {k: v.detach().cpu() for k, v in b.items()}
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dmd_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """Two DMD iterations (one generator and one fake-score update each) from the tiny teacher."""
    run = tmp_path_factory.mktemp("dmd") / "run"
    cfg = load_train_config(
        "dmd",
        {
            "teacher": str(tiny_pipeline_dir),
            "steps": 2,
            "batch_size": 1,
            "checkpoint_every": 2,
            "log_every": 1,
            "method_cfg": {"num_prompts": 4, "critic_steps": 1},
        },
    )
    train_run(cfg, run, progress_bar=False)
    return run


def test_dmd_export_keeps_the_fake_score_and_stays_a_stock_pipeline(dmd_run, tiny_pipeline_dir):
    from diffusers import WanPipeline

    export = dmd_run / "export"
    fake = _weights(export / FAKE_SCORE_DIR)
    assert _same(fake, _weights(dmd_run / "checkpoints" / "step-00000002" / "fake_score"))  # the trained one
    assert not _same(fake, _weights(Path(tiny_pipeline_dir) / "transformer"))  # not the teacher's copy
    assert FAKE_SCORE_DIR not in json.loads((export / "model_index.json").read_text())
    pipe = WanPipeline.from_pretrained(export)
    assert _same(pipe.transformer.state_dict(), _weights(export / "transformer"))
    # the run directory and its export both lead to it; a plain pipeline has none
    assert find_fake_score(dmd_run) == find_fake_score(export) == export / FAKE_SCORE_DIR
    assert find_fake_score(tiny_pipeline_dir) is None


def test_mogan_init_from_a_dmd_run_continues_its_fake_score(dmd_run, tiny_pipeline_dir, caplog):
    cfg = load_train_config(
        "mogan", {"teacher": str(tiny_pipeline_dir), "init": str(dmd_run), "method_cfg": {"window_chunks": 2}}
    )
    with caplog.at_level(logging.INFO, logger="trainer.methods.dmd"):
        m = MoGAN(cfg, CPU, torch.float32)
    export = dmd_run / "export"
    assert _same(m.fake_score.state_dict(), _weights(export / FAKE_SCORE_DIR))
    assert _same(m.generator.state_dict(), _weights(export / "transformer"))
    assert not _same(m.fake_score.state_dict(), m.teacher.state_dict())
    assert m.fake_score is not m.teacher and m.networks["fake_score"] is m.fake_score
    assert f"continued from {export / FAKE_SCORE_DIR}" in caplog.text


def test_vdot_init_from_a_zoo_entry_of_a_dmd_export_continues_its_fake_score(
    dmd_run, tiny_pipeline_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(tmp_path / "zoo"))
    register_checkpoint(dmd_run / "export", "my-dmd")  # the zoo copy carries fake_score/ along
    cfg = load_train_config("vdot", {"teacher": str(tiny_pipeline_dir), "init": "my-dmd"})
    m = VDOT(cfg, CPU, torch.float32)
    zoo_entry = tmp_path / "zoo" / "my-dmd"
    assert _same(m.fake_score.state_dict(), _weights(zoo_entry / FAKE_SCORE_DIR))
    assert _same(m.fake_score.state_dict(), _weights(dmd_run / "export" / FAKE_SCORE_DIR))
    assert _same(m.generator.state_dict(), _weights(zoo_entry / "transformer"))


def test_init_without_a_fake_score_falls_back_to_the_teacher(tiny_student_dir, tiny_pipeline_dir, caplog):
    cfg = load_train_config(
        "mogan", {"teacher": str(tiny_pipeline_dir), "init": str(tiny_student_dir), "method_cfg": {"window_chunks": 2}}
    )
    with caplog.at_level(logging.INFO, logger="trainer.methods.dmd"):
        m = MoGAN(cfg, CPU, torch.float32)
    assert _same(m.fake_score.state_dict(), m.teacher.state_dict()) and m.fake_score is not m.teacher
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and f"{FAKE_SCORE_DIR}/" in warning[0].getMessage()
    assert "copy of the teacher" in warning[0].getMessage()


@pytest.mark.parametrize("method", ["mogan", "vdot"])
def test_full_preset_without_init_is_a_config_error(method, tmp_path, monkeypatch):
    # an empty weights directory: a check made after loading any weights would fail on them instead
    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path / "weights"))
    cfg = load_train_config(method, preset="full")
    with pytest.raises(ConfigError, match="--init") as exc:
        train_run(cfg, tmp_path / "run", progress_bar=False)
    assert exc.value.field == "init"
    assert not (tmp_path / "run").exists()


def test_a_fake_score_that_does_not_fit_the_teacher_is_refused(dmd_run, tiny_pipeline_dir, tmp_path):
    init = tmp_path / "export"
    shutil.copytree(dmd_run / "export", init)
    config = init / FAKE_SCORE_DIR / "config.json"
    c = json.loads(config.read_text())
    c["rope_max_seq_len"] = 2 * c["rope_max_seq_len"]  # loads (no weight depends on it), but is another network
    config.write_text(json.dumps(c))
    cfg = load_train_config("vdot", {"teacher": str(tiny_pipeline_dir), "init": str(init)})
    with pytest.raises(ConfigError, match="rope_max_seq_len") as exc:
        VDOT(cfg, CPU, torch.float32)
    assert exc.value.field == "init"
