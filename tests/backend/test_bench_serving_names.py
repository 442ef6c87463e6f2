"""``bench/serving.py --http`` with zoo names: names the server lists are used as they are, anything else is
registered with its resolved absolute directory (a zoo name is not a path relative to the working directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench_serving():
    return load_bench("serving")


@pytest.fixture
def zoo(tmp_path, monkeypatch, tiny_student_dir):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "tiny-student").symlink_to(tiny_student_dir)
    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(root))
    monkeypatch.chdir(tmp_path)  # where "tiny-student" is no directory
    return root


def test_zoo_names_the_server_lists_are_not_registered(bench_serving, zoo):
    refs, register = bench_serving.http_checkpoints(
        {"bench-teacher": "tiny-teacher", "bench-student": "tiny-student"}, {"tiny-teacher", "tiny-student", "other"}
    )
    assert refs == {"bench-teacher": "tiny-teacher", "bench-student": "tiny-student"}
    assert register == []


def test_other_checkpoints_are_registered_with_absolute_directories(bench_serving, zoo, tiny_student_dir):
    refs, register = bench_serving.http_checkpoints(
        {"bench-teacher": str(tiny_student_dir), "bench-student": "tiny-student"}, set()
    )
    assert refs == {"bench-teacher": "bench-teacher", "bench-student": "bench-student"}
    assert register == [
        ("bench-teacher", str(tiny_student_dir.resolve())),
        ("bench-student", str((zoo / "tiny-student").resolve())),
    ]
    assert all(Path(p).is_absolute() and (Path(p) / "model_index.json").is_file() for _, p in register)


def test_an_unknown_name_fails_with_the_known_ones(bench_serving, zoo):
    with pytest.raises(FileNotFoundError, match="tiny-student"):
        bench_serving.http_checkpoints({"bench-student": "no-such-model"}, set())
