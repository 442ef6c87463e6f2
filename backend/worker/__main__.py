"""``python -m backend.worker --queues train,eval,infer --concurrency 1``: a MotionLab Celery worker."""

from __future__ import annotations

import argparse
import logging

from backend.server import run_worker


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__)
    ap.add_argument("--queues", default="train,eval,infer", help="comma-separated subset of train,eval,infer")
    ap.add_argument("--concurrency", type=int, default=1, help="pool processes or threads (1 for a training worker)")
    ap.add_argument("--pool", default="prefork", help="prefork, or threads (an infer worker that batches requests)")
    ap.add_argument("--loglevel", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(args.queues.split(","), args.concurrency, pool=args.pool, loglevel=args.loglevel)


if __name__ == "__main__":
    main()
