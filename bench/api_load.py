"""A bounded load test of the MotionLab API on loopback: N concurrent requests of mixed kinds.

    python bench/api_load.py                                  # self-hosted: embedded SQLite + SQLite broker
    python bench/api_load.py --database-url postgresql://postgres@127.0.0.1/test --broker-url redis://127.0.0.1:6379/0
    python bench/api_load.py --url http://127.0.0.1:8000 --key ml_...   # a running server (loopback only)

Self-hosted, it starts ``uvicorn`` on a free loopback port with a temporary storage root (and no worker, so
every accepted job stays on the broker where it can be counted), creates a key, registers a tiny checkpoint,
fires the requests all at once (at most ``--concurrency`` in flight), then checks that nothing was lost: every
run/generation/benchmark the API accepted can be read back, and (self-hosted) the broker holds exactly one
message per accepted job. Prints p50/p99 latency overall and per kind, and status counts. Exit status 1 on any
5xx, transport error or lost item.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.load_helpers import free_port, percentile, stop_server, uvicorn_command, wait_until_up

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS, MAX_CONCURRENCY = 2000, 500
TINY_RUN = {"method": "sft", "config": {"steps": 3}}


@dataclass
class Result:
    kind: str
    status: int  # HTTP status; 0 when the request never got an answer
    seconds: float
    created: tuple[str, str] | None = None  # (collection, id) of an accepted creation
    error: str | None = None


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def server_errors(self) -> list[Result]:
        return [r for r in self.results if r.status >= 500 or r.status == 0]

    def summary(self) -> dict:
        lat = [r.seconds for r in self.results]
        kinds: dict[str, dict] = {}
        for r in self.results:
            k = kinds.setdefault(r.kind, {"n": 0, "lat": [], "status": {}})
            k["n"] += 1
            k["lat"].append(r.seconds)
            k["status"][r.status] = k["status"].get(r.status, 0) + 1
        status: dict[int, int] = {}
        for r in self.results:
            status[r.status] = status.get(r.status, 0) + 1
        return {
            "requests": len(self.results),
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(1000 * percentile(lat, 50), 1),
            "p99_ms": round(1000 * percentile(lat, 99), 1),
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
            "status": dict(sorted(status.items())),
            "server_errors": len(self.server_errors),
            "lost": len(self.lost),
            "kinds": {
                k: {
                    "n": v["n"],
                    "p50_ms": round(1000 * percentile(v["lat"], 50), 1),
                    "p99_ms": round(1000 * percentile(v["lat"], 99), 1),
                    "status": v["status"],
                }
                for k, v in sorted(kinds.items())
            },
        }


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"--url: this load script only talks to loopback ({sorted(LOOPBACK)}); got host {host!r}")


def request_plan(n: int, run_id: str, checkpoint: str | None) -> list[tuple[str, str, str, dict | None]]:
    """(kind, method, path, json body) x n, cycling through read, write and rejected-on-purpose requests."""
    kinds: list[tuple[str, str, str, dict | None]] = [
        ("healthz", "GET", "/healthz", None),
        ("list_runs", "GET", "/v1/runs?limit=20", None),
        ("create_run", "POST", "/v1/runs", TINY_RUN),
        ("get_run", "GET", f"/v1/runs/{run_id}", None),
        ("run_logs", "GET", f"/v1/runs/{run_id}/logs", None),
        ("list_checkpoints", "GET", "/v1/checkpoints", None),
        (
            "bad_frames",
            "POST",
            "/v1/generations",
            {"checkpoint": checkpoint or "x", "prompt": "x", "num_frames": -1, "mode": "job"},
        ),
        ("bad_config", "POST", "/v1/runs", {"method": "sft", "config": {"steps": -1}}),
        ("list_generations", "GET", "/v1/generations?limit=20", None),
    ]
    if checkpoint:
        kinds += [
            (
                "create_generation",
                "POST",
                "/v1/generations",
                {"checkpoint": checkpoint, "prompt": "a ball bounces", "num_frames": 5, "mode": "job"},
            ),
            ("create_benchmark", "POST", "/v1/benchmarks", {"checkpoints": [checkpoint], "prompts": ["a ball"]}),
        ]
    return [kinds[i % len(kinds)] for i in range(n)]


COLLECTION = {"create_run": "runs", "create_generation": "generations", "create_benchmark": "benchmarks"}


async def fire(base: str, key: str, plan, concurrency: int, timeout: float) -> Report:
    report = Report()
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=timeout
    ) as client:

        async def one(i: int, kind: str, method: str, path: str, body: dict | None) -> Result:
            if kind == "create_run":
                body = {**body, "idempotency_key": f"load-{i}-{secrets.token_hex(4)}"}
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    return Result(kind, 0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
                dt = time.perf_counter() - t0
            created = None
            if kind in COLLECTION and r.status_code in (200, 201, 202):
                created = (COLLECTION[kind], r.json()["id"])
            err = None if r.status_code < 500 else r.text[:300]
            return Result(kind, r.status_code, dt, created, err)

        t0 = time.perf_counter()
        report.results = await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan)))
        report.wall_s = time.perf_counter() - t0
        # nothing lost: every accepted creation reads back with its id
        for r in report.results:
            if r.created:
                coll, rid = r.created
                g = await client.get(f"/v1/{coll}/{rid}")
                if g.status_code != 200 or g.json().get("id") != rid:
                    report.lost.append(f"{coll}/{rid}: {g.status_code}")
    return report


class SelfHosted:
    """uvicorn on loopback with its own storage root; no worker (accepted jobs stay countable on the broker)."""

    def __init__(self, database_url: str | None, broker_url: str | None, queue_prefix: str | None):
        self.tmp = tempfile.TemporaryDirectory(prefix="motionlab-load-")
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MOTIONLAB_STORAGE_ROOT": str(Path(self.tmp.name) / "s"),
            # the point is throughput and loss, not the per-key limits on queued work (tested elsewhere): with no
            # worker every accepted generation and benchmark stays queued
            "MOTIONLAB_LIMIT_MAX_CONCURRENT_GENERATIONS_PER_KEY": "100000",
            "MOTIONLAB_LIMIT_MAX_ACTIVE_BENCHMARKS_PER_KEY": "100000",
        }
        if database_url:
            self.env["MOTIONLAB_DATABASE_URL"] = database_url
        if broker_url:
            self.env["MOTIONLAB_BROKER_URL"] = broker_url
            if broker_url.startswith("redis"):
                prefix = queue_prefix or f"motionlab-load-{secrets.token_hex(4)}:"
                self.env["MOTIONLAB_BROKER_TRANSPORT_OPTIONS"] = json.dumps({"global_keyprefix": prefix})
        self.env["MOTIONLAB_QUEUE_PREFIX"] = queue_prefix or f"load{secrets.token_hex(3)}."
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def _settings(self):
        from backend.core.config import Settings

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def start(self) -> tuple[str, str, str, str]:
        """Start the server; returns (url, admin key, checkpoint name, a run id)."""
        from backend.db.migrate import upgrade_to_head
        from backend.db.session import session_scope
        from backend.security import create_api_key

        settings = self._settings()
        upgrade_to_head(settings)
        with session_scope(settings) as db:
            _row, key = create_api_key(db, "load", ["admin"], pepper=settings.api_key_pepper)
        self.proc = subprocess.Popen(uvicorn_command(self.port), cwd=REPO, env=self.env)
        wait_until_up(self.url, self.proc, "/readyz")
        from trainer.models.generator import Generator

        pipe = Path(self.tmp.name) / "tiny-pipeline"
        Generator.build_tiny(seed=0).save_pretrained(pipe)
        h = {"Authorization": f"Bearer {key}"}
        # generous timeouts: the first run request imports the trainer (torch) into the server process
        r = httpx.post(
            self.url + "/v1/checkpoints", json={"name": "load-tiny", "path": str(pipe)}, headers=h, timeout=120
        )
        r.raise_for_status()
        run = httpx.post(self.url + "/v1/runs", json=TINY_RUN, headers=h, timeout=120)
        run.raise_for_status()
        return self.url, key, "load-tiny", run.json()["id"]

    def queue_depths(self) -> dict[str, int]:
        from backend.worker.celery_app import make_celery

        settings = self._settings()
        with make_celery(settings).connection_for_write() as conn:
            return {
                q: conn.default_channel.queue_declare(queue=settings.queue_prefix + q).message_count
                for q in ("train", "eval", "infer")
            }

    def stop(self) -> None:
        stop_server(self.proc)
        if self.env.get("MOTIONLAB_BROKER_URL", "").startswith("redis"):
            try:
                import redis

                prefix = json.loads(self.env["MOTIONLAB_BROKER_TRANSPORT_OPTIONS"])["global_keyprefix"]
                r = redis.Redis.from_url(self.env["MOTIONLAB_BROKER_URL"])
                for k in r.scan_iter(match=f"{prefix}*"):
                    r.delete(k)
            except Exception as exc:  # noqa: BLE001 - clean-up of a benchmark's scratch keys must not mask its result
                print(f"could not clear the scratch Redis keys: {exc}")
        self.tmp.cleanup()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at once (bounded)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    ap.add_argument("--url", help="a running server (loopback only); default: start one")
    ap.add_argument("--key", help="API key for --url (needs read, generate and train scopes)")
    ap.add_argument("--checkpoint", help="with --url: a checkpoint name to generate from (else no generations)")
    ap.add_argument("--run-id", help="with --url: an existing run id to read (else one is created)")
    ap.add_argument("--database-url", help="self-hosted: MOTIONLAB_DATABASE_URL (default: SQLite)")
    ap.add_argument("--broker-url", help="self-hosted: MOTIONLAB_BROKER_URL (default: the embedded broker)")
    ap.add_argument("--queue-prefix", help="self-hosted: MOTIONLAB_QUEUE_PREFIX (default: random)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise SystemExit(f"--requests: must be between 1 and {MAX_REQUESTS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise SystemExit(f"--concurrency: must be between 1 and {MAX_CONCURRENCY}")

    server = None
    try:
        if args.url:
            _check_loopback(args.url)
            if not args.key:
                raise SystemExit("--key: required with --url")
            base, key, checkpoint, run_id = args.url.rstrip("/"), args.key, args.checkpoint, args.run_id
            if not run_id:
                r = httpx.post(
                    base + "/v1/runs", json=TINY_RUN, headers={"Authorization": f"Bearer {key}"}, timeout=120
                )
                r.raise_for_status()
                run_id = r.json()["id"]
        else:
            server = SelfHosted(args.database_url, args.broker_url, args.queue_prefix)
            base, key, checkpoint, run_id = server.start()
            before = server.queue_depths()
        plan = request_plan(args.requests, run_id, checkpoint)
        report = asyncio.run(fire(base, key, plan, args.concurrency, args.timeout))
        summary = report.summary()
        if server is not None:  # one broker message per accepted job, none missing, none extra
            after = server.queue_depths()
            accepted = {"train": 0, "infer": 0, "eval": 0}
            for r in report.results:
                if r.created and r.status in (201, 202):
                    accepted[{"runs": "train", "generations": "infer", "benchmarks": "eval"}[r.created[0]]] += 1
            for q, n in accepted.items():
                if after[q] - before[q] != n:
                    report.lost.append(f"queue {q}: {after[q] - before[q]} new messages for {n} accepted jobs")
            summary["lost"] = len(report.lost)
            summary["queued"] = {q: after[q] - before[q] for q in after}
        summary["lost_items"] = report.lost[:20]
        summary["server_error_samples"] = [f"{r.kind} {r.status} {r.error}" for r in report.server_errors[:5]]
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['requests']} requests in {summary['wall_s']} s: p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms; status {summary['status']}; 5xx/transport errors "
            f"{summary['server_errors']}; lost {summary['lost']}"
        )
        for k, v in summary["kinds"].items():
            print(f"  {k:18s} n={v['n']:4d} p50={v['p50_ms']:8.1f} ms p99={v['p99_ms']:8.1f} ms {v['status']}")
        for line in summary["lost_items"] + summary["server_error_samples"]:
            print("  !", line)
    return summary


if __name__ == "__main__":
    s = main()
    sys.exit(1 if s["server_errors"] or s["lost"] else 0)
