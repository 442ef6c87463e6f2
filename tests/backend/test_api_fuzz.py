"""A property-based fuzz of the whole API (schemathesis): every /v1 operation and the annotator API, on the live app
with the embedded defaults (SQLite, the serverless broker, no worker), with an admin key. Bounded: at most
``MAX_EXAMPLES`` generated requests per operation and mode (valid and schema-breaking; ``QUICK_EXAMPLES`` in the
default suite, ``MAX_EXAMPLES`` in the slow one) and ``BUDGET_S`` seconds in all. Asserts no 5xx and no response
that violates the OpenAPI document (``not_a_server_error``, ``response_schema_conformance``); prints the counts.

    python -m pytest tests/backend/test_api_fuzz.py -q -s
"""

from __future__ import annotations

import copy
import time
from collections import Counter

import pytest
from fastapi.openapi.utils import get_openapi
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import openapi
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import select

from backend.api.main import create_app
from backend.api.routes.studies import annotator_router
from backend.core.config import Settings
from backend.crud.runs import create_run
from backend.db.models import Video
from backend.db.session import dispose_engines, session_scope
from backend.security import create_api_key
from tests.backend.backend_helpers import auth
from tests.conftest import load_bench

MAX_EXAMPLES = 25  # per operation and generation mode (valid requests, and requests that break the schema)
QUICK_EXAMPLES = 10
BUDGET_S = 100.0
CHECKS = [not_a_server_error, response_schema_conformance]


def _annotator_paths(app) -> dict:
    """The annotator API (kept out of the published document) described like the rest, to fuzz it too."""
    routes = []
    for route in annotator_router.routes:
        r = copy.copy(route)
        r.include_in_schema = True
        routes.append(r)
    doc = get_openapi(title="annotator", version="1", routes=routes)
    paths = doc["paths"]
    for ops in paths.values():
        for op in ops.values():
            op.get("responses", {}).pop("422", None)  # FastAPI's shape; errors are ErrorBody, as everywhere
    return {"paths": paths, "schemas": doc.get("components", {}).get("schemas", {})}


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, bench_maker):
    root = tmp_path_factory.mktemp("fuzz") / "storage"
    s = Settings(storage_root=root)  # the embedded defaults
    app = create_app(s)
    with session_scope(s) as db:
        _row, admin = create_api_key(db, "fuzz-admin", ["admin"])
        spare, _ = create_api_key(db, "fuzz-spare", ["read"])  # a key the fuzz may revoke
        run, _ = create_run(
            db,
            method="sft",
            config={},
            preset="tiny",
            name="fuzz",
            resolved_config=None,
            total_steps=None,
            api_key_id=None,
        )
        ids = {"run_id": run.id, "key_id": spare.id}
    ids["benchmark_id"] = bench_maker(s)
    with TestClient(app) as c:
        r = c.post(
            "/v1/studies", json={"name": "fuzz", "benchmark_id": ids["benchmark_id"], "open": True}, headers=auth(admin)
        )
        assert r.status_code == 201, r.text
        ids["study_id"] = r.json()["id"]
        r = c.post(f"/v1/studies/{ids['study_id']}/annotators", json={"count": 1}, headers=auth(admin))
        token = r.json()["items"][0]["token"]
        ids["annotator_id"] = r.json()["items"][0]["id"]
        ids["assignment_id"] = c.post(f"/a/{token}/api/next").json()["item"]["assignment_id"]
    with session_scope(s, write=False) as db:
        ids["video_id"] = db.scalars(select(Video.id)).first()
    extra = _annotator_paths(app)
    doc = copy.deepcopy(app.openapi())
    doc["paths"].update(extra["paths"])
    for name, schema in extra["schemas"].items():
        doc["components"]["schemas"].setdefault(name, schema)
    app.openapi_schema = doc  # what /openapi.json serves to schemathesis
    yield app, admin, token, ids
    dispose_engines()


@pytest.fixture(scope="module")
def bench_maker():
    return load_bench("study_load").make_benchmark


class Fuzz:
    """Sends generated requests with the admin key and collects what the checks say."""

    def __init__(self, admin: str, token: str, ids: dict[str, str], max_examples: int = MAX_EXAMPLES):
        self.admin, self.token, self.ids, self.max_examples = admin, token, ids, max_examples
        self.statuses: Counter = Counter()
        self.failures: list[str] = []
        self.examples = 0
        self.start = time.monotonic()

    def over_budget(self) -> bool:
        return time.monotonic() - self.start > BUDGET_S

    def operation(self, op, mode: GenerationMode) -> None:
        """Up to ``max_examples`` requests of one operation in one generation mode."""
        n = 0

        @given(case=op.as_strategy(mode))
        @settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            nonlocal n
            if self.over_budget():
                return
            n += 1
            if case.path_parameters:
                if "token" in case.path_parameters:
                    case.path_parameters["token"] = self.token  # past the link check, into the annotator code
                for name in case.path_parameters:  # every other example: a real id, past the lookup
                    if n % 2 and name in self.ids:
                        case.path_parameters[name] = self.ids[name]
            response = case.call(headers=auth(self.admin))
            self.examples += 1
            self.statuses[response.status_code // 100] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collected, reported together below
                self.failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {str(exc)[:300]}")

        try:
            run()
        except Unsatisfiable:  # nothing to break: the operation takes no input but the key
            assert mode is GenerationMode.NEGATIVE, (op.method, op.path)


@pytest.mark.parametrize(
    "max_examples", [QUICK_EXAMPLES, pytest.param(MAX_EXAMPLES, marks=pytest.mark.slow)], ids=["quick", "thorough"]
)
def test_fuzz_every_v1_operation_and_the_annotator_api(fuzz_app, max_examples):
    app, admin, token, ids = fuzz_app
    schema = openapi.from_asgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in ops}
    assert {p for p in app.openapi()["paths"] if p.startswith("/v1/")} <= paths
    assert {"/a/{token}/api/next", "/a/{token}/api/assignments/{assignment_id}/answer"} <= paths
    fuzz = Fuzz(admin, token, ids, max_examples)
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if not fuzz.over_budget():
                fuzz.operation(op, mode)
    took = time.monotonic() - fuzz.start
    fuzzed = len({(op.method, op.path) for op in ops})
    print(
        f"\n[fuzz] {fuzzed} operations, {fuzz.examples} examples in {took:.0f} s; status classes "
        f"{dict(sorted(fuzz.statuses.items()))}; 5xx seen: {fuzz.statuses[5]}; failures: {len(fuzz.failures)}"
    )
    assert not fuzz.over_budget(), "the time budget ran out before every operation was fuzzed"
    assert fuzz.statuses[5] == 0 and not fuzz.failures, "\n".join(fuzz.failures[:20])
