"""Settings from ``MOTIONLAB_*`` variables: parsed, handed to child workers, and a bad one named in one line.

python -m pytest tests/backend/test_backend_settings.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_serving_settings_come_from_the_environment_reach_child_workers_and_name_a_bad_value(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from backend.core.config import Serving, Settings
    from backend.generation import serving_options
    from trainer.serving import FastPaths

    assert serving_options(Serving(), "cpu")["fast"] == FastPaths.for_device("cpu")  # unset: the device's default
    monkeypatch.setenv("MOTIONLAB_SERVING_DTYPE", "bfloat16")
    monkeypatch.setenv("MOTIONLAB_SERVING_VAE_DTYPE", "bfloat16")
    monkeypatch.setenv("MOTIONLAB_SERVING_SLICED_DECODE", "2")
    settings = Settings(storage_root=tmp_path)
    assert (
        settings.serving.dtype,
        settings.serving.vae_dtype,
        settings.serving.sliced_decode,
        settings.serving.max_batch,
    ) == ("bfloat16", "bfloat16", 2, 16)
    env = settings.as_env()  # what a worker started by `motionlab serve` is given
    assert env["MOTIONLAB_SERVING_DTYPE"] == env["MOTIONLAB_SERVING_VAE_DTYPE"] == "bfloat16"
    assert env["MOTIONLAB_SERVING_SLICED_DECODE"] == "2"
    opts = serving_options(settings.serving, "cuda")
    assert opts["fast"] == FastPaths(dtype="bfloat16", vae_dtype="bfloat16", sliced_decode=2)
    assert opts["max_batch"] == 16
    for name, bad in (
        ("MAX_BATCH", "0"),
        ("DTYPE", "int8"),
        ("VAE_DTYPE", "half"),
        ("SLICED_DECODE", "0"),
        ("BATCH_WINDOW_MS", "-1"),
    ):
        with monkeypatch.context() as m:
            m.setenv(f"MOTIONLAB_SERVING_{name}", bad)
            with pytest.raises(ValidationError, match=name.lower()):
                Settings(storage_root=tmp_path)


@pytest.mark.parametrize(
    "var, value",
    [
        ("MOTIONLAB_SERVING_MAX_BATCH", "0"),
        ("MOTIONLAB_LIMIT_MAX_FRAMES", "many"),
        ("MOTIONLAB_SYNC_GENERATION", "gpu"),
    ],
)
def test_motionlab_serve_names_a_bad_variable_in_one_line_and_starts_nothing(tmp_path, var, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONLAB_")}
    env.update({"MOTIONLAB_STORAGE_ROOT": str(tmp_path / "storage"), var: value, "PYTHONPATH": str(REPO)})
    res = subprocess.run(
        [sys.executable, "-m", "backend.cli", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{var}={value!r}" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "storage").exists()  # nothing created
