"""Simulated annotators answering concurrently for a bounded time (bench/study_load.py), checked in the database: every
accepted answer stored exactly once, no item over k annotations, no annotator with an item twice, every misbehaving
request (unwatched, duplicate, someone else's item) refused with its code, no 5xx.

    python -m pytest tests/backend/test_study_load.py -q -s        (-s shows the latency table)
    python -m pytest tests/backend/test_study_load.py -q -m slow   (the full load, SQLite and PostgreSQL)
"""

from __future__ import annotations

import pytest

from tests.conftest import load_bench


def _check(summary: dict, k: int, annotators: int = 200) -> None:
    assert summary["problems"] == [], summary["problems"]
    assert summary["server_errors"] == 0, summary["server_error_samples"]
    db = summary["db"]
    assert summary["accepted"] > 0 and db["done"] == summary["accepted"]
    assert db["responses"] == 3 * summary["accepted"]  # three questions per answer, each stored once
    assert db["max_per_item"] <= k
    kinds = summary["kinds"]
    assert kinds["next"]["n"] >= annotators  # every annotator got in
    # the misbehaviour happened and was refused (the codes are checked in summary["problems"])
    assert kinds["answer_unwatched"]["n"] > 0 and set(kinds["answer_unwatched"]["status"]) == {422}
    assert kinds["answer"]["status"].get(409, 0) > 0  # double submits: the second one refused


def test_60_annotators_at_once_on_sqlite(capsys):
    """The quick run (about 20 s here): same checks, fewer annotators."""
    summary = load_bench("study_load").main(["--annotators", "60", "--duration", "4", "--k", "3", "--seed", "1"])
    with capsys.disabled():
        print("\n[sqlite, 60] " + capsys.readouterr().out)
    _check(summary, 3, 60)


@pytest.mark.slow
def test_200_annotators_at_once_on_sqlite(capsys):
    summary = load_bench("study_load").main(["--annotators", "200", "--duration", "8", "--k", "3"])
    with capsys.disabled():
        print("\n[sqlite] " + capsys.readouterr().out)
    _check(summary, 3)


@pytest.mark.slow
def test_200_annotators_at_once_on_postgres(pg_database, capsys):
    summary = load_bench("study_load").main(
        ["--annotators", "200", "--duration", "10", "--k", "3", "--database-url", pg_database]
    )
    with capsys.disabled():
        print("\n[postgres] " + capsys.readouterr().out)
    _check(summary, 3)
