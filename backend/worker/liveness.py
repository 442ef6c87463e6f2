"""Process identity tokens (``host:pid:start``) and whether the process behind one is still alive.

Used by the leases on database rows (``backend.crud.leases``: who executes a run, job or benchmark) and by the
sweep that takes abandoned rows up again (``backend.worker.recovery``). The start time (from /proc) guards against
pid reuse; a zombie counts as dead.

    tok = owner_token()              # this process
    owner_state(tok)                 # "alive" | "dead" | "unknown" (another host: only heartbeats can tell)
"""

from __future__ import annotations

import functools
import os
import socket


@functools.lru_cache(maxsize=1)
def hostname() -> str:
    return socket.gethostname().replace(":", "_") or "localhost"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) of a Linux process, or None where /proc is missing or the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return rest[0], rest[19]


def process_start(pid: int) -> str:
    st = _proc_stat(pid)
    return st[1] if st else "0"


_OWN_TOKEN: dict[int, str] = {}  # by pid: a forked child gets its own


def owner_token(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (this one by default: read from /proc once per process)."""
    if pid is not None:
        return f"{hostname()}:{pid}:{process_start(pid)}"
    me = os.getpid()
    if me not in _OWN_TOKEN:
        _OWN_TOKEN[me] = owner_token(me)
    return _OWN_TOKEN[me]


def owner_state(token: str | None) -> str:
    if not token:
        return "dead"
    try:
        host, pid_s, start = token.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return "unknown"
    if host != hostname():
        return "unknown"
    if os.path.isdir("/proc/self"):
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return "dead"
        return "alive" if start in ("0", st[1]) else "dead"  # a different start time: the pid was reused
    try:  # no /proc (macOS): signal 0 only tells whether some process has that pid
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"
