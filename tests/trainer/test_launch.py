"""Stopping several ranks together, and which rank's error a failed launch reports (``trainer.launch``).

The launch itself (elastic agent, rank processes, progress and stop files) runs end to end under a real worker in
``tests/backend/test_backend_multirank.py``.
"""

from __future__ import annotations

import json
import time

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from trainer.launch import RankFailed, _rank_failed, stop_checker


def test_one_rank_asking_to_stop_stops_every_rank_at_that_step(tmp_path):
    """Only rank 1 asks (at its 2nd step): both ranks stop after step 2 and one checkpoint is saved there.
    Without the collective decision rank 0 would train on and wait for rank 1 in its next step's all-reduce."""
    from tests.trainer.ddp_helpers import train_until_rank_asks_to_stop
    from trainer.config import load_train_config
    from trainer.distributed import launch_local

    cfg = load_train_config(
        "sft",
        {
            "steps": 6,
            "checkpoint_every": 100,
            "log_every": 1,
            "batch_size": 2,
            "data": {"num_videos": 4, "num_frames": 5, "height": 16, "width": 16},
        },
    )
    out = launch_local(train_until_rank_asks_to_stop, cfg, tmp_path / "run", 1, 2, nprocs=2)
    assert out["ranks"] == [(2, True), (2, True)]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert not (tmp_path / "run" / "export").exists()


def test_stop_checker_reads_the_stop_file(tmp_path):
    stop = tmp_path / "STOP"
    should_stop = stop_checker(stop)
    assert should_stop() is False
    stop.write_text("cancel")
    assert should_stop() is True
    stop.write_text("abort")
    try:
        should_stop()
    except RuntimeError as exc:
        assert "without a checkpoint" in str(exc)
    else:
        raise AssertionError("an abort must fail the rank")


def _error_file(path, message: str, when: float) -> str:
    path.write_text(
        json.dumps(
            {
                "message": {
                    "message": message,
                    "extraInfo": {
                        "py_callstack": f"Traceback ...\n{message}\n",
                        "timestamp": str(int(when)),
                        "time": when,
                    },
                }
            }
        )
    )
    return str(path)


def test_a_failed_launch_reports_the_rank_that_failed_first(tmp_path):
    """Rank 1 raised a ConfigError; rank 0 then failed in a collective because its peer was gone, within the same
    second: the precise times pick rank 1's error, not rank 0's."""
    now = float(int(time.time())) + 0.1
    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    failures = {
        0: ProcessFailure(
            local_rank=0,
            pid=100,
            exitcode=1,
            error_file=_error_file(tmp_path / "0" / "error.json", "RuntimeError: Connection closed by peer", now + 0.5),
        ),
        1: ProcessFailure(
            local_rank=1,
            pid=101,
            exitcode=1,
            error_file=_error_file(tmp_path / "1" / "error.json", "ConfigError: config field 'seed': bad", now),
        ),
    }
    assert failures[0].timestamp == failures[1].timestamp  # elastic's own timestamps cannot tell them apart
    err = _rank_failed(ChildFailedError("trainer.launch", failures), tmp_path)
    assert isinstance(err, RankFailed) and err.rank == 1 and err.exitcode == 1
    assert err.message == "ConfigError: config field 'seed': bad" and "Traceback" in err.detail

    # a rank killed by a signal records nothing: it is named with the signal
    killed = {1: ProcessFailure(local_rank=1, pid=102, exitcode=-9, error_file=str(tmp_path / "missing.json"))}
    err = _rank_failed(ChildFailedError("trainer.launch", killed), tmp_path)
    assert err.message == "rank 1 ended with signal 9 (SIGKILL)"
