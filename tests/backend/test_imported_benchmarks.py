"""The shipped checkpoints' Table 1 (``checkpoints/README.md``) imported as a benchmark: through the real API on a
fresh embedded stack, marked ``imported``, the file's numbers, once however often the server starts.

    python -m pytest tests/backend/test_imported_benchmarks.py -q
"""

from __future__ import annotations

import importlib.util
import itertools
import re

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.core.config import Settings
from backend.db.migrate import upgrade_to_head
from backend.imported_results import SHIPPED_NAME, import_shipped_table1
from evaluator.benchmark.suites import load_suite
from tests.backend.conftest import make_keys
from tests.conftest import REPO

ZOO = REPO / "checkpoints"
SHIPPED = ("tiny-teacher", "tiny-dmd", "tiny-mogan", "tiny-vdot", "tiny-dfdpo")


def readme_rows() -> dict[str, list[str]]:
    """The README's Table 1 read plainly: row label -> cells, for the test to compare against."""
    text = (ZOO / "README.md").read_text()
    section = text[text.index("Table 1") :].splitlines()
    start = next(i for i, ln in enumerate(section) if ln.startswith("|"))
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), section[start:]))  # the first table only
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


@pytest.fixture
def fresh(tmp_path):
    """A fresh embedded stack (SQLite, storage root) with its API and an admin and a train key."""
    settings = Settings(storage_root=tmp_path / "storage")
    app = create_app(settings)
    keys = make_keys(settings)
    with TestClient(app) as client:
        yield settings, client, keys


def _get(client, path: str, key: str, **params):
    r = client.get(path, params=params, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_import_is_marked_imported_holds_the_files_numbers_and_happens_once(fresh):
    settings, client, keys = fresh
    assert _get(client, "/v1/benchmarks", keys["read"])["total"] == 0
    bench_id = import_shipped_table1(settings, zoo=ZOO)
    assert re.fullmatch(r"bench_[0-9a-f]{16}", bench_id or "")
    # restarts: the same settings again, and a new Settings object on the same storage root (a new process)
    assert import_shipped_table1(settings, zoo=ZOO) is None
    assert import_shipped_table1(Settings(storage_root=settings.storage_root), zoo=ZOO) is None
    listed = _get(client, "/v1/benchmarks", keys["read"])
    assert listed["total"] == 1
    b = listed["items"][0]
    assert (b["id"], b["name"], b["source"], b["status"], b["progress"]) == (
        bench_id,
        SHIPPED_NAME,
        "imported",
        "succeeded",
        1.0,
    )
    assert b["config"]["source_file"] == "checkpoints/README.md" and "Table 1" in b["config"]["section"]
    assert b["config"]["checkpoints"] == list(SHIPPED)

    rep = _get(client, f"/v1/benchmarks/{bench_id}/report", keys["read"])
    assert rep["scores"] == [] and rep["benchmark"]["source"] == "imported"
    rows = {r["label"]: r for r in rep["report"]["table"]["rows"]}
    expected = readme_rows()
    assert list(rows) == [re.sub(r"`", "", k) for k in expected]
    for label, cells in expected.items():
        row = rows[re.sub(r"`", "", label)]
        shown = [
            row["cells"][m]["display"]
            for m in (
                "motion_smoothness",
                "dynamic_degree",
                "motion_score",
                "visual_swd",
                "conformance/motion_ok",
                "conformance/colour_ok",
                "dynamic_degree_gap",
                "motion_swd",
            )
        ]
        assert shown == [c if c != "–" else "n/a" for c in cells], label
    assert {r["checkpoint"]: r["label"] for r in rows.values() if r["checkpoint"]} == {
        "tiny-teacher": "teacher, 50 steps + CFG",
        "tiny-dmd": "DMD, 3 steps",
        "tiny-mogan": "MoGAN, 3 steps",
        "tiny-vdot": "VDOT, 3 steps",
        "tiny-dfdpo": "DF-DPO (hybrid), 50 steps + CFG",
    }
    dmd = rows["DMD, 3 steps"]["cells"]["motion_swd"]
    mean, std = (float(x) for x in expected["DMD, 3 steps"][-1].split("±"))  # the README's "mean ± std" cell
    assert (dmd["mean"], dmd["std"], dmd["backend"]) == (mean, std, "lite")

    # cancelling it changes nothing; it stays a finished import
    r = client.post(f"/v1/benchmarks/{bench_id}/cancel", headers={"Authorization": f"Bearer {keys['train']}"})
    assert r.status_code == 202 and r.json()["status"] == "succeeded"


def test_a_measured_benchmark_is_never_marked_imported(fresh):
    settings, client, keys = fresh
    import_shipped_table1(settings, zoo=ZOO)
    h = {"Authorization": f"Bearer {keys['train']}"}
    body = {"checkpoints": ["tiny-dmd"], "suite": "tiny", "seeds": [0], "options": {"suite_size": 1}}
    # a client cannot claim its benchmark is an import
    forged = client.post("/v1/benchmarks", json={**body, "source": "imported"}, headers=h)
    assert forged.status_code == 422 and "source" in forged.text
    forged = client.post("/v1/benchmarks", json={**body, "options": {"source": "imported"}}, headers=h)
    assert forged.status_code == 422 and "options.source" in forged.text
    r = client.post("/v1/benchmarks", json=body, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "measured" and r.json()["status"] == "queued"
    by_source = {b["source"]: b["id"] for b in _get(client, "/v1/benchmarks", keys["read"])["items"]}
    assert set(by_source) == {"imported", "measured"} and by_source["measured"] == r.json()["id"]


def test_the_same_table_gets_the_same_id_on_every_server(tmp_path):
    ids = []
    for name in ("a", "b"):
        settings = Settings(storage_root=tmp_path / name)
        upgrade_to_head(settings)
        ids.append(import_shipped_table1(settings, zoo=ZOO))
    assert ids[0] and ids[0] == ids[1]


def test_no_readme_no_import(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    assert import_shipped_table1(Settings(storage_root=tmp_path / "s"), zoo=zoo) is None


def test_options_list_the_cli_suites_and_the_form_limits(fresh):
    _settings, client, keys = fresh
    opts = _get(client, "/v1/benchmarks/options", keys["read"])
    names = [s["name"] for s in opts["suites"]]
    assert names[:3] == ["tiny", "conformance", "motion"]
    if importlib.util.find_spec("vbench") is not None:  # VBench's prompt lists, from the installed package
        assert "vbench-motion" in names and "vbench:dynamic_degree" in names
        assert {s["name"]: s["prompts"] for s in opts["suites"]}["vbench:dynamic_degree"] == len(
            load_suite("vbench:dynamic_degree")
        )
        auth = {"Authorization": f"Bearer {keys['train']}"}
        body = {"checkpoints": ["tiny-dmd"], "options": {"suite_size": 1}}
        r = client.post("/v1/benchmarks", json={**body, "suite": "vbench:dynamic_degree"}, headers=auth)
        assert r.status_code == 201 and r.json()["config"]["suite"] == "vbench:dynamic_degree", r.text
        client.post(f"/v1/benchmarks/{r.json()['id']}/cancel", headers=auth)
        r = client.post("/v1/benchmarks", json={**body, "suite": "vbench:speed"}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["field"] == "suite", r.text
    assert all(s["prompts"] >= 1 and s["description"] for s in opts["suites"])
    assert {s["name"]: s["metrics"] for s in opts["suites"]}["conformance"] == ["conformance"]
    backends = {b["name"]: b for b in opts["backends"]}
    assert backends["lite"]["available"] and (backends["vbench"]["available"] or backends["vbench"]["reason"])
    assert "dynamic_degree" in backends["lite"]["metrics"] and "aesthetic_quality" not in backends["lite"]["metrics"]
    assert "aesthetic_quality" in backends["vbench"]["metrics"]
    assert opts["max_seeds"] == 16 and opts["max_checkpoints"] >= 1
