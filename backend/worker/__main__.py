"""``python -m backend.worker --queues train,eval,infer --concurrency 1``: a MotionLab Celery worker."""

from __future__ import annotations

import argparse
import signal

from backend.server import configure_logging, run_worker
from trainer.parent_death import die_with_parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__)
    ap.add_argument("--queues", default="train,eval,infer", help="comma-separated subset of train,eval,infer")
    ap.add_argument("--concurrency", type=int, default=1, help="pool processes or threads (1 for a training worker)")
    ap.add_argument("--pool", default="prefork", help="prefork, or threads (an infer worker that batches requests)")
    ap.add_argument("--loglevel", default="INFO")
    ap.add_argument("--quiet", action="store_true", help="no Celery banner")
    ap.add_argument(
        "--parent-pid", type=int, help="get SIGTERM when this process dies (motionlab serve passes its own)"
    )
    args = ap.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid, signal.SIGTERM)
    configure_logging(args.loglevel)
    run_worker(args.queues.split(","), args.concurrency, pool=args.pool, loglevel=args.loglevel, quiet=args.quiet)


if __name__ == "__main__":
    main()
