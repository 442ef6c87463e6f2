"""Child processes that die with their parent, however it dies: ``PR_SET_PDEATHSIG`` on Linux, set by the child.

    die_with_parent(parent_pid, signal.SIGTERM)   # first thing in the child

The child asks for it itself, never through ``Popen(preexec_fn=...)``: Python code run between fork and exec can
hang for good in a parent with other threads (a lock one of them held at the fork stays held in the child).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, sig: int) -> None:
    """Have Linux send ``sig`` to this process when its parent dies; exit at once if the parent is no longer
    ``parent_pid`` (it died before the request took effect). Does nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os._exit(1)
