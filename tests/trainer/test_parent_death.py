"""trainer.parent_death: a child that asked for it dies when its parent is SIGKILLed; one whose parent is already gone
exits at once.

    python -m pytest tests/trainer/test_parent_death.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import pid_alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# The parent starts the child, prints its pid and sleeps; the child asks to die with the parent, says so, and sleeps.
CHILD = (
    "import signal, sys, time; from trainer.parent_death import die_with_parent; "
    "die_with_parent(int(sys.argv[1]), signal.SIGTERM); print('armed', flush=True); time.sleep(120)"
)
PARENT = (
    "import os, subprocess, sys, time; "
    f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True); "
    "assert c.stdout.readline().strip() == 'armed'; print(c.pid, flush=True); time.sleep(120)"
)


def test_the_child_dies_with_its_sigkilled_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)  # no handler, no cleanup: only the kernel can tell the child
        parent.wait(10)
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if child is not None and pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    # it names this process's parent, not its own (as when its parent died before the request took effect)
    res = subprocess.run([sys.executable, "-c", CHILD, str(os.getppid())], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "armed" not in res.stdout
