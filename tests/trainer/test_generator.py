import json
import shutil

import pytest
import torch

from trainer.models.generator import TINY_VAE, Generator, SamplingConfig, WeightsNotFoundError, check_pipeline_dir

Z = TINY_VAE["z_dim"]  # latent channels


def test_tiny_roundtrip_through_from_pretrained(tiny_pipeline_dir):
    a = Generator.build_tiny(seed=0)
    b = Generator.from_pretrained(tiny_pipeline_dir)
    x = torch.randn(1, Z, 5, 8, 8)
    t = torch.tensor([500.0])
    cond = a.encode_prompts(["a red square moves left"])
    assert torch.equal(cond, b.encode_prompts(["a red square moves left"]))
    with torch.no_grad():
        assert torch.allclose(a.transformer(x, t, cond).sample, b.transformer(x, t, cond).sample, atol=1e-6)
    assert b.sampling == a.sampling
    assert json.loads((tiny_pipeline_dir / "model_index.json").read_text())["_class_name"] == "WanPipeline"


def test_stock_diffusers_pipeline_loads_our_checkpoint(tiny_pipeline_dir):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_pipeline_dir)
    out = pipe(
        "a red square moves left",
        num_frames=5,
        height=32,
        width=32,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="np",
    )
    assert out.frames.shape == (1, 5, 32, 32, 3)


def test_prompt_embeddings_zero_past_length(tiny_pipeline_dir):
    g = Generator.from_pretrained(tiny_pipeline_dir)
    e = g.encode_prompts(["a red square moves left", ""])
    n_tokens = 5 + 1  # five words and </s>
    assert e[0, :n_tokens].abs().sum(-1).min() > 0
    assert e[0, n_tokens:].abs().sum() == 0
    assert e[1, 1:].abs().sum() == 0  # the empty prompt is just </s>


def test_latent_roundtrip_shapes(tiny_pipeline_dir):
    g = Generator.from_pretrained(tiny_pipeline_dir)
    assert g.latent_shape(17, 32, 32) == (1, Z, 5, 8, 8)
    with pytest.raises(ValueError, match="num_frames must be"):
        g.latent_shape(16, 32, 32)
    x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    with torch.no_grad():
        z = g.encode_video(x)
        assert z.shape == (1, Z, 5, 8, 8)
        assert g.decode_latents(z).shape == x.shape


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        Generator.from_pretrained(tmp_path / "nope")


def test_incomplete_directory_names_missing_parts(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError) as err:
        check_pipeline_dir(broken)
    assert "vae/" in str(err.value) and "transformer/*.safetensors" in str(err.value)


def test_full_preset_without_weights_names_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="Wan2.1-T2V-1.3B-Diffusers"):
        Generator.from_preset("full")


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="unknown sampling key"):
        SamplingConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="num_steps"):
        SamplingConfig(num_steps=0)
    few = SamplingConfig().few_step([1000, 757, 522])
    assert few.kind == "few_step" and few.num_steps == 3 and few.guidance_scale == 1.0


def test_vae_3d_convolutions_run_on_onednn_at_batch_one_and_match_pytorch_forward_and_backward():
    import copy

    gen = Generator.build_tiny(seed=0)
    latents = torch.randn(1, *gen.latent_shape(5, 16, 16)[1:], generator=torch.Generator().manual_seed(0))
    with torch.profiler.profile() as prof, torch.no_grad():
        gen.decode_latents(latents)
    ops = {e.key for e in prof.key_averages()}
    # PyTorch alone picks slow_conv3d for these small batch-1 inputs
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops

    # the plain PyTorch path: a deep copy (its methods bound to the copy) with the override removed
    plain = copy.deepcopy(gen.vae)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m._conv_forward.__self__ is m for m in convs)
    for m in convs:
        del m._conv_forward

    def decode_and_grads(vae):
        z = latents.clone().requires_grad_(True)
        out = vae.decode(z).sample
        out.square().mean().backward()
        return out.detach(), z.grad, vae.decoder.conv_in.weight.grad

    fast, reference = decode_and_grads(gen.vae), decode_and_grads(plain)
    for a, b in zip(fast, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps casting the convolutions
        assert torch.equal(gen.vae.decode(latents).sample, plain.decode(latents).sample)
