"""A bounded load test of the human-study annotator API on loopback: N simulated annotators answer concurrently.

    python bench/study_load.py                                   # the defaults, embedded SQLite
    python bench/study_load.py --annotators 200 --duration 15 --database-url postgresql://postgres@127.0.0.1/test

It starts ``uvicorn`` on a free loopback port with a temporary storage root, writes a tiny benchmark (videos in
the runner's layout, ``out/videos/<model>/<hash>_s<seed>.mp4``, plus score rows), creates a pairwise study from it
(k annotations per item) and one invitation link per annotator. Every annotator then loops until the time is up or
nothing is left: next item -> playback events (play and ended on both sides) -> wait the videos' duration ->
answer (an item started before the time is up is finished). On purpose, some annotators also misbehave: answer
before any playback event, submit the same answer twice at once, answer another annotator's item, or abandon an
item. Bounded: no new item after ``--duration`` seconds, at most ``--max-requests`` requests, a 60 s timeout per
request.

Afterwards it checks the database directly: every accepted answer stored exactly once (one response per question,
and the accepted assignments are exactly the ``done`` ones), no item with more than k assignments, no annotator
with an item twice, every misbehaving request refused with its error code, no 5xx. Prints a summary (p50/p99 per
request kind); exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.load_helpers import LOOPBACK, free_port, percentile, stop_server, uvicorn_command, wait_until_up

MAX_ANNOTATORS, MAX_DURATION_S, MAX_REQUESTS = 500, 120.0, 50_000
MODELS = ("alpha", "beta", "gamma", "delta")
PROMPTS = (
    "a red square moves left",
    "a blue ball bounces",
    "a green triangle rotates clockwise",
    "the camera pans right over a textured wall",
    "a yellow circle moves up",
    "two squares move apart",
    "a purple star spins",
    "a white ball falls",
    "an orange square grows",
    "the camera pans left",
)


# --- fixtures shared with the tests (tests/backend/test_study_*.py) -----------------------------------------------


def make_benchmark(
    settings: Any,
    models: tuple[str, ...] = MODELS[:3],
    prompts: tuple[str, ...] = PROMPTS[:3],
    seeds: tuple[int, ...] = (0, 1),
    frames: int = 9,
    fps: float = 8.0,
    size: int = 32,
    seed: int = 0,
) -> str:
    """A finished benchmark as the worker leaves it: a row, score records and its videos under
    ``reports/<benchmark_id>/videos`` (moving squares, a different speed per model). Returns its id."""
    import numpy as np

    from backend.db.models import SUCCEEDED, Benchmark, Score
    from backend.db.session import session_scope
    from backend.storage import ArtifactStore
    from evaluator.study.design import benchmark_video_path
    from trainer.data.video_io import write_video

    store = ArtifactStore(settings.storage_root)
    rng = np.random.default_rng(seed)
    with session_scope(settings) as db:
        bench = Benchmark(
            name="study-fixture",
            config={"checkpoints": list(models), "prompts": list(prompts)},
            status=SUCCEEDED,
            progress=1.0,
        )
        db.add(bench)
        db.flush()
        out_dir = store.path("reports", bench.id)
        for mi, model in enumerate(models):
            for prompt in prompts:
                for s in seeds:
                    video = np.full((frames, size, size, 3), 30, dtype=np.uint8)
                    colour = rng.integers(80, 255, 3)
                    for t in range(frames):  # a square sliding right, faster for later models
                        x = (2 + t * (1 + mi)) % (size - 8)
                        video[t, 10:18, x : x + 8] = colour
                    write_video(benchmark_video_path(out_dir, model, prompt, s), video, fps=fps, quality="web")
                    db.add(
                        Score(
                            benchmark_id=bench.id,
                            checkpoint=model,
                            prompt=prompt,
                            seed=s,
                            metric="motion_score",
                            value=float(mi),
                            backend="lite",
                        )
                    )
        return bench.id


class StudyServer:
    """uvicorn on loopback with its own storage root (SQLite unless ``database_url``); an admin key."""

    def __init__(self, database_url: str | None = None, root: str | Path | None = None):
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="motionlab-study-")
        self.root = Path(root or self._tmp.name) / "storage"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MOTIONLAB_STORAGE_ROOT": str(self.root),
            "MOTIONLAB_QUEUE_PREFIX": f"study{os.getpid()}.",
        }
        if database_url:
            self.env["MOTIONLAB_DATABASE_URL"] = database_url
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.key = ""
        # open for the server's lifetime, closed in stop()
        self.log = open(Path(tempfile.gettempdir()) / f"motionlab-study-server-{self.port}.log", "wb")  # noqa: SIM115

    @property
    def settings(self) -> Any:
        from backend.core.config import Settings

        return Settings(storage_root=self.root, database_url=self.env.get("MOTIONLAB_DATABASE_URL"))

    def start(self) -> StudyServer:
        from backend.db.migrate import upgrade_to_head
        from backend.db.session import session_scope
        from backend.security import create_api_key

        settings = self.settings
        upgrade_to_head(settings)
        with session_scope(settings) as db:
            _row, self.key = create_api_key(db, "study-load", ["admin"], pepper=settings.api_key_pepper)
        self.proc = subprocess.Popen(
            uvicorn_command(
                self.port,
                "--limit-concurrency",
                "1000",
                # idle keep-alive connections live longer on the server than in the client's pool, so the client never
                # sends a request on a connection the server is closing at that moment
                "--backlog",
                "2048",
                "--timeout-keep-alive",
                "30",
            ),
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until_up(self.url, self.proc, "/healthz", self.log.name)
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def create_study(self, benchmark_id: str, config: dict[str, Any], name: str = "load study") -> dict[str, Any]:
        r = httpx.post(
            self.url + "/v1/studies",
            json={"name": name, "benchmark_id": benchmark_id, "config": config, "open": True},
            headers=self.headers,
            timeout=300,
        )
        r.raise_for_status()
        return r.json()

    def invite(self, study_id: str, count: int) -> list[dict[str, Any]]:
        r = httpx.post(
            self.url + f"/v1/studies/{study_id}/annotators", json={"count": count}, headers=self.headers, timeout=60
        )
        r.raise_for_status()
        return r.json()["items"]

    def stop(self) -> None:
        stop_server(self.proc)
        self.log.close()
        from backend.db.session import dispose_engines

        dispose_engines()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the simulated annotators ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    status: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    codes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    accepted: list[str] = field(default_factory=list)  # assignment ids answered with 201
    server_errors: list[str] = field(default_factory=list)
    requests: int = 0
    finished: int = 0


class Budget(Exception):
    pass


async def _request(
    client: httpx.AsyncClient, stats: Stats, kind: str, method: str, path: str, max_requests: int, body: Any = None
) -> httpx.Response:
    if stats.requests >= max_requests:
        raise Budget()
    stats.requests += 1
    t0 = time.perf_counter()
    try:
        r = await client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        stats.status[kind][0] += 1
        stats.server_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        raise
    stats.latency[kind].append(time.perf_counter() - t0)
    stats.status[kind][r.status_code] += 1
    if r.status_code >= 500:
        stats.server_errors.append(f"{kind} {r.status_code}: {r.text[:200]}")
    if r.status_code >= 400:
        try:
            stats.codes[kind][r.json()["error"]["code"]] += 1
        except (ValueError, KeyError, TypeError):
            stats.codes[kind]["?"] += 1
    return r


async def annotator(
    i: int,
    token: str,
    client: httpx.AsyncClient,
    stats: Stats,
    deadline: float,
    max_requests: int,
    others: list[str],
    rng: random.Random,
) -> None:
    base = f"/a/{token}/api"
    mine: set[str] = set()
    await asyncio.sleep(rng.random() * 0.5)  # arrive over half a second, as people would
    while time.monotonic() < deadline:
        r = await _request(client, stats, "next", "POST", base + "/next", max_requests)
        if r.status_code != 200:
            await asyncio.sleep(0.2)
            continue
        state = r.json()
        item = state["item"]
        if item is None:
            stats.finished += 1
            return
        aid = item["assignment_id"]
        questions = [q["id"] for q in state["study"]["questions"]]
        answers = {q: rng.choice(("left", "tie", "right")) for q in questions}
        others.append(aid)
        mine.add(aid)
        if rng.random() < 0.15:  # too early: no playback events yet -> 422 playback_incomplete
            await _request(
                client,
                stats,
                "answer_unwatched",
                "POST",
                f"{base}/assignments/{aid}/answer",
                max_requests,
                {"answers": answers},
            )
        if rng.random() < 0.1 and len(others) > 1:  # someone else's item -> 404 not_assigned
            foreign = rng.choice([a for a in others[-50:] if a not in mine] or [aid])
            if foreign not in mine:
                await _request(
                    client,
                    stats,
                    "answer_foreign",
                    "POST",
                    f"{base}/assignments/{foreign}/answer",
                    max_requests,
                    {"answers": answers},
                )
        events = [
            {"event": e, "side": s, "t": (item["durations"][s] if e == "ended" else 0.0)}
            for s in item["sides"]
            for e in ("play", "ended")
        ]
        r = await _request(
            client, stats, "events", "POST", f"{base}/assignments/{aid}/events", max_requests, {"events": events}
        )
        for s in item["sides"]:  # the page's video elements load both clips (the server checks it sent them whole)
            await _request(client, stats, "video", "GET", f"{base}/assignments/{aid}/video/{s}", max_requests)
        await asyncio.sleep(max(item["durations"].values()) + 0.05)  # the videos play
        if rng.random() < 0.03:
            return  # abandons the item, like someone closing the tab (it stays pending until released)
        body = {"answers": answers, "duration_ms": 1000}
        twice = rng.random() < 0.15  # a double submit: exactly one may win
        sends = [
            _request(client, stats, "answer", "POST", f"{base}/assignments/{aid}/answer", max_requests, body)
            for _ in range(2 if twice else 1)
        ]
        for resp in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(resp, httpx.Response) and resp.status_code == 201:
                stats.accepted.append(aid)


async def run_annotators(
    url: str, tokens: list[str], duration_s: float, max_requests: int, seed: int = 0
) -> tuple[Stats, float]:
    stats = Stats()
    limits = httpx.Limits(
        max_connections=len(tokens) * 2, max_keepalive_connections=len(tokens) * 2, keepalive_expiry=10.0
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        deadline = time.monotonic() + duration_s
        others: list[str] = []
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(
                annotator(i, t, client, stats, deadline, max_requests, others, random.Random(seed * 100_003 + i))
                for i, t in enumerate(tokens)
            ),
            return_exceptions=True,
        )
        wall = time.perf_counter() - t0
    for res in results:
        if isinstance(res, BaseException) and not isinstance(res, Budget):
            stats.server_errors.append(f"annotator crashed: {type(res).__name__}: {res}")
    return stats, wall


# --- checks in the database -----------------------------------------------------------------------------------------


def check_database(settings: Any, study_id: str, k: int, n_questions: int, accepted: list[str]) -> dict[str, Any]:
    """Invariants read straight from the tables; every entry of ``problems`` is a broken one."""
    from sqlalchemy import func, select

    from backend.db.models import Assignment, Response, StudyItem
    from backend.db.session import session_scope

    problems: list[str] = []
    with session_scope(settings, write=False) as db:
        per_item = db.execute(
            select(Assignment.item_id, func.count())
            .join(StudyItem, StudyItem.id == Assignment.item_id)
            .where(
                Assignment.study_id == study_id,
                Assignment.status.in_(("pending", "done")),
                StudyItem.is_attention_check == False,
            )
            .group_by(Assignment.item_id)
        ).all()
        over = [(i, n) for i, n in per_item if n > k]
        if over:
            problems.append(f"{len(over)} items have more than k={k} assignments, e.g. {over[:3]}")
        dup_pairs = db.execute(
            select(Assignment.annotator_id, Assignment.item_id, func.count())
            .where(Assignment.study_id == study_id)
            .group_by(Assignment.annotator_id, Assignment.item_id)
            .having(func.count() > 1)
        ).all()
        if dup_pairs:
            problems.append(f"{len(dup_pairs)} (annotator, item) pairs assigned twice")
        per_asg = dict(
            db.execute(
                select(Response.assignment_id, func.count())
                .where(Response.study_id == study_id)
                .group_by(Response.assignment_id)
            ).all()
        )
        wrong = {a: n for a, n in per_asg.items() if n != n_questions}
        if wrong:
            problems.append(f"{len(wrong)} answers stored with a number of responses != {n_questions}")
        done = set(
            db.scalars(select(Assignment.id).where(Assignment.study_id == study_id, Assignment.status == "done"))
        )
        acc = Counter(accepted)
        twice = [a for a, n in acc.items() if n > 1]
        if twice:
            problems.append(f"{len(twice)} answers were accepted (201) more than once")
        if set(acc) != done:
            problems.append(
                f"accepted answers and done assignments differ: {len(set(acc) - done)} accepted but "
                f"not done, {len(done - set(acc))} done but never accepted"
            )
        if set(per_asg) != done:
            problems.append("responses exist for assignments that are not done (or the reverse)")
        n_responses = int(db.scalar(select(func.count()).where(Response.study_id == study_id)) or 0)
        items_max = max((n for _i, n in per_item), default=0)
    return {
        "problems": problems,
        "done": len(done),
        "responses": n_responses,
        "max_per_item": items_max,
        "items_touched": len(per_item),
    }


def summarize(stats: Stats, wall: float, db: dict[str, Any]) -> dict[str, Any]:
    kinds = {}
    for kind, lat in sorted(stats.latency.items()):
        kinds[kind] = {
            "n": len(lat),
            "p50_ms": round(1000 * percentile(lat, 50), 1),
            "p99_ms": round(1000 * percentile(lat, 99), 1),
            "status": dict(sorted(stats.status[kind].items())),
            "codes": dict(stats.codes[kind]),
        }
    all_lat = [x for lat in stats.latency.values() for x in lat]
    return {
        "requests": stats.requests,
        "wall_s": round(wall, 2),
        "accepted": len(stats.accepted),
        "annotators_finished": stats.finished,
        "p50_ms": round(1000 * percentile(all_lat, 50), 1),
        "p99_ms": round(1000 * percentile(all_lat, 99), 1),
        "mean_ms": round(1000 * statistics.fmean(all_lat), 1) if all_lat else None,
        "server_errors": len(stats.server_errors),
        "server_error_samples": stats.server_errors[:5],
        "kinds": kinds,
        "db": db,
    }


def misbehaviour_problems(summary: dict[str, Any]) -> list[str]:
    """Every misbehaving request must have been refused with the right code."""
    expect = {"answer_unwatched": ({422}, {"playback_incomplete"}), "answer_foreign": ({404}, {"not_assigned"})}
    out = []
    for kind, (statuses, codes) in expect.items():
        k = summary["kinds"].get(kind)
        if k and (set(k["status"]) - statuses or set(k["codes"]) - codes):
            out.append(f"{kind}: expected {sorted(statuses)} {sorted(codes)}, got {k['status']} {k['codes']}")
    ans = summary["kinds"].get("answer", {"status": {}, "codes": {}})
    if set(ans["status"]) - {201, 409}:
        out.append(f"answer: unexpected statuses {ans['status']} {ans['codes']}")
    if set(ans["codes"]) - {"duplicate_answer"}:
        out.append(f"answer: unexpected refusals {ans['codes']}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=200)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of annotation (bounded)")
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=3, help="annotations per item")
    ap.add_argument("--models", type=int, default=4, help="models compared (2-4)")
    ap.add_argument("--prompts", type=int, default=10, help="prompts (1-10), two seeds each")
    ap.add_argument("--database-url", help="MOTIONLAB_DATABASE_URL for the server (default: SQLite)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = ap.parse_args(argv)
    if not 1 <= args.annotators <= MAX_ANNOTATORS:
        raise SystemExit(f"--annotators: must be between 1 and {MAX_ANNOTATORS}")
    if not 1 <= args.duration <= MAX_DURATION_S:
        raise SystemExit(f"--duration: must be between 1 and {MAX_DURATION_S} s")
    if not 1 <= args.max_requests <= MAX_REQUESTS:
        raise SystemExit(f"--max-requests: must be between 1 and {MAX_REQUESTS}")
    if not 2 <= args.models <= len(MODELS) or not 1 <= args.prompts <= len(PROMPTS):
        raise SystemExit(f"--models: 2-{len(MODELS)}; --prompts: 1-{len(PROMPTS)}")

    with StudyServer(args.database_url) as server:
        bench = make_benchmark(server.settings, MODELS[: args.models], PROMPTS[: args.prompts], (0, 1), frames=4)
        study = server.create_study(bench, {"k": args.k, "seed": args.seed})
        invites = server.invite(study["id"], args.annotators)
        stats, wall = asyncio.run(
            run_annotators(server.url, [a["token"] for a in invites], args.duration, args.max_requests, args.seed)
        )
        n_questions = len(study["config"]["questions"])
        db = check_database(server.settings, study["id"], args.k, n_questions, stats.accepted)
        summary = summarize(stats, wall, db)
        summary["study"] = {
            "id": study["id"],
            "items": study["counts"]["items"],
            "k": args.k,
            "annotators": args.annotators,
        }
        summary["problems"] = (
            db["problems"]
            + misbehaviour_problems(summary)
            + ([f"{len(stats.server_errors)} server errors"] if stats.server_errors else [])
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{args.annotators} annotators, {summary['requests']} requests in {summary['wall_s']} s: "
            f"{summary['accepted']} answers accepted, {db['responses']} responses stored, max {db['max_per_item']} "
            f"assignments per item (k={args.k}); p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        )
        for kind, k in summary["kinds"].items():
            print(
                f"  {kind:18s} n={k['n']:5d} p50={k['p50_ms']:8.1f} ms p99={k['p99_ms']:8.1f} ms "
                f"status={k['status']} {k['codes'] or ''}"
            )
        for p in summary["problems"]:
            print("PROBLEM:", p)
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["problems"] else 0)
