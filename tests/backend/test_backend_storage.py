"""The artifact store: ids, not paths; atomic writes; a crash never leaves a complete-looking partial artifact.

python -m pytest tests/backend/test_backend_storage.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from backend.storage import ArtifactStore, InvalidArtifactId

BAD_IDS = [
    "..",
    "../x",
    "a/b",
    "a\\b",
    "",
    ".hidden",
    "-x",
    "x" * 129,
    "vid\x00",
    "ünï",
    "a b",
    "/etc/passwd",
    "..%2F",
    "x.y",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_could_escape_are_rejected(tmp_path, bad):
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArtifactId) as e:
        store.path("videos", bad, ".mp4")
    assert "invalid id" in str(e.value)
    with pytest.raises(InvalidArtifactId):
        store.write_bytes("videos", bad, b"x")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_kinds_suffixes_and_keys_are_checked(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidArtifactId, match="kind"):
        store.path("../etc", "x")
    with pytest.raises(InvalidArtifactId, match="suffix"):
        store.path("videos", "x", "/../../y")
    for key in ("videos/../motionlab.db", "../videos/x.mp4", "videos/a/b.mp4", "nokind"):
        with pytest.raises(InvalidArtifactId):
            store.path_for_key(key)
    assert store.path_for_key("videos/vid_1.mp4") == tmp_path.resolve() / "videos" / "vid_1.mp4"
    assert store.key("reports", "r1", ".json") == "reports/r1.json"


def test_atomic_file_success_and_failure(tmp_path):
    store = ArtifactStore(tmp_path)
    p = store.write_bytes("reports", "r1", b'{"a": 1}', ".json")
    assert p.read_bytes() == b'{"a": 1}'
    with pytest.raises(RuntimeError), store.atomic_file("reports", "r1", ".json") as tmp:
        tmp.write_bytes(b'{"a": 2, "trunc')
        raise RuntimeError("writer crashed")
    assert p.read_bytes() == b'{"a": 1}'  # the old artifact, untouched
    assert [x.name for x in p.parent.iterdir()] == ["r1.json"]  # no temp file left


def test_atomic_dir_replaces_whole_directories(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.atomic_dir("checkpoints", "c1") as d:
        (d / "a.txt").write_text("1")
    with store.atomic_dir("checkpoints", "c1") as d:
        (d / "b.txt").write_text("2")
    final = store.path("checkpoints", "c1")
    assert sorted(x.name for x in final.iterdir()) == ["b.txt"]
    assert [x.name for x in final.parent.iterdir()] == ["c1"]


def test_a_writer_killed_mid_write_leaves_no_complete_looking_artifact(tmp_path):
    """SIGKILL in the middle of a write: the final name never appears; only a hidden temp file, which the
    startup cleanup removes."""
    code = f"""
import os, signal
from backend.storage import ArtifactStore
store = ArtifactStore({str(tmp_path)!r})
with store.atomic_file("videos", "vid_half", ".mp4") as tmp:
    with open(tmp, "wb") as f:
        f.write(b"\\x00" * 4096)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    store = ArtifactStore(tmp_path)
    assert not store.exists("videos", "vid_half", ".mp4")
    leftovers = list((tmp_path / "videos").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")
    assert store.cleanup_temp(older_than_s=3600) == 0  # a fresh temp file may belong to a live writer
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert store.cleanup_temp(older_than_s=3600) == 1
    assert list((tmp_path / "videos").iterdir()) == []


def test_durable_writes_are_fsynced_and_fast_ones_are_not(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    store.write_bytes("reports", "r1", b"kept", ".json")
    assert len(synced) == 2  # the file, then its directory (the rename)
    synced.clear()
    p = store.write_bytes("videos", "v1", b"served", ".mp4", durable=False)
    assert synced == [] and p.read_bytes() == b"served"
    assert [x.name for x in p.parent.iterdir()] == ["v1.mp4"]  # still written through a temp file and a rename
