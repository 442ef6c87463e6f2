"""The peak resident memory a run logs is its own, not that of the process that started it."""

import subprocess
import sys

import numpy as np

from trainer.loop import peak_rss_bytes

GIB = 2**30


def test_a_child_started_from_a_large_process_reports_its_own_peak():
    ballast = np.ones(2 * GIB // 8)  # written, so resident in this process
    assert peak_rss_bytes() >= ballast.nbytes
    code = "from trainer.loop import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) < 3 * GIB // 2 < ballast.nbytes  # ru_maxrss would report at least this process's size
