"""``trainer/plan.py`` and ``motionlab plan``: exact parameter counts, traces that match real CPU runs, FSDP sharding,
checkpointing, suggestions that re-plan to a fit, the CLI table and its errors."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from backend.cli import app
from trainer.config import ConfigError, load_train_config
from trainer.models.discriminators import FeatureDiscriminator, MotionDiscriminator
from trainer.models.generator import TINY_TRANSFORMER, TINY_VAE, Generator
from trainer.plan import (
    PLAN_CACHE_ENV,
    PlanError,
    _key,
    _with,
    format_plan,
    networks,
    plan_memory,
    trace_decode_window,
    trace_dit,
)

DIT, VAE = _key(TINY_TRANSFORMER), _key(TINY_VAE)


@pytest.fixture(autouse=True)
def no_trace_file(monkeypatch):
    """Traces stay in the process (the home directory's trace file is left alone)."""
    monkeypatch.setenv(PLAN_CACHE_ENV, "off")


def cfg(method: str, **over):
    return load_train_config(method, {"device": "cuda", **over}, preset="tiny")


def rows(plan) -> dict[str, float]:
    return {r.component: r.bytes for r in plan.resident}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_instantiated_tiny_models():
    gen = Generator.build_tiny()
    prompt = torch.zeros(16, TINY_TRANSFORMER["text_dim"])
    disc = MotionDiscriminator.from_transformer(gen.transformer, 4, (1, 2, 3), prompt)  # MoGAN's: flow via the VAE
    nets = networks(cfg("mogan"))
    assert {n: nets[n].params for n in ("generator", "fake_score", "teacher", "disc", "vae", "flow")} == {
        "generator": count(gen.transformer),
        "fake_score": count(gen.transformer),
        "teacher": count(gen.transformer),
        "disc": count(disc),
        "vae": count(gen.vae),
        "flow": 0,
    }
    assert nets["generator"].unit_params == max(count(b) for b in gen.transformer.blocks)

    patch = MotionDiscriminator.from_transformer(gen.transformer, 4, (1, 2, 3), prompt, flow_encoder="patch")
    assert count(patch) != count(disc)
    assert networks(cfg("mogan", method_cfg={"flow_encoder": "patch"}))["disc"].params == count(patch)
    assert "fake_score" not in networks(cfg("mogan", method_cfg={"use_dmd": False}))
    feat = FeatureDiscriminator.from_transformer(gen.transformer, [1, 2, 3])
    assert networks(cfg("vdot"))["disc"].params == count(feat)
    assert set(networks(cfg("dfdpo"))) == {"policy", "reference", "vae"}

    # the plan's rows are these counts times the bytes per parameter
    r = rows(plan_memory(cfg("sft", ema_decay=0.9), 1, 80, suggest_fix=False))
    n = count(gen.transformer)
    assert (r["transformer: weights"], r["transformer: AdamW states"], r["transformer: EMA"]) == (4 * n, 8 * n, 4 * n)
    assert r["VAE (frozen)"] == 4 * count(gen.vae)


def test_lora_plans_the_adapters_as_the_trained_state_and_shares_the_teachers_base():
    import copy

    from trainer.config import LoraConfig
    from trainer.lora import make_lora

    gen = Generator.build_tiny()
    prompt = torch.zeros(16, TINY_TRANSFORMER["text_dim"])
    disc = MotionDiscriminator.from_transformer(gen.transformer, 4, (1, 2, 3), prompt)
    adapter = count(make_lora(copy.deepcopy(gen.transformer), LoraConfig(rank=4))[0])  # what peft trains
    disc_lora = count(make_lora(disc, LoraConfig(rank=4))[0])
    lora = {"enabled": True, "rank": 4}
    nets = networks(cfg("mogan", lora=lora))
    assert (nets["generator"].params, nets["fake_score"].params, nets["disc"].params) == (adapter, adapter, disc_lora)
    assert nets["teacher"].params == count(gen.transformer) and not any(n.endswith("_base") for n in nets)

    over = {"batch_size": 8, "ema_decay": 0.9}
    full = plan_memory(cfg("dmd", **over), 2, 80, suggest_fix=False)
    plan = plan_memory(cfg("dmd", **over, lora=lora), 2, 80, suggest_fix=False)
    r, g = rows(plan), "generator (LoRA r=4)"
    assert (r[f"{g}: weights"], r[f"{g}: AdamW states"], r[f"{g}: EMA"], r[f"{g}: DDP gradient buckets"]) == (
        4 * adapter,
        8 * adapter,
        4 * adapter,
        4 * adapter,
    )
    assert {p.name: p.rows[0].bytes for p in plan.phases}["generator DMD update"] == 4 * adapter  # its gradients
    assert r["teacher (frozen)"] == rows(full)["teacher (frozen)"] and plan.total_gib < full.total_gib
    # a generator started from another checkpoint, and SFT's transformer, keep a frozen base of their own
    n = count(gen.transformer)
    assert (
        rows(plan_memory(cfg("dmd", **over, init="elsewhere", lora=lora), 2, 80, suggest_fix=False))[
            "generator LoRA base (frozen)"
        ]
        == 4 * n
    )
    assert rows(plan_memory(cfg("sft", lora=lora), 1, 80, suggest_fix=False))["transformer LoRA base (frozen)"] == 4 * n


def test_meta_traces_equal_the_same_forward_and_backward_on_cpu():
    latent = (TINY_VAE["z_dim"], 3, 8, 8)
    for mode, ckpt in (("train", False), ("train", True), ("input", False), ("none", False)):
        meta = trace_dit(DIT, 2, latent, 16, torch.float32, mode, ckpt)
        real = trace_dit(DIT, 2, latent, 16, torch.float32, mode, ckpt, device="cpu")
        assert meta == real, (mode, ckpt)
        assert meta.held > 0
    # a no-grad forward keeps only its output: weights (and views of them) are not allocations
    nograd = trace_dit(DIT, 2, latent, 16, torch.float32, "none", False)
    assert nograd.held == 4 * TINY_VAE["z_dim"] * 3 * 8 * 8 and nograd.fwd_peak > nograd.held
    meta = trace_decode_window(VAE, latent, 2, torch.float32, "input", True)
    assert meta == trace_decode_window(VAE, latent, 2, torch.float32, "input", True, device="cpu")


def test_fsdp_shards_the_dits_and_their_optimizer_state_by_n():
    base = cfg("dmd", parallel="fsdp", batch_size=8)
    two, four = plan_memory(base, 2, 80, suggest_fix=False), plan_memory(base, 4, 80, suggest_fix=False)
    r2, r4 = rows(two), rows(four)
    for name in ("generator: weights", "generator: AdamW states", "fake_score: AdamW states", "teacher (frozen)"):
        assert r4[name] == pytest.approx(r2[name] / 2)
    assert r4["VAE (frozen)"] == r2["VAE (frozen)"]  # replicated helper
    grads = {p.name: p.rows[0].bytes for p in two.phases}, {p.name: p.rows[0].bytes for p in four.phases}
    assert grads[1]["fake-score update"] == pytest.approx(grads[0]["fake-score update"] / 2)
    assert four.micro_batch == two.micro_batch // 2
    # DDP replicates (and adds gradient buckets)
    ddp = rows(plan_memory(cfg("dmd", batch_size=8), 4, 80, suggest_fix=False))
    assert ddp["generator: weights"] == r2["generator: weights"] * 2
    assert ddp["generator: DDP gradient buckets"] == ddp["generator: weights"]


def test_gradient_checkpointing_reduces_activations():
    shape = {"num_frames": 17, "height": 128, "width": 128}
    off = plan_memory(cfg("sft", batch_size=4, data=shape), 1, 80, suggest_fix=False)
    on = plan_memory(cfg("sft", batch_size=4, data=shape, gradient_checkpointing=True), 1, 80, suggest_fix=False)
    assert on.groups()["activations"] < 0.7 * off.groups()["activations"]
    assert on.groups()["weights"] == off.groups()["weights"]


def test_a_config_that_does_not_fit_gets_a_switch_that_fits_when_replanned():
    shape = {"num_frames": 17, "height": 128, "width": 128}
    base = cfg("sft", batch_size=8, data=shape)
    off = plan_memory(base, 1, 80, suggest_fix=False)
    on = plan_memory(_with(base, {"gradient_checkpointing": True}), 1, 80, suggest_fix=False)
    mem = (off.needed_gib + on.needed_gib) / 2  # fits with checkpointing only
    plan = plan_memory(base, 1, mem)
    assert not plan.fits and plan.suggestion is not None
    assert plan.suggestion.change == {"gradient_checkpointing": True}
    replanned = plan_memory(
        load_train_config(
            "sft", {"device": "cuda", "batch_size": 8, "data": shape, "gradient_checkpointing": True}, preset="tiny"
        ),
        1,
        mem,
    )
    assert replanned.fits
    assert "suggestion: --set gradient_checkpointing=true" in format_plan(plan)

    # checkpointing already on and not enough: a smaller micro-batch (more GPUs first)
    tight = (
        on.needed_gib
        + plan_memory(
            _with(base, {"gradient_checkpointing": True, "grad_accum": 2}), 1, 80, suggest_fix=False
        ).needed_gib
    ) / 2
    plan = plan_memory(_with(base, {"gradient_checkpointing": True}), 1, tight)
    assert plan.suggestion is not None and plan.suggestion.change == {"gpus": 2}
    assert plan_memory(_with(base, {"gradient_checkpointing": True}), 2, tight).fits


def test_mogan_window_is_checked_and_shortening_it_is_suggested():
    with pytest.raises(ConfigError, match="method_cfg.window_chunks"):
        plan_memory(cfg("mogan", method_cfg={"window_chunks": 9}), 1, 80)
    base = cfg("mogan", batch_size=1, gradient_checkpointing=True, method_cfg={"window_chunks": 4})
    short = plan_memory(_with(base, {"method_cfg.window_chunks": 2}), 1, 80, suggest_fix=False)
    full = plan_memory(base, 1, 80, suggest_fix=False)
    assert short.total < full.total
    assert [p.name for p in full.phases] == [
        "generator DMD update",
        "fake-score update",
        "generator GAN update",
        "discriminator update",
    ]
    gan = {r.component for r in full.phases[2].activations}
    for part in (
        "generator: distilled step with gradient",
        "generated: window decode (4 chunks)",
        "generated: flow horn_schunck (12 frame pairs)",
        "VAE encode of the flow",
        "discriminator (4 blocks)",
    ):
        assert f"graph: {part}" in gan, part
    plan = plan_memory(base, 1, (short.needed_gib + full.needed_gib) / 2)
    assert plan.suggestion is not None and "method_cfg.window_chunks" in plan.suggestion.change
    assert plan_memory(_with(base, plan.suggestion.change), 1, plan.gpu_mem_gib).fits


def test_bad_planner_input_names_the_argument_and_the_limit():
    c = cfg("sft")
    with pytest.raises(PlanError, match=r"gpus: must be an integer in \[1, 4096\], got 0"):
        plan_memory(c, 0, 80)
    with pytest.raises(PlanError, match=r"gpu_mem_gib: .*\(0, 4096\], got -1"):
        plan_memory(c, 1, -1)
    with pytest.raises(ConfigError, match="batch_size"):  # a global batch that does not split over the GPUs
        plan_memory(cfg("sft", batch_size=6), 4, 80)


runner = CliRunner()


def test_cli_prints_the_table_with_every_component():
    result = runner.invoke(
        app, ["plan", "--method", "dmd", "--preset", "tiny", "--gpus", "2", "--gpu-mem", "80", "--set", "batch_size=8"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for name in (
        "generator: weights",
        "generator: AdamW states",
        "fake_score: weights",
        "teacher (frozen)",
        "VAE (frozen)",
        "peak phase:",
        "generator: gradients",
        "graph: generator",
        "total",
        "safety margin",
        "fits in 80 GiB",
        "micro-batch 4",
    ):
        assert name in out, name


@pytest.mark.parametrize(
    "args, flag, limit",
    [
        (["--method", "sft", "--gpus", "0"], "--gpus", "[1, 4096]"),
        (["--method", "sft", "--gpu-mem", "-8"], "--gpu-mem", "(0, 4096]"),
        (["--method", "nope"], "--method", "'dfdpo'"),
        (["--method", "vae"], "--method", "'sft', 'dmd'"),
        (["--method", "sft", "--set", "batch_size=0"], "batch_size", "[1, 65536]"),
    ],
)
def test_cli_bad_input_names_the_flag_and_the_limit(args, flag, limit):
    result = runner.invoke(app, ["plan", "--preset", "tiny", *args])
    assert result.exit_code == 2
    assert flag in result.output and limit in result.output, result.output


def test_traces_persist_in_the_trace_file(tmp_path, monkeypatch):
    import trainer.plan as plan_mod

    monkeypatch.setenv(PLAN_CACHE_ENV, str(tmp_path / "traces.json"))
    c = cfg("sft", data={"num_frames": 9, "height": 24, "width": 24})
    first = plan_memory(c, 1, 80, suggest_fix=False)
    assert (tmp_path / "traces.json").is_file()
    trace_dit.cache_clear()
    plan_mod._store.clear()

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again instead of reading the trace file")

    monkeypatch.setattr(plan_mod, "trace", no_tracing)
    assert plan_memory(c, 1, 80, suggest_fix=False).total == first.total
