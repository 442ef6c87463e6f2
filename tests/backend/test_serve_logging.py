"""Quiet startup of ``motionlab serve``: one line (where it listens, database, broker, storage); alembic's and the
other libraries' INFO lines only with ``--verbose``."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from backend import server
from backend.core.config import Settings


@pytest.fixture
def restore_logging():
    """``configure_logging`` changes process-wide state: put the root handlers and the levels back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in server.CHATTY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def _migrate(tmp_path, name: str) -> None:
    from backend.db.migrate import upgrade_to_head
    from backend.db.session import dispose_engines

    upgrade_to_head(Settings(storage_root=tmp_path / name))
    dispose_engines()


def test_migrations_are_quiet_unless_verbose(tmp_path, capsys, restore_logging):
    server.configure_logging(logging.WARNING)
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO) is False
    _migrate(tmp_path, "quiet")
    assert "alembic" not in capsys.readouterr().err

    server.configure_logging(logging.INFO)  # --verbose
    _migrate(tmp_path, "verbose")
    err = capsys.readouterr().err
    assert "INFO alembic.runtime.migration" in err
    assert sum(h.__dict__.get("_motionlab", False) for h in logging.getLogger().handlers) == 1  # not added twice


def test_an_info_logger_does_not_reach_the_console_when_quiet(capsys, restore_logging):
    server.configure_logging(logging.WARNING)
    trainer = logging.getLogger("trainer.quiet-test")
    trainer.setLevel(logging.INFO)  # as a training task sets the trainer's logger, for the run's own log
    trainer.info("step 1")
    trainer.warning("loss is nan")
    err = capsys.readouterr().err
    assert "step 1" not in err and "loss is nan" in err


def test_the_startup_line_names_address_database_broker_and_storage(tmp_path):
    s = Settings(
        storage_root=tmp_path,
        database_url="postgresql://ml:secret@db:5432/ml",
        broker_url="redis://:hunter2@cache:6379/0",
    )
    line = server.startup_line(s, "0.0.0.0", 8123)
    assert "\n" not in line
    assert "http://0.0.0.0:8123" in line and str(tmp_path) in line
    assert "postgresql://ml:***@db:5432/ml" in line and "redis://:***@cache:6379/0" in line
    assert "secret" not in line and "hunter2" not in line
    embedded = server.startup_line(Settings(storage_root=tmp_path), "127.0.0.1", 8000)
    assert f"sqlite:///{tmp_path}/motionlab.db" in embedded and "broker.sqlite" in embedded


@pytest.mark.parametrize("verbose", [False, True])
def test_local_workers_are_started_quiet_unless_verbose(tmp_path, monkeypatch, verbose):
    cmds = []

    class FakePopen:
        pid = 1

        def __init__(self, cmd, **_kw):
            cmds.append(cmd)

    monkeypatch.setattr(server.subprocess, "Popen", FakePopen)
    server.LocalWorkers(Settings(storage_root=tmp_path), verbose=verbose)._spawn(0)
    assert ("--quiet" in cmds[0]) is not verbose
    assert ("WARNING" in cmds[0]) is not verbose


def test_serve_passes_verbose(monkeypatch):
    from backend.cli import app

    seen = []
    monkeypatch.setattr(server, "run_serve", lambda host, port, with_worker, verbose: seen.append(verbose))
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert CliRunner().invoke(app, ["serve", "--verbose"]).exit_code == 0
    assert seen == [False, True]
