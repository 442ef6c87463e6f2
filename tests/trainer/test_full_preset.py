"""Full-scale configs exist and, on a machine without the weights, fail up front naming what is missing."""

import pytest
from typer.testing import CliRunner

from backend.cli import app
from trainer.config import load_train_config


@pytest.mark.parametrize("method", ["sft", "dmd", "mogan"])
def test_full_preset_names_missing_weights(method, tmp_path, monkeypatch):
    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path))
    args = ["train", method, "--preset", "full", "--run-dir", str(tmp_path / "run")]
    if method == "mogan":  # the full MoGAN preset starts from a DMD run (here one that does not exist either)
        args += ["--init", str(tmp_path / "dmd-run")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Wan2.1-T2V-1.3B-Diffusers" in res.output
    if method == "mogan":
        assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in res.output
        assert f"init: checkpoint {str(tmp_path / 'dmd-run')!r}" in res.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_incomplete_wan_directory_lists_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTIONLAB_WEIGHTS_DIR", str(tmp_path))
    wan = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    (wan / "transformer").mkdir(parents=True)
    (wan / "model_index.json").write_text("{}")
    res = CliRunner().invoke(app, ["train", "dmd", "--preset", "full", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2
    for part in ("transformer/config.json", "vae/", "text_encoder/", "tokenizer/"):
        assert part in res.output


def test_full_mogan_config_matches_the_paper():
    cfg = load_train_config("mogan", preset="full")
    m = cfg.method_cfg
    assert (cfg.data.num_frames, cfg.data.height, cfg.data.width) == (81, 480, 832)
    assert m.window_chunks == 12 and m.disc_blocks == 16 and m.head_blocks == [7, 13, 15]
    assert m.critic_steps == 4 and cfg.optim.lr == 1e-5 and cfg.batch_size == 16 and m.disc_batch_size == 64
    assert (m.lambda_gan, m.lambda_disc, m.lambda_r1, m.lambda_r2, m.sigma_n) == (0.5, 0.5, 0.3, 0.3, 0.01)
    assert cfg.steps == 800 and m.flow_estimator == "raft_large"


def test_full_random_generator_has_the_wan21_1_3b_architecture():
    from trainer.models.generator import Generator

    gen = Generator.build_full_random(device="meta")  # nothing allocated
    sizes = {
        name: sum(p.numel() for p in getattr(gen, name).parameters()) for name in ("transformer", "vae", "text_encoder")
    }
    # Wan2.1-T2V-1.3B: a 1.42B-parameter DiT, the 127M Wan-VAE, UMT5-XXL's 5.68B-parameter encoder
    assert round(sizes["transformer"] / 1e7) == 142 and round(sizes["vae"] / 1e6) == 127
    assert round(sizes["text_encoder"] / 1e7) == 568
    assert gen.latent_shape(81, 480, 832) == (1, 16, 21, 60, 104)  # 4x temporal, 8x spatial compression
    assert gen.sampling.max_text_len == 512 and gen.tokenizer.model_max_length == 512
