"""The Generate tab's Frames / Height / Width show a checkpoint's defaults before any generation."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gradio")

from webui.generate import checkpoint_defaults, default_shape, flowmo_fields, flowmo_line


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    root = tmp_path / "zoo"
    root.mkdir()
    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(root))
    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    return root


def test_a_listed_checkpoint_gives_its_schedule_and_size():
    sampling = {"kind": "few_step", "timesteps": [1000, 757, 522], "num_frames": 17, "height": 32, "width": 48}
    text, frames, height, width = checkpoint_defaults(
        None, {"name": "s", "source": "run", "info": {"sampling": sampling}}
    )
    assert (frames, height, width) == (17, 32, 48)
    assert "Few-step student: 3 steps" in text
    assert checkpoint_defaults(None, None) == ("", None, None, None)


def test_page_load_values_come_from_the_first_zoo_checkpoint(zoo, tiny_student_dir):
    assert default_shape() == (None, None, None)  # an empty zoo: the fields stay empty
    (zoo / "a-student").symlink_to(tiny_student_dir)
    s = json.loads((tiny_student_dir / "motionlab_sampling.json").read_text())
    assert default_shape() == (s["num_frames"], s["height"], s["width"])
    assert all(isinstance(v, int) and v > 0 for v in default_shape())


def test_the_sampler_fields_make_the_generation_request():
    assert flowmo_fields("default", "0.5", "1", "3", "2") == {"sampler": "default"}  # FlowMo's fields ignored
    assert flowmo_fields("flowmo", "0.5", "", "3", "") == {
        "sampler": "flowmo",
        "flowmo_eta": 0.5,
        "flowmo_start": None,
        "flowmo_stop": 3,
        "flowmo_iterations": None,
    }
    with pytest.raises(ValueError, match="FlowMo iterations: must be a whole number"):
        flowmo_fields("flowmo", "", "", "", "1.5")
    line = flowmo_line(
        {"eta": 0.5, "start": 0, "stop": 3, "iterations": 1, "forward_evaluations": 6, "backward_evaluations": 6}
    )
    assert "FlowMo" in line and "guided steps 0-3" in line and "+6 forward" in line


def test_the_tabs_figures_come_from_the_same_merge_as_the_generation():
    from backend import services

    teacher = {"kind": "teacher", "num_steps": 50, "guidance_scale": 5.0, "num_frames": 17, "height": 32, "width": 32}
    assert services.network_evaluations(teacher) == 2 * 50  # CFG pairs
    assert services.network_evaluations(teacher, {"steps": 4, "prompt": "a", "mode": "job"}) == 2 * 4
    # FlowMo's two guided steps: one more CFG pair each
    assert services.network_evaluations(teacher, {"steps": 4, "sampler": "flowmo", "flowmo_stop": 2}) == 8 + 4
    student = {"kind": "few_step", "timesteps": [1000, 757, 522]}
    assert services.network_evaluations(student, {"guidance": 3.0}) == 3  # no CFG for a few-step student
    assert services.effective_sampling(student, {"steps": 2}).timesteps == [1000.0, 522.0]
    assert services.effective_sampling(teacher, {"height": 16}).height == 16
    # nothing to work it out from, or a request the API refuses (naming why when it is sent)
    assert services.network_evaluations(None) is None
    assert services.network_evaluations(teacher, {"steps": 0}) is None
    assert services.network_evaluations(teacher, {"steps": 4, "sampler": "flowmo", "flowmo_stop": 5}) is None
    assert services.effective_sampling({"kind": "teacher", "no_such_field": 1}) is None
