"""Cost of FlowMo guidance (``trainer.flowmo``): sampling time with and without it, and the passes it adds.

    python bench/flowmo_cost.py                                     # tiny-teacher and tiny-dmd, CPU, 1 thread, 4 videos
    python bench/flowmo_cost.py --checkpoints tiny-teacher --iterations 1 2 --repeats 5
    python bench/flowmo_cost.py --device cuda --threads 0

What is measured:
- time: the denoising loop only (``generate_latents``: noise -> latents, text encoding included, no VAE decoding)
  of one batch of ``--batch`` videos at the checkpoint's own shape and schedule, the same seeds for every row (CUDA:
  synchronized). After one warm-up run of each row, the rows of a checkpoint are timed in turn, ``--repeats``
  rounds, so that load from other processes falls on all of them alike; median and minimum per row.
- passes: counted, not derived: a forward hook on the transformer counts its calls, and an autograd hook on the
  output of each call made with gradient counts the backward passes through it. The teacher's CFG runs cond and
  uncond as one batched call, so one call is two network evaluations; the NFE column applies that rule
  (``trainer.sampling.network_evaluations``).
- signal: FlowMo's coherence signal (``trainer.flowmo.coherence_signal``, mean over the batch) of the final
  latents, as a sanity check that guidance changed the result; it is not a quality measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.flowmo import DEFAULT_ETA, FlowMoConfig, PassCounter, coherence_signal
from trainer.sampling import generate_latents, network_evaluations, sampling_steps
from trainer.zoo import load_generator

PROMPTS = [
    "a red square moves to the right",
    "a blue circle bounces",
    "a green triangle moves up",
    "a yellow square moves left",
]


def run(gen, flowmo: FlowMoConfig | None, batch: int, device: str) -> tuple[float, torch.Tensor]:
    """One timed sampling call -> (seconds, latents)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    latents = generate_latents(gen, prompts, list(range(batch)), flowmo=flowmo)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, latents


def measure(gen, configs: list[tuple[str, FlowMoConfig | None]], batch: int, repeats: int, device: str) -> list:
    """Counted warm-up run of each config, then ``repeats`` interleaved timed rounds -> one row per config."""
    rows = []
    for name, flowmo in configs:
        counter = PassCounter(gen.transformer)
        try:
            _, latents = run(gen, flowmo, batch, device)
            counts = (counter.forward, counter.backward)
        finally:
            counter.close()
        s = gen.sampling
        rows.append(
            {
                "sampler": name,
                "steps": sampling_steps(s),
                "forward_calls": counts[0],
                "backward_passes": counts[1],
                "nfe": network_evaluations(s, flowmo),
                "guided_steps": len(flowmo.guided_steps(sampling_steps(s))) if flowmo else 0,
                "signal": float(coherence_signal(latents.float()).mean()),
                "seconds_all": [],
            }
        )
    for _ in range(repeats):
        for row, (_name, flowmo) in zip(rows, configs):
            row["seconds_all"].append(run(gen, flowmo, batch, device)[0])
    for row in rows:
        row["seconds"] = statistics.median(row["seconds_all"])
        row["seconds_min"] = min(row["seconds_all"])
        row["seconds_all"] = [round(t, 4) for t in row["seconds_all"]]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", nargs="+", default=["tiny-teacher", "tiny-dmd"])
    ap.add_argument("--eta", type=float, default=DEFAULT_ETA)
    ap.add_argument("--stop", type=int, default=None, help="FlowMo's stop step (default: the first quarter)")
    ap.add_argument("--iterations", type=int, nargs="+", default=[1], help="one FlowMo row per value")
    ap.add_argument("--batch", type=int, default=4, help="videos per sampling call (prompts cycle, seeds 0..N-1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for ckpt in args.checkpoints:
        gen = load_generator(ckpt, device=args.device)
        s = gen.sampling
        configs = [("plain", None)] + [
            (f"flowmo x{k}", FlowMoConfig(eta=args.eta, stop=args.stop, iterations=k).check(sampling_steps(s)))
            for k in args.iterations
        ]
        measured = measure(gen, configs, args.batch, args.repeats, args.device)
        base = measured[0]
        for r in measured:
            rows.append(
                {
                    "checkpoint": ckpt,
                    **r,
                    "time_ratio": r["seconds"] / base["seconds"],
                    "min_ratio": r["seconds_min"] / base["seconds_min"],
                    "extra_forward_calls": r["forward_calls"] - base["forward_calls"],
                }
            )

    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.repeats} "
        f"interleaved rounds after a warm-up (median, min); eta {args.eta:g}"
    )
    head = (
        f"{'checkpoint':14s} {'sampler':10s} {'steps':>5s} {'guided':>6s} {'fwd calls':>9s} {'+fwd':>5s} "
        f"{'bwd':>4s} {'NFE':>5s} {'median s':>8s} {'x plain':>7s} {'min s':>7s} {'x plain':>7s} "
        f"{'signal':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['checkpoint']:14s} {r['sampler']:10s} {r['steps']:5d} {r['guided_steps']:6d} "
            f"{r['forward_calls']:9d} {r['extra_forward_calls']:5d} {r['backward_passes']:4d} {r['nfe']:5d} "
            f"{r['seconds']:8.3f} {r['time_ratio']:7.2f} {r['seconds_min']:7.3f} {r['min_ratio']:7.2f} "
            f"{r['signal']:8.4f}"
        )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
