"""Shared fixtures: tiny models built and saved in diffusers format, loaded back through the real code path."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread: tiny tensors gain nothing from two, and two threads stall badly when the other core is busy
# (set in os.environ here, so the subprocesses the tests start inherit OMP_NUM_THREADS=1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


SLOW_TEST_TIMEOUT_S = 3600  # the default ``timeout`` (pyproject.toml) is sized for the default suite


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where no CUDA device is present; tests marked ``slow``
    without a timeout of their own get ``SLOW_TEST_TIMEOUT_S``."""
    cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A randomly initialised tiny generator saved as a WanPipeline directory (no training)."""
    from trainer.models.generator import Generator

    path = tmp_path_factory.mktemp("tiny") / "pipeline"
    Generator.build_tiny(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory):
    """The same random tiny generator saved as a 3-step student (few-step sampling settings)."""
    from trainer.models.generator import Generator

    gen = Generator.build_tiny(seed=0)
    path = tmp_path_factory.mktemp("tiny") / "student"
    gen.save_pretrained(path, sampling=gen.sampling.few_step())
    return path


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_pipeline_dir, tmp_path_factory):
    """A rank-4 LoRA of the tiny pipeline's transformer (random, non-zero weights) saved as an adapter checkpoint that
    names the pipeline as its base, with 3-step student sampling."""
    from trainer.config import LoraConfig
    from trainer.lora import make_lora
    from trainer.models.generator import Generator

    gen = Generator.from_pretrained(tiny_pipeline_dir)
    net, _ = make_lora(gen.transformer, LoraConfig(rank=4, alpha=8.0), base=str(tiny_pipeline_dir))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("tiny") / "adapter"
    net.export_lora(gen, path, gen.sampling.few_step())
    return path


@pytest.fixture
def kill_and_resume(tmp_path):
    """Run ``motionlab train`` to the end (reference), then again with a SIGKILL once checkpoint ``kill_after``
    exists, restart it, and return both run directories: ``(reference, resumed)``."""
    import signal
    import subprocess
    import sys
    import time

    def train_cmd(method, run_dir, steps, sets, flags):
        cmd = [sys.executable, "-m", "backend.cli", "train", method, "--steps", str(steps), "--run-dir", str(run_dir)]
        for key, val in flags.items():
            cmd += [f"--{key}", str(val)]
        for s in sets:
            cmd += ["--set", s]
        return cmd

    def run(method, *, steps, kill_after, sets=(), **flags):
        ref, run_dir = tmp_path / "reference", tmp_path / "killed"
        subprocess.run(train_cmd(method, ref, steps, sets, flags), check=True, capture_output=True, timeout=900)
        proc = subprocess.Popen(
            train_cmd(method, run_dir, steps, sets, flags), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        target = run_dir / "checkpoints" / f"step-{kill_after:08d}"
        deadline = time.time() + 900
        while not target.exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not (run_dir / "export").exists()
        subprocess.run(train_cmd(method, run_dir, steps, sets, flags), check=True, capture_output=True, timeout=900)
        return ref, run_dir

    return run


def load_bench(name: str):
    """``bench/<name>.py`` as a module (``bench/`` is not a package), loaded once and kept in ``sys.modules`` under
    ``name``, where dataclasses and pickles look their module up."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def same_safetensors(dir_a, dir_b) -> list[str]:
    """Names of the safetensors files under two directories whose tensors differ (empty when identical)."""
    from safetensors.torch import load_file

    bad = []
    files = sorted(p.relative_to(dir_a) for p in Path(dir_a).rglob("*.safetensors"))
    assert files, f"no safetensors under {dir_a}"
    for rel in files:
        a, b = load_file(str(Path(dir_a) / rel)), load_file(str(Path(dir_b) / rel))
        if a.keys() != b.keys() or any(not (a[k] == b[k]).all() for k in a):
            bad.append(str(rel))
    return bad


@pytest.fixture
def differing_weights():
    return same_safetensors


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
