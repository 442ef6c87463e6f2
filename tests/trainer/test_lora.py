"""LoRA post-training (trainer/lora.py): config errors, adapters over shared frozen bases, the diffusers LoRA export
that stock WanPipeline loads, adapter checkpoints in the zoo and serving, exact resume, DDP."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from diffusers import WanPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from trainer.config import ConfigError, LoraConfig, load_train_config
from trainer.loop import train_run
from trainer.lora import LoraNet, apply_lora, make_lora
from trainer.models.adapter import ADAPTER_FILE, LORA_WEIGHTS, lora_parameter_count
from trainer.models.generator import TINY_VAE, Generator, WeightsNotFoundError, check_pipeline_dir
from trainer.sampling import SeededNoise, generate_latents

LORA = {"enabled": True, "rank": 4, "alpha": 8.0}
DMD_SMALL = {
    "batch_size": 1,
    "checkpoint_every": 1,
    "log_every": 1,
    "method_cfg": {"num_prompts": 4, "critic_steps": 1},
    "lora": LORA,
}
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def _adapter_params(gen) -> int:
    return lora_parameter_count(gen.transformer, 4, ATTN)


@pytest.mark.parametrize(
    "over, field, words",
    [
        ({"lora": {"rank": 0}}, "lora.rank", "out of range"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout", "out of range"),
        ({"lora": {"fake_score": "half"}}, "lora.fake_score", "not one of"),
        ({"lora": {"target_modules": []}}, "lora.target_modules", "at least one"),
        ({"lora": {"enabled": True}, "parallel": "fsdp"}, "parallel", "parallel=ddp"),
    ],
)
def test_lora_config_errors_name_the_field_and_the_limit(over, field, words):
    with pytest.raises(ConfigError) as err:
        load_train_config("sft", over)
    assert err.value.field == field and words in str(err.value)
    with pytest.raises(ConfigError, match="lora.enabled"):
        load_train_config("vae", {"lora": {"enabled": True}})


def test_target_modules_must_name_linear_layers(tiny_pipeline_dir):
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ConfigError, match="'to_qq' matches no layer") as err:
        make_lora(gen.transformer, LoraConfig(target_modules=["to_q", "to_qq"]))
    assert err.value.field == "lora.target_modules"
    with pytest.raises(ConfigError, match="LoRA targets Linear layers"):
        make_lora(gen.transformer, LoraConfig(target_modules=["patch_embedding"]))


def test_lora_networks_train_adapters_only_over_the_teachers_shared_weights(tiny_pipeline_dir):
    from trainer.methods.mogan import MoGAN

    cfg = load_train_config(
        "mogan",
        {
            **DMD_SMALL,
            "teacher": str(tiny_pipeline_dir),
            "method_cfg": {"num_prompts": 4, "num_real": 2, "window_chunks": 2},
        },
    )
    m = MoGAN(cfg, torch.device("cpu"), torch.float32)
    total = sum(p.numel() for p in m.teacher.parameters())
    counts = apply_lora(m, cfg)
    adapter = _adapter_params(m.gen)
    for name in ("generator", "fake_score"):
        net = m.networks[name]
        assert isinstance(net, LoraNet) and getattr(m, name) is net
        assert counts[name] == {"trainable": adapter, "frozen": total, "shared": total}
        assert sum(p.numel() for p in net.parameters()) == adapter  # what the optimizer, EMA and DDP see
        assert net.model.blocks[0].attn1.to_q.base_layer.weight is m.teacher.blocks[0].attn1.to_q.weight
    assert isinstance(m.disc, LoraNet)
    assert m.disc.model.trunk.blocks[0].attn2.to_v.base_layer.weight is m.teacher.blocks[0].attn2.to_v.weight
    heads = sum(p.numel() for p in (*m.disc.model.heads.parameters(), *m.disc.model.final.parameters()))
    assert len(m.disc.model.trunk.blocks) == len(m.teacher.blocks)  # the tiny trunk: all the teacher's blocks
    assert counts["disc"]["trainable"] == heads + adapter
    assert not any("lora" in n for n, _ in m.teacher.named_parameters())  # the teacher itself is untouched
    x, t, c = torch.randn(1, TINY_VAE["z_dim"], 2, 8, 8), torch.tensor([500.0]), torch.randn(1, 16, 64)
    with torch.no_grad():  # lora_B starts at zero: the adapted generator starts as the teacher
        assert torch.equal(m.generator(x, t, c, return_dict=False)[0], m.teacher(x, t, c, return_dict=False)[0])


def test_dfdpo_policy_shares_the_reference_and_vdot_keeps_its_register_token_disc(tiny_pipeline_dir):
    from trainer.methods.dfdpo import DFDPO
    from trainer.methods.vdot import VDOT

    cfg = load_train_config("dfdpo", {"init": str(tiny_pipeline_dir), "lora": LORA})
    m = DFDPO(cfg, torch.device("cpu"), torch.float32)
    apply_lora(m, cfg)
    assert isinstance(m.policy, LoraNet) and m.gen.transformer is m.policy and m.networks["policy"] is m.policy
    assert m.policy.model.blocks[3].attn1.to_out[0].base_layer.weight is m.reference.blocks[3].attn1.to_out[0].weight

    cfg = load_train_config("vdot", {"teacher": str(tiny_pipeline_dir), "lora": LORA})
    m = VDOT(cfg, torch.device("cpu"), torch.float32)
    counts = apply_lora(m, cfg)
    assert isinstance(m.fake_score, LoraNet) and not isinstance(m.disc, LoraNet)
    assert counts["disc"]["frozen"] == 0
    x, t, c = torch.randn(2, TINY_VAE["z_dim"], 2, 8, 8), torch.tensor([300.0, 700.0]), torch.randn(2, 16, 64)
    assert m.disc(m.fake_score, x, t, c).shape == (2,)  # the register tokens read the LoRA fake score's blocks


def test_lora_mogan_run_exports_an_adapter_checkpoint(tiny_pipeline_dir, tmp_path):
    over = {
        **DMD_SMALL,
        "teacher": str(tiny_pipeline_dir),
        "steps": 2,
        "method_cfg": {"num_prompts": 4, "critic_steps": 1, "num_real": 2, "window_chunks": 2},
    }
    out = train_run(load_train_config("mogan", over), tmp_path / "m", progress_bar=False)
    teacher = Generator.from_pretrained(tiny_pipeline_dir)
    adapter = _adapter_params(teacher)
    assert out["parameters"]["generator"]["trainable"] == adapter
    # checkpoints hold the adapters (and the discriminator's heads), not the frozen bases
    ckpt = load_file(str(tmp_path / "m" / "checkpoints" / "step-00000002" / "generator" / "model.safetensors"))
    assert sum(v.numel() for v in ckpt.values()) == adapter and all("lora_" in k for k in ckpt)
    export = tmp_path / "m" / "export"
    info = json.loads((export / ADAPTER_FILE).read_text())
    assert info["base"] == str(tiny_pipeline_dir.resolve()) and (info["rank"], info["alpha"]) == (4, 8.0)
    lora = load_file(str(export / LORA_WEIGHTS))
    assert all(k.startswith("transformer.blocks.") for k in lora)
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k), "the adapter was not trained"
    student = Generator.from_pretrained(export)
    assert student.sampling.kind == "few_step"
    assert any(
        not torch.equal(a, b) for a, b in zip(student.transformer.parameters(), teacher.transformer.parameters())
    )
    log = json.loads((tmp_path / "m" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"generator/loss", "fake_score/loss", "generator_gan/loss", "disc/loss"} <= log.keys()
    assert log["peak_rss_gib"] > 0


class _TeacherSigmas(FlowMatchEulerDiscreteScheduler):
    """Stock Euler scheduler on our teacher sampler's sigmas (linspace(1, 0) shifted; the scheduler shifts)."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kw):
        super().set_timesteps(sigmas=torch.linspace(1, 0, num_inference_steps + 1)[:-1].tolist(), device=device)


def test_stock_wan_pipeline_loads_the_lora_and_samples_what_we_sample(tiny_pipeline_dir, tmp_path):
    over = {
        "init": str(tiny_pipeline_dir),
        "steps": 2,
        "batch_size": 1,
        "checkpoint_every": 2,
        "ema_decay": 0.0,
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "data": {"num_videos": 2},
        "lora": {**LORA, "merge": True},
    }
    export = train_run(load_train_config("sft", over), tmp_path / "sft", progress_bar=False)["export_dir"]
    adapter_dir = tmp_path / "sft" / "export" / "lora"
    assert (tmp_path / "sft" / "export" / "model_index.json").is_file() and (adapter_dir / LORA_WEIGHTS).is_file()

    prompt, seed, kw = "a red square moves left", 3, {"num_frames": 5, "height": 32, "width": 32}
    ours = Generator.from_pretrained(adapter_dir)
    s = replace(ours.sampling, num_steps=2)
    mine = generate_latents(ours, [prompt], [seed], sampling=s, **kw)
    merged = generate_latents(Generator.from_pretrained(export), [prompt], [seed], sampling=s, **kw)
    base = generate_latents(Generator.from_pretrained(tiny_pipeline_dir), [prompt], [seed], sampling=s, **kw)

    pipe = WanPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.scheduler = _TeacherSigmas.from_config(pipe.scheduler.config, shift=s.shift)
    pipe.load_lora_weights(adapter_dir)
    stock = pipe(
        prompt,
        num_inference_steps=2,
        guidance_scale=s.guidance_scale,
        max_sequence_length=16,
        latents=SeededNoise([seed])(mine.shape[1:], "cpu"),
        output_type="latent",
        **kw,
    ).frames
    assert torch.allclose(stock, mine, atol=1e-4), (stock - mine).abs().max()
    assert torch.allclose(merged, mine, atol=1e-5)
    assert (base - mine).abs().max() > 1e-2  # the adapter changes the samples: the comparison can fail


def test_adapter_checkpoint_in_the_zoo_and_serving(tiny_pipeline_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    from trainer import zoo
    from trainer.serving import GenerationRequest, GenerationService

    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(tmp_path / "zoo"))
    (tmp_path / "zoo").mkdir()
    zoo.register_checkpoint(tiny_adapter_dir, "tiny-lora")
    entry = {c["name"]: c for c in zoo.list_checkpoints()}["tiny-lora"]
    assert entry["kind"] == "few_step" and entry["base"] == str(tiny_pipeline_dir)
    assert zoo.resolve_checkpoint("tiny-lora") == tmp_path / "zoo" / "tiny-lora"
    expected = generate_latents(
        Generator.from_pretrained(tiny_adapter_dir), ["a blue circle moves up"], [5], num_frames=5, height=16, width=16
    )
    zoo.clear_cache()
    with GenerationService(device="cpu", batching=False) as svc:
        res = svc.generate(
            GenerationRequest("tiny-lora", "a blue circle moves up", seed=5, num_frames=5, height=16, width=16)
        )
    zoo.clear_cache()
    assert torch.allclose(res.latents, expected[0], atol=1e-5)
    base = generate_latents(
        Generator.from_pretrained(tiny_pipeline_dir),
        ["a blue circle moves up"],
        [5],
        sampling=Generator.from_pretrained(tiny_pipeline_dir).sampling.few_step(),
        num_frames=5,
        height=16,
        width=16,
    )
    assert (base - expected).abs().max() > 1e-3


def test_adapter_checkpoint_errors_name_what_is_missing(tiny_adapter_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapter_dir, broken)
    info = json.loads((broken / ADAPTER_FILE).read_text())
    (broken / ADAPTER_FILE).write_text(json.dumps({**info, "base": str(tmp_path / "gone")}))
    with pytest.raises(WeightsNotFoundError, match="its base .*gone.* is not available"):
        check_pipeline_dir(broken)
    (broken / ADAPTER_FILE).write_text(json.dumps(info))
    (broken / LORA_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing: {LORA_WEIGHTS}"):
        Generator.from_pretrained(broken)


def test_interrupted_lora_run_resumes_exactly(tiny_pipeline_dir, tmp_path, differing_weights):
    cfg = load_train_config(
        "dmd",
        {
            **DMD_SMALL,
            "teacher": str(tiny_pipeline_dir),
            "steps": 4,
            "ema_decay": 0.5,
            "checkpoint_every": 2,
            "lora": {**LORA, "dropout": 0.1},
        },
    )
    train_run(cfg, tmp_path / "straight", progress_bar=False)
    calls = []
    part = train_run(
        cfg, tmp_path / "resumed", progress_bar=False, should_stop=lambda: calls.append(1) or len(calls) >= 2
    )
    assert part["stopped"] and part["step"] == 2 and not (tmp_path / "resumed" / "export").exists()
    again = train_run(cfg, tmp_path / "resumed", progress_bar=False)
    assert again["resumed_from"] == 2
    assert differing_weights(tmp_path / "straight" / "export", tmp_path / "resumed" / "export") == []
    la, lb = (
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("straight", "resumed")
    )
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert [(r["generator/loss"], r["fake_score/loss"]) for r in la] == [
        (r["generator/loss"], r["fake_score/loss"]) for r in lb
    ]


def test_lora_under_ddp_keeps_the_ranks_adapters_equal(tiny_pipeline_dir, tmp_path):
    from tests.trainer.ddp_helpers import train_and_digest
    from trainer.distributed import launch_local

    cfg = load_train_config(
        "dmd", {**DMD_SMALL, "teacher": str(tiny_pipeline_dir), "steps": 2, "batch_size": 2, "checkpoint_every": 2}
    )
    digests = launch_local(train_and_digest, cfg, tmp_path / "ddp", nprocs=2)  # each rank seeds its own adapters
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (tmp_path / "ddp" / "export" / LORA_WEIGHTS).is_file()
