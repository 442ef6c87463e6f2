"""The artifact store: every video, checkpoint, report and run directory lives under one storage root,
addressed by ``(kind, id)``, never by a path a client chose.

    store = ArtifactStore(settings.storage_root)
    with store.atomic_file("videos", "vid_0123abcd", ".mp4") as tmp:
        write_video(tmp, frames)                 # any writer that takes a path
    store.write_bytes("reports", "bench_01", b"{...}", ".json")
    path = store.path("videos", "vid_0123abcd", ".mp4")

Writes are atomic: content goes to a hidden temp file (``.tmp-*``) in the destination directory, is fsynced
and then renamed into place, so a crash leaves either the old artifact, the new one, or an orphan temp file
(``cleanup_temp`` removes those); never a half-written file under the final name. ``durable=False`` skips the two
fsyncs (file and directory): the write is still atomic and survives a crash of the process, but a power cut may
lose it -- the same promise as the embedded database's commits (SQLite WAL with ``synchronous=NORMAL``). Served
videos use it: they are in every request's latency and can be generated again. Ids are checked against a
strict pattern and every resolved path is checked to stay inside its kind's directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

KINDS = frozenset({"videos", "checkpoints", "reports", "runs", "archives", "studies"})
SUFFIX_RE = re.compile(r"^(\.[a-z0-9]{1,10}){0,2}$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
TMP_PREFIX = ".tmp-"


class InvalidArtifactId(ValueError):
    """An id, kind or suffix that could address something outside the store (or is simply malformed)."""

    def __init__(self, what: str, value: str, rule: str):
        self.field = what
        super().__init__(f"invalid {what} {value[:80]!r}: {rule}")


def validate_id(artifact_id: str, what: str = "id") -> str:
    if not isinstance(artifact_id, str) or not ID_RE.fullmatch(artifact_id):
        raise InvalidArtifactId(
            what,
            str(artifact_id),
            "must be 1-128 characters of letters, digits, '_' or '-', starting with a letter or digit",
        )
    return artifact_id


def _check_name(artifact_id: str, suffix: str) -> None:
    validate_id(artifact_id)
    if not SUFFIX_RE.fullmatch(suffix):
        raise InvalidArtifactId("suffix", suffix, "must look like '.mp4' or '.tar.gz'")


def private_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with the directory itself created 0700 (an existing one is left as it is): the storage root
    holds the embedded database, the broker and every artifact, which are this service's alone."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    return p


def private_file(path: str | os.PathLike) -> Path:
    """Create an empty file 0600 if there is none (an existing one is left as it is), in a private directory.

    For SQLite files: SQLite creates a database's -wal and -shm files with the database file's permissions."""
    p = Path(path)
    private_dir(p.parent)
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    return p


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(final: Path, suffix: str, durable: bool) -> Iterator[Path]:
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=TMP_PREFIX, suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        if durable:
            _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self._real_dirs: dict[str, Path] = {}  # kind -> its directory with symlinks resolved (for the escape check)

    # --- addressing ------------------------------------------------------------------------------------

    def kind_dir(self, kind: str) -> Path:
        if kind not in KINDS:
            raise InvalidArtifactId("kind", kind, f"must be one of {sorted(KINDS)}")
        return private_dir(self.root / kind)

    def path(self, kind: str, artifact_id: str, suffix: str = "") -> Path:
        """The path of an artifact; raises InvalidArtifactId for anything that could escape the store."""
        _check_name(artifact_id, suffix)
        base = self.kind_dir(kind)
        p = base / f"{artifact_id}{suffix}"
        real = self._real_dirs.get(kind) or self._real_dirs.setdefault(kind, base.resolve())
        # belt and braces: the pattern already forbids separators and dots, but never trust one check
        if p.resolve().parent != real:
            raise InvalidArtifactId("id", artifact_id, "resolves outside the storage root")
        return p

    def key(self, kind: str, artifact_id: str, suffix: str = "") -> str:
        """The portable name stored in the database: ``<kind>/<id><suffix>`` (checked, but nothing is touched)."""
        if kind not in KINDS:
            raise InvalidArtifactId("kind", kind, f"must be one of {sorted(KINDS)}")
        _check_name(artifact_id, suffix)
        return f"{kind}/{artifact_id}{suffix}"

    def path_for_key(self, key: str) -> Path:
        kind, _, name = key.partition("/")
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_-]{0,127})((?:\.[a-z0-9]{1,10}){0,2})", name)
        if not m:
            raise InvalidArtifactId("key", key, "must be '<kind>/<id><suffix>'")
        return self.path(kind, m.group(1), m.group(2))

    def exists(self, kind: str, artifact_id: str, suffix: str = "") -> bool:
        return self.path(kind, artifact_id, suffix).exists()

    # --- atomic writes ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def atomic_file(self, kind: str, artifact_id: str, suffix: str = "", *, durable: bool = True) -> Iterator[Path]:
        """Yield a temp path next to the destination; on success it is fsynced (``durable``) and renamed into
        place."""
        with _atomic_file(self.path(kind, artifact_id, suffix), suffix, durable) as tmp:
            yield tmp

    def write_bytes(self, kind: str, artifact_id: str, data: bytes, suffix: str = "", *, durable: bool = True) -> Path:
        final = self.path(kind, artifact_id, suffix)
        with _atomic_file(final, suffix, durable) as tmp:
            tmp.write_bytes(data)
        return final

    def write_text(self, kind: str, artifact_id: str, text: str, suffix: str = "") -> Path:
        return self.write_bytes(kind, artifact_id, text.encode("utf-8"), suffix)

    @contextlib.contextmanager
    def atomic_dir(self, kind: str, artifact_id: str) -> Iterator[Path]:
        """Yield a temp directory; on success it replaces ``<kind>/<id>`` in one rename."""
        final = self.path(kind, artifact_id)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=TMP_PREFIX))
        try:
            yield tmp
            if final.exists():
                # a directory cannot be os.replace'd over a non-empty one: move the old one aside first
                old = final.parent / f"{TMP_PREFIX}old-{artifact_id}-{time.time_ns()}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # --- maintenance -----------------------------------------------------------------------------------

    def delete(self, kind: str, artifact_id: str, suffix: str = "") -> bool:
        p = self.path(kind, artifact_id, suffix)
        if p.is_dir():
            shutil.rmtree(p)
            return True
        if p.exists():
            p.unlink()
            return True
        return False

    def cleanup_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files/dirs left by a crash (only old ones: a live writer may still own a new one)."""
        removed = 0
        now = time.time()
        for kind in KINDS:
            d = self.root / kind
            if not d.is_dir():
                continue
            for p in d.glob(f"{TMP_PREFIX}*"):
                try:
                    if now - p.stat().st_mtime < older_than_s:
                        continue
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed
