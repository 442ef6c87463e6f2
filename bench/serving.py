"""Serving benchmark: teacher (50 steps + CFG) vs. few-step student, stage shares, batching throughput, peak memory.

    python bench/serving.py                          # CPU, tiny random-weight models built in a temp dir
    python bench/serving.py --device cuda --teacher wan2.1-t2v-1.3b --student <student dir> --bf16 --compile
    python bench/serving.py --device cuda --scale full --bf16   # Wan2.1-1.3B's shape, random weights (no download)
    python bench/serving.py --reps 5 --rounds 3 --window-ms 20 --max-batch 16
    python bench/serving.py --bf16-vae               # bfloat16 VAE (fast on CPUs with AMX / AVX-512 BF16)
    python bench/serving.py --http                   # also through the real API (uvicorn + one infer worker)
    python bench/serving.py --http --no-http-teacher # the student alone through the API (saves minutes at full scale)

Everything is measured in one run, in one process, on one machine, through ``trainer.serving.GenerationService``
(the code the inference worker uses), with mp4 encoding included in each request's end-to-end time:

1. end-to-end latency (median of ``--reps``) of the teacher and of the student, one request at a time; their ratio
   is printed next to the ratio of network evaluations (teacher 2 x 50 = 100 with CFG, student 3);
2. the share of each request's time spent in text encoding, denoising, VAE decoding, video encoding and the rest,
   and the student's time outside network evaluations and VAE decoding as a share of its latency (target < 10%);
3. throughput (videos/s) with 1, 4 and 16 concurrent clients (each sends ``--rounds`` requests back to back) with
   batching off (batches of one, one at a time, on the service's dispatcher thread like the batched runs) and on
   (window ``--window-ms``, at most ``--max-batch``), and the speed-up;
4. peak memory: process max RSS (``resource.getrusage``) and, on CUDA, ``torch.cuda.max_memory_allocated``.

Random weights are fine for timing: the work per step does not depend on the weights' values. Without
``--teacher``/``--student`` the pair is built with random weights: ``--scale tiny`` (the default) or ``--scale
full``, Wan2.1-T2V-1.3B's architecture (1.42B DiT, Wan-VAE, UMT5-XXL encoder) at its 81x480x832 shape. These
figures are in-process; time outside the process (HTTP, job queue, database) is not in them.

``--http`` then starts the real stack on loopback with a temporary storage root and the embedded defaults (SQLite,
SQLite broker) as ``motionlab serve`` runs it: ``uvicorn backend.api.main:create_app`` (sync generations run in the
API process, ``settings.sync_generation="api"``, through the same ``GenerationService``) plus the infer worker
(``python -m backend.worker --queues infer --pool threads``, for job-mode generations), registers both checkpoints,
and measures sync ``POST /v1/generations``: end-to-end latency of teacher and student, the student's share of time
outside network evaluations and VAE decoding (stage times read back from the video's stored sampler info), and
throughput with 1, 4 and 16 concurrent clients, with its ratio to sequential requests (1 / the median latency) and
the batch sizes the requests were served in. Before it, this process lets go of its models (the API loads its own).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

from bench.load_helpers import LOOPBACK, free_port, stop_server, uvicorn_command, wait_until_up
from trainer.sampling import SamplingOptions, resolve_sampling
from trainer.serving import STAGES, FastPaths, GenerationRequest, GenerationService
from trainer.zoo import clear_cache

PROMPTS = ["a video with good motion", "the video moves slowly", "a video moving quickly", "good motion of the video"]


def build_pair(root: Path, scale: str = "tiny", device: str = "cpu") -> tuple[str, str]:
    """A random-weight teacher (50 steps, CFG) and few-step student (3 steps) as pipeline directories.

    ``scale="full"`` is Wan2.1-T2V-1.3B's architecture (``Generator.build_full_random``), built on ``device``, with
    the text encoder saved in bfloat16 (18 GB on disk instead of 29). The student is the teacher's files (symbolic
    links) with its own sampling settings, so the weights are written once.
    """
    import json
    import shutil
    from dataclasses import asdict

    from trainer.models.generator import PIPELINE_PARTS, SAMPLING_FILE, Generator

    if scale == "full":
        gen = Generator.build_full_random(seed=0, device=device)
        gen.text_encoder.to(torch.bfloat16)  # UMT5-XXL in bf16: half its float32 memory; the DiT stays float32
    else:
        gen = Generator.build_tiny(seed=0)
    teacher, student = gen.save_pretrained(root / "teacher"), root / "student"
    student.mkdir()
    for part in (*PIPELINE_PARTS, "scheduler"):
        (student / part).symlink_to(teacher / part, target_is_directory=True)
    shutil.copy(teacher / "model_index.json", student / "model_index.json")
    (student / SAMPLING_FILE).write_text(json.dumps(asdict(gen.sampling.few_step()), indent=2))
    return str(teacher), str(student)


def latency(svc: GenerationService, ckpt: str, reps: int, shape: dict) -> tuple[float, dict[str, float], int]:
    """Median end-to-end seconds, mean stage seconds, and network evaluations per video."""
    runs = []
    for i in range(reps):
        r = svc.generate(GenerationRequest(ckpt, PROMPTS[i % len(PROMPTS)], seed=i, encode="web", **shape))
        runs.append(r)
    totals = [r.timings["total"] for r in runs]
    stages = {k: statistics.fmean(r.timings[k] for r in runs) for k in (*STAGES, "total")}
    return statistics.median(totals), stages, runs[0].info["network_evaluations"]


def throughput(
    svc: GenerationService, ckpt: str, clients: int, rounds: int, shape: dict
) -> tuple[float, list[tuple[int, float]]]:
    """Videos per second with ``clients`` threads each sending ``rounds`` requests back to back, and per request the
    size of the batch it ran in and that batch's compute seconds (text encoding, denoising, VAE decoding)."""
    barrier = threading.Barrier(clients + 1)
    done, errors = [], []

    def client(c: int):
        barrier.wait()
        for k in range(rounds):
            try:
                r = svc.generate(
                    GenerationRequest(ckpt, PROMPTS[(c + k) % len(PROMPTS)], seed=1000 * c + k, encode="web", **shape)
                )
                done.append(
                    (r.info["batch_size"], sum(r.timings[s] for s in ("text_encoding", "denoising", "vae_decoding")))
                )
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors or len(done) != clients * rounds:
        raise SystemExit(f"throughput run lost requests: {len(done)}/{clients * rounds} done, errors {errors[:3]}")
    return len(done) / wall, done


def peak_memory(device: torch.device) -> str:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    out = f"max RSS {rss_mb:.0f} MiB"
    if device.type == "cuda":
        out += f", CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    return out


def fmt_shares(stages: dict[str, float]) -> str:
    total = stages["total"]
    other = max(0.0, total - sum(stages[k] for k in STAGES))
    parts = [f"{k} {100 * stages[k] / total:5.1f}%" for k in STAGES] + [f"other {100 * other / total:5.1f}%"]
    return "  ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teacher", help="teacher checkpoint (zoo name or dir); default: tiny random weights")
    ap.add_argument("--student", help="few-step student checkpoint; default: tiny random weights")
    ap.add_argument(
        "--scale",
        choices=("tiny", "full"),
        default="tiny",
        help="size of the random-weight pair built when no checkpoints are given: full = "
        "Wan2.1-T2V-1.3B's architecture at its 81x480x832 shape (needs a GPU and ~18 GB of disk)",
    )
    ap.add_argument("--num-frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--reps", type=int, default=3, help="requests per latency figure (median)")
    # each concurrency level starts with a lone first batch and ends with a partial one: enough rounds keep those a
    # small part of the figure
    ap.add_argument("--rounds", type=int, default=4, help="requests per client in the throughput runs")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--window-ms", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 transformer + text encoder (on CPU: for its tolerance, not its speed)",
    )
    ap.add_argument(
        "--bf16-vae",
        action="store_true",
        help="bfloat16 VAE decoding (on CPU: fast where it has AMX or AVX-512 BF16 units)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer (on CPU: needs a C++ compiler; each new shape compiles first)",
    )
    ap.add_argument(
        "--channels-last-vae",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last VAE decoding (default: the device's, on for CPU)",
    )
    ap.add_argument("--sliced-decode", type=int, help="decode this many samples at a time")
    ap.add_argument("--http", action="store_true", help="also measure through the API (uvicorn + infer worker)")
    ap.add_argument(
        "--http-teacher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --http, also time the teacher through the API (--no-http-teacher: the student only)",
    )
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    fast = FastPaths.for_device(
        device,
        dtype="bfloat16" if args.bf16 else None,
        vae_dtype="bfloat16" if args.bf16_vae else None,
        compile=args.compile,
        channels_last_vae=args.channels_last_vae,
        sliced_decode=args.sliced_decode,
    )
    shape = {
        k: v
        for k, v in (("num_frames", args.num_frames), ("height", args.height), ("width", args.width))
        if v is not None
    }
    levels = [int(x) for x in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="ml-bench-serving-") as tmp:
        teacher, student = args.teacher, args.student
        if not (teacher and student):
            random_t, random_s = build_pair(Path(tmp), args.scale, str(device))
            teacher, student = teacher or random_t, student or random_s
        print(f"device {device} ({torch.get_num_threads()} torch threads), fast paths {fast}")

        with GenerationService(str(device), batching=False, fast=fast) as solo:
            # warm-up: load, first-call costs, prompt embeddings (the teacher's in 2 steps: at full scale its 100
            # network evaluations take a minute and warm nothing more than 4 do)
            solo.generate(GenerationRequest(teacher, PROMPTS[0], seed=0, steps=2, **shape))
            solo.generate(GenerationRequest(student, PROMPTS[0], seed=0, **shape))
            s = resolve_sampling(solo.generator(student).sampling, SamplingOptions(**shape))
            print(f"shape {s.num_frames}x{s.height}x{s.width} frames x H x W")
            t_lat, t_st, t_nfe = latency(solo, teacher, args.reps, shape)
            s_lat, s_st, s_nfe = latency(solo, student, args.reps, shape)

            print("\n== end-to-end latency, one request at a time (median) ==")
            print(f"teacher  {t_lat * 1000:9.1f} ms   {t_nfe:3d} network evaluations")
            print(f"student  {s_lat * 1000:9.1f} ms   {s_nfe:3d} network evaluations")
            print(f"speed-up {t_lat / s_lat:9.1f} x    NFE ratio {t_nfe}/{s_nfe} = {t_nfe / s_nfe:.1f} x")

            print("\n== share of end-to-end time by stage ==")
            print(f"teacher  {fmt_shares(t_st)}")
            print(f"student  {fmt_shares(s_st)}")
            outside = 1 - (s_st["denoising"] + s_st["vae_decoding"]) / s_st["total"]
            print(
                f"student time outside network evaluations and VAE decoding: {100 * outside:.1f}% of latency "
                f"(target < 10%: {'met' if outside < 0.10 else 'NOT met'})"
            )

            print(f"\n== student throughput, videos/s ({args.rounds} requests per client) ==")
            seq_runs = {c: throughput(solo, student, c, args.rounds, shape) for c in levels}
        with GenerationService(
            str(device), batching=True, window_ms=args.window_ms, max_batch=args.max_batch, fast=fast
        ) as batched:
            batched.generate(GenerationRequest(student, PROMPTS[0], seed=0, **shape))
            bat_runs = {c: throughput(batched, student, c, args.rounds, shape) for c in levels}
            sizes = batched.batcher.batch_sizes
        seq, bat = ({c: rate for c, (rate, _) in runs.items()} for runs in (seq_runs, bat_runs))
        print(f"{'clients':>8} {'sequential':>11} {'batched':>9} {'speed-up':>9}")
        for c in levels:
            print(f"{c:>8} {seq[c]:>11.2f} {bat[c]:>9.2f} {bat[c] / seq[c]:>8.1f}x")
        print(f"batch sizes seen: max {max(sizes)}, mean {statistics.fmean(sizes):.1f}")
        if 16 in levels:
            ok = bat[16] >= 3 * seq[16]
            print(
                f"batching at 16 clients vs sequential: {bat[16] / seq[16]:.1f}x (target >= 3x: "
                f"{'met' if ok else 'NOT met'})"
            )
        # The ceiling: compute per video in the largest batches against alone, both as the service ran them (on its
        # dispatcher thread); mp4 encoding runs in the callers' threads, beside the next batch.
        top = max(levels)
        alone = statistics.median(t for _, t in seq_runs[top][1])
        biggest = max(b for b, _ in bat_runs[top][1])
        per_video = statistics.median(t / b for b, t in bat_runs[top][1] if b == biggest)
        print(f"\n== batching ceiling at {top} clients: compute per video as served (medians) ==")
        print(
            f"alone {alone * 1000:.1f} ms; in batches of {biggest} {per_video * 1000:.1f} ms a video: batching can "
            f"give at most {alone / per_video:.1f}x sequential here, with nothing else in the way"
        )

        print(f"\n== peak memory ==\n{peak_memory(device)}")
        if args.http:
            # the API process loads its own copies: give this process's back first (at full scale, tens of GB)
            clear_cache()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            http_bench(teacher, student, shape, args, levels)
    return 0


def _ts(iso: str) -> float:
    import datetime as dt

    t = dt.datetime.fromisoformat(iso)  # the API's timestamps are UTC, with or without an offset
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _ms(ts: list[tuple], a: int, b: int) -> str:
    return f"{1000 * statistics.fmean(t[b] - t[a] for t in ts):.0f}"


def http_checkpoints(pairs: dict[str, str], listed: set[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The name each benchmark checkpoint (label -> zoo name or directory) has on the server, and what to register.

    A name the server already lists (a zoo name such as ``tiny-teacher``) is requested as it is, the way a user
    would; anything else is registered under its label with its absolute directory (zoo names resolved here, not
    read as paths relative to the working directory).
    """
    from trainer.zoo import resolve_checkpoint

    refs: dict[str, str] = {}
    register: list[tuple[str, str]] = []
    for label, ckpt in pairs.items():
        if ckpt in listed:
            refs[label] = ckpt
        else:
            refs[label] = label
            register.append((label, str(resolve_checkpoint(ckpt).resolve())))
    return refs, register


def http_bench(teacher: str, student: str, shape: dict, args, levels: list[int]) -> None:
    """Sync generations through the real API on loopback (see the module docstring)."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from backend.server import INFER_THREADS

    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    tmp = tempfile.TemporaryDirectory(prefix="ml-bench-http-")
    # the repo first, then what the caller's path already holds (on a GPU machine: the carried packages)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "MOTIONLAB_STORAGE_ROOT": str(Path(tmp.name) / "s"),
        "MOTIONLAB_DEVICE": args.device,
        "MOTIONLAB_LIMIT_MAX_CONCURRENT_GENERATIONS_PER_KEY": "100000",
        # the same batching and fast paths as the in-process figures
        "MOTIONLAB_SERVING_BATCH_WINDOW_MS": str(args.window_ms),
        "MOTIONLAB_SERVING_MAX_BATCH": str(args.max_batch),
        "MOTIONLAB_SERVING_COMPILE": str(args.compile),
    }
    if args.bf16:
        env["MOTIONLAB_SERVING_DTYPE"] = "bfloat16"
    if args.bf16_vae:
        env["MOTIONLAB_SERVING_VAE_DTYPE"] = "bfloat16"
    if args.channels_last_vae is not None:
        env["MOTIONLAB_SERVING_CHANNELS_LAST_VAE"] = str(args.channels_last_vae)
    if args.sliced_decode:
        env["MOTIONLAB_SERVING_SLICED_DECODE"] = str(args.sliced_decode)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from backend.core.config import Settings
        from backend.db.migrate import upgrade_to_head
        from backend.db.session import session_scope
        from backend.security import create_api_key

        settings = Settings()
        upgrade_to_head(settings)
        with session_scope(settings) as db:
            _row, key = create_api_key(db, "bench-serving", ["admin"], pepper=settings.api_key_pepper)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    procs = [
        subprocess.Popen(uvicorn_command(port), cwd=REPO, env=env),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend.worker",
                "--queues",
                "infer",
                "--pool",
                "threads",
                "--concurrency",
                str(INFER_THREADS),
                "--loglevel",
                "WARNING",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    # One keep-alive client for all requests, as a real client would hold: a fresh httpx client per request builds
    # an SSL context each time, a cost no server can remove.
    http = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=900,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )
    try:
        wait_until_up(url, procs[0], "/readyz")
        if procs[1].poll() is not None:
            raise SystemExit(f"the infer worker exited with {procs[1].returncode}")
        listed = http.get("/v1/checkpoints")
        listed.raise_for_status()
        refs, register = http_checkpoints(
            {"bench-teacher": teacher, "bench-student": student}, {c["name"] for c in listed.json()["items"]}
        )
        for name, path in register:
            r = http.post("/v1/checkpoints", json={"name": name, "path": path})
            r.raise_for_status()

        def one(ckpt: str, seed: int, **extra) -> tuple[float, dict]:
            body = {
                "checkpoint": refs[ckpt],
                "prompt": PROMPTS[seed % len(PROMPTS)],
                "seed": seed,
                "mode": "sync",
                "timeout_s": 300,
                **shape,
                **extra,
            }
            t0 = time.perf_counter()
            r = http.post("/v1/generations", json=body)
            dt = time.perf_counter() - t0
            answered = time.time()
            if r.status_code != 201:
                raise SystemExit(f"generation answered {r.status_code}: {r.text[:300]}")
            out = r.json()
            out["_answered"] = answered
            return dt, out

        def sampler_info(video_id: str) -> dict:
            from backend.db.models import Video

            os.environ.update(env)
            try:
                with session_scope(Settings(), write=False) as db:
                    return dict((db.get(Video, video_id).params or {}).get("sampler") or {})
            finally:
                os.environ.clear()
                os.environ.update(saved)

        # the teacher through HTTP is optional: at full scale one of its requests takes minutes of device time
        ckpts = ("bench-teacher", "bench-student") if args.http_teacher else ("bench-student",)
        for ckpt in ckpts:  # warm-up: the API loads each model once (the teacher in 2 steps, as in process)
            one(ckpt, 0, **({"steps": 2} if ckpt == "bench-teacher" else {}))
        print("\n== through the HTTP API (sync POST /v1/generations, run in the API process, one batcher) ==")
        lat, share, stored = {}, {}, {}
        for ckpt in ckpts:
            runs = [one(ckpt, i + 1) for i in range(args.reps)]
            lat[ckpt] = statistics.median(dt for dt, _ in runs)
            infos = [sampler_info(out["video"]["id"]) for _, out in runs]
            inside = [i["timings"]["denoising"] + i["timings"]["vae_decoding"] for i in infos]
            # per request (the same request's latency and stage times), then the median over requests
            outside = statistics.median(dt - t for (dt, _), t in zip(runs, inside, strict=True))
            nfe = infos[0]["network_evaluations"]
            stored[ckpt] = (runs, infos, inside)
            print(
                f"{ckpt:14s} {lat[ckpt] * 1000:9.1f} ms  {nfe:3d} NFE   network + VAE decoding "
                f"{statistics.median(inside) * 1000:7.1f} ms; outside them {outside * 1000:5.1f} ms = "
                f"{100 * outside / lat[ckpt]:5.1f}% of latency (medians)"
            )
            share[ckpt] = outside / lat[ckpt]
            ts = [(_ts(o["created_at"]), _ts(o["started_at"]), _ts(o["finished_at"]), o["_answered"]) for _, o in runs]
            print(
                f"{'':14s} where the rest goes: created -> started {_ms(ts, 0, 1)} ms, started -> finished "
                f"{_ms(ts, 1, 2)} ms, finished -> answered {_ms(ts, 2, 3)} ms (means)"
            )
        if args.http_teacher:
            print(f"speed-up {lat['bench-teacher'] / lat['bench-student']:.1f} x (NFE ratio 100/3 = 33.3 x)")
        ok = share["bench-student"] < 0.10
        print(
            f"student time outside network evaluations and VAE decoding through HTTP: "
            f"{100 * share['bench-student']:.1f}% (target < 10%: {'met' if ok else 'NOT met'})"
        )
        # The floor: what a student request spends outside the network and the VAE however lean the server gets:
        # one authenticated round trip that reads one row, plus the request's own text and mp4 encoding.
        runs, infos, inside = stored["bench-student"]
        rtts = []
        for _ in range(max(10, 3 * args.reps)):
            t0 = time.perf_counter()
            http.get(f"/v1/generations/{runs[0][1]['id']}").raise_for_status()
            rtts.append(time.perf_counter() - t0)
        rtt = statistics.median(rtts)
        text = statistics.median(i["timings"]["text_encoding"] for i in infos)
        enc = statistics.median(i["timings"]["video_encoding"] for i in infos)
        work, floor = statistics.median(inside), rtt + text + enc
        print(
            f"floor outside them: a GET of the job (auth, one database read, JSON) {rtt * 1000:.1f} ms + text encoding "
            f"{text * 1000:.1f} ms + mp4 encoding and storing {enc * 1000:.1f} ms = {floor * 1000:.1f} ms = "
            f"{100 * floor / (work + floor):.1f}% of a request with {work * 1000:.1f} ms of network + VAE decoding "
            f"(< 10% allows {work / 9 * 1000:.1f} ms)"
        )
        # sequential requests, the baseline: the student's median latency above (over --reps requests, a steadier
        # figure than one client's --rounds requests)
        base = 1.0 / lat["bench-student"]
        print(f"sequential: {base:6.2f} videos/s (1 / the student's median latency)")
        for c in levels:
            n = c * args.rounds
            first = 5000 + 1000 * c  # fresh seeds per level: no level is served from a previous level's work
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as ex:
                outs = list(ex.map(lambda i, first=first: one("bench-student", first + i), range(n)))
            wall = time.perf_counter() - t0
            seeds = sorted(o["params"]["seed"] for _, o in outs)
            ok = seeds == list(range(first, first + n)) and len({o["video"]["sha256"] for _, o in outs}) == n
            rate = n / wall
            sizes = [sampler_info(o["video"]["id"])["batch_size"] for _, o in outs]
            print(
                f"{c:>3} clients: {rate:6.2f} videos/s, {rate / base:4.2f} x sequential  ({n} requests, all "
                f"answered with their own video: {'yes' if ok else 'NO'}; batch sizes max {max(sizes)}, "
                f"mean {statistics.fmean(sizes):.1f})"
            )
    finally:
        http.close()
        for p in procs:
            stop_server(p)
        tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
