"""Multi-stage training recipes built from ``train_run`` calls.

``train_tiny_teacher``: the tiny VAE (reconstruction + KL), then the tiny teacher (SFT) on its latents. Each stage
is its own run directory under ``run_root``, so re-running resumes whichever stage was interrupted.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import deep_merge, load_train_config
from trainer.loop import train_run


def train_tiny_teacher(run_root: str | Path, sft_overrides: dict | None = None, vae_overrides: dict | None = None,
                       **run_kw) -> Path:
    run_root = Path(run_root)
    sft_overrides = dict(sft_overrides or {})
    shared = {k: sft_overrides[k] for k in ("data", "seed", "device") if k in sft_overrides}
    vae_cfg = load_train_config("vae", deep_merge(shared, vae_overrides or {}), preset="tiny")
    vae = train_run(vae_cfg, run_root / "vae", **run_kw)
    if vae.get("stopped"):
        raise InterruptedError("stopped during the VAE stage")
    sft_cfg = load_train_config("sft", {**sft_overrides, "init": vae["export_dir"]}, preset="tiny")
    sft = train_run(sft_cfg, run_root / "sft", **run_kw)
    if sft.get("stopped"):
        raise InterruptedError("stopped during the teacher stage")
    return Path(sft["export_dir"])


# The tiny recipe: teacher -> DMD 3-step -> MoGAN 3-step (+ ablations), each one `train_run`, then the benchmark.
# name -> (method, overrides, registered zoo name or None). Ablations change exactly one switch of their parent.
TINY_STUDENTS = [
    ("dmd", "dmd", {"teacher": "tiny-teacher"}, "tiny-dmd"),
    ("mogan", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd"}, "tiny-mogan"),
]
TINY_ABLATIONS = [
    ("mogan-no-dmd", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"use_dmd": False}}),
    ("mogan-no-r1r2", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd", "method_cfg": {"use_r1r2": False}}),
    ("mogan-video-disc", "mogan", {"teacher": "tiny-teacher", "init": "tiny-dmd",
                                   "method_cfg": {"disc_space": "video"}}),
]


def recipe_tiny(run_root: str | Path = "runs/recipe-tiny", *, ablations: bool = True, evaluate: bool = True,
                seeds: int = 5, n_prompts: int = 16, only: list[str] | None = None) -> dict:
    """Train the tiny zoo end to end and write the Table-1-shaped report. Every stage resumes if re-run."""
    import time

    from trainer.methods import METHODS
    from trainer.zoo import register_checkpoint, zoo_dir

    run_root = Path(run_root)
    timings: dict[str, float] = {}
    exports: dict[str, Path] = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        print(f"[recipe] {name}: {timings[name] / 60:.1f} min -> {out}", flush=True)
        return out

    if not only or "teacher" in only:
        exports["teacher"] = stage("teacher", lambda: register_checkpoint(
            train_tiny_teacher(run_root / "teacher"), "tiny-teacher"))
    plan = list(TINY_STUDENTS) + [(n, m, o, None) for n, m, o in TINY_ABLATIONS if ablations]
    plan += [(n, m, o, z) for n, m, o, z in extra_tiny_stages(ablations) if m in METHODS]
    for name, method, overrides, zoo_name in plan:
        if only and name not in only:
            continue
        def run(method=method, overrides=overrides, name=name, zoo_name=zoo_name):
            cfg = load_train_config(method, overrides, preset="tiny")
            export = Path(train_run(cfg, run_root / name)["export_dir"])
            return register_checkpoint(export, zoo_name) if zoo_name else export
        exports[name] = stage(name, run)
    result = {"timings_s": timings, "exports": {k: str(v) for k, v in exports.items()}}
    if evaluate:
        ckpts = {"teacher-50step": str(zoo_dir() / "tiny-teacher")}
        ckpts.update({n: str(p) for n, p in exports.items() if n != "teacher"})
        result["report"] = stage("benchmark", lambda: evaluate_tiny(ckpts, run_root / "report", seeds, n_prompts))
    (run_root / "recipe.json").write_text(__import__("json").dumps(result, indent=2))
    return result


def extra_tiny_stages(ablations: bool) -> list[tuple[str, str, dict, str | None]]:
    """VDOT and DF-DPO rows (issue 4), with their one-switch ablations."""
    rows = [
        ("vdot", "vdot", {"teacher": "tiny-teacher"}, "tiny-vdot"),
        ("dfdpo", "dfdpo", {"init": "tiny-teacher"}, "tiny-dfdpo"),
    ]
    if ablations:
        rows += [
            ("vdot-dmd-only", "vdot", {"teacher": "tiny-teacher",
                                       "method_cfg": {"use_otd": False, "use_gan": False}}, None),
            ("vdot-no-gan", "vdot", {"teacher": "tiny-teacher", "method_cfg": {"use_gan": False}}, None),
            ("vdot-no-otd", "vdot", {"teacher": "tiny-teacher", "method_cfg": {"use_otd": False}}, None),
            ("dfdpo-temporal", "dfdpo", {"init": "tiny-teacher", "method_cfg": {"mode": "temporal"}}, None),
            ("dfdpo-spatial", "dfdpo", {"init": "tiny-teacher", "method_cfg": {"mode": "spatial"}}, None),
        ]
    return rows


def evaluate_tiny(checkpoints: dict[str, str], out_dir: Path, seeds: int = 5, n_prompts: int = 16) -> Path:
    """Benchmark the tiny models on held-out synthetic prompts x shared seeds; write the report."""
    from evaluator.benchmark.runner import BenchmarkSpec, JsonlStore, run_benchmark
    from evaluator.benchmark.suites import tiny_suite
    from evaluator.reports import write_report
    from trainer.data.synthetic import sample_clips

    prompts = tiny_suite(n_prompts)
    spec = BenchmarkSpec(checkpoints=list(checkpoints.values()), prompts=prompts, seeds=list(range(seeds)),
                         metrics=["motion_smoothness", "dynamic_degree", "motion_score", "temporal_flickering"],
                         labels={v: k for k, v in checkpoints.items()})
    real = [c[0] for c in sample_clips(64, seed=12345, split="heldout")]
    records = run_benchmark(spec, out_dir, real_videos=real)
    write_report(records or JsonlStore(out_dir / "records.jsonl").all(), out_dir,
                 title="Tiny recipe: held-out synthetic prompts x 5 seeds (lite backend)")
    return out_dir / "report.md"
