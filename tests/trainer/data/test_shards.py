"""Preprocessed shards: what is stored equals what the in-memory path computes, the reader's order (ranks, resume,
bounded prefetch), errors that name the bad file, resumable preprocessing, and the CLI."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from trainer.config import VALIDATION_PROMPTS, ConfigError, DataConfig, load_train_config
from trainer.data.preprocess import PreprocessConfig, preprocess
from trainer.data.shards import INDEX_FILE, ShardError, ShardSet, attach_shards, pad_texts
from trainer.data.streams import encode_clips, load_clips
from trainer.data.synthetic import sample_clips
from trainer.flow import build_flow_estimator
from trainer.methods import METHODS
from trainer.methods.mogan import DISC_PROMPT
from trainer.models.generator import TINY_VAE, Generator
from trainer.models.vae_window import window_frame_range

Z = TINY_VAE["z_dim"]  # latent channels

ALL_CLIP_FIELDS = ("latents", "text", "flow", "pixels")
# bf16 keeps 8 significant bits (round to nearest: relative error <= 2^-9), float16 11 bits (<= 2^-12); the
# atol covers values near zero and the float32 reference's own batch-size rounding (preprocessing encodes in
# batches of 8, encode_clips in 16).
BF16 = {"rtol": 2**-8, "atol": 1e-5}
F16 = {"rtol": 2**-11, "atol": 1e-4}
F32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir):
    """What the in-memory paths compute for the fixture's 12 clips and 10 prompts."""
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    clips, captions = load_clips(DataConfig(num_videos=12))
    video = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # [N, T, 3, H, W]
    # DMD's synthetic prompts: stream data.seed + 1, frames=2 (trainer/methods/dmd.py::_captions)
    prompts = [c[1] for c in sample_clips(10, 1, frames=2)]
    with torch.no_grad():
        return {
            "gen": gen,
            "clips": clips,
            "captions": captions,
            "video": video,
            "prompts": prompts,
            "latents": encode_clips(gen, clips, progress=False),
            "text": gen.encode_prompts(captions),
            "prompt_text": gen.encode_prompts(prompts),
            "flow": build_flow_estimator("horn_schunck")(video),
        }


@pytest.mark.parametrize("precision", ["full", "half"])
def test_stored_tensors_equal_the_in_memory_ones(precision, shards_dir, shards_full_dir, reference):
    root, tol, flow_tol = (shards_full_dir, F32, F32) if precision == "full" else (shards_dir, BF16, F16)
    shards = ShardSet(root)
    batch = shards.reader("clips", ALL_CLIP_FIELDS, seed=0, shuffle=False).next(12)
    assert batch["sample"].tolist() == list(range(12))
    assert batch["caption"] == reference["captions"]
    assert torch.equal(batch["pixels"], torch.from_numpy(reference["clips"]))
    torch.testing.assert_close(batch["latents"].float(), reference["latents"], **tol)
    torch.testing.assert_close(batch["flow"].float(), reference["flow"], **flow_tol)
    # caption embeddings: padded back to [N, max_text_len, D] with exact zeros where encode_prompts has them
    assert batch["text"].shape == reference["text"].shape
    assert torch.equal(batch["text"] == 0, reference["text"] == 0)
    torch.testing.assert_close(batch["text"], reference["text"], **tol)
    prompts = shards.reader("prompts", ("text",), seed=0, shuffle=False).next(10)
    assert prompts["caption"] == reference["prompts"]
    torch.testing.assert_close(prompts["text"], reference["prompt_text"], **tol)
    table = shards.prompt_table()
    gen = reference["gen"]
    for text in ("", DISC_PROMPT, *VALIDATION_PROMPTS):
        torch.testing.assert_close(
            pad_texts([table[text]], gen.sampling.max_text_len), gen.encode_prompts([text]), **tol
        )


def test_any_flow_window_is_a_slice_of_the_stored_clip_flow(shards_full_dir, reference):
    """MoGAN's real motion for a window (flow of the window's kept frames) = the stored whole-clip flow, sliced."""
    vae, video = reference["gen"].vae, reference["video"][:3]
    stored = ShardSet(shards_full_dir).reader("clips", ("flow",), seed=0, shuffle=False).next(3)["flow"]
    estimator = build_flow_estimator("horn_schunck")
    k, length = 5, 2  # the tiny VAE's 5 latent chunks, a window of 2
    for start in range(k - length + 1):
        f0, f1 = window_frame_range(vae, start, length)
        keep = 1 + (f1 - f0 - 1) // 4 * 4
        with torch.no_grad():
            direct = estimator(video[:, f0 : f0 + keep])
        torch.testing.assert_close(stored[:, f0 : f0 + keep - 1], direct, **F32)


# -- the reader ----------------------------------------------------------------------------------------------------


def test_ranks_see_disjoint_samples_and_together_the_epoch(shards_dir):
    shards = ShardSet(shards_dir)
    seen = []
    for rank in range(2):
        reader = shards.reader("clips", ("latents",), seed=3, rank=rank, world_size=2)
        a, b = reader.next(4), reader.next(2)
        assert a["position"].tolist() == [rank + 2 * i for i in range(4)]
        seen.append(a["sample"].tolist() + b["sample"].tolist())
        assert reader.state_dict() == {"position": 12}  # global samples consumed by both ranks
        reader.close()
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12))


def test_order_is_deterministic_and_reshuffled_every_epoch(shards_dir):
    shards = ShardSet(shards_dir)
    first = shards.reader("clips", ("latents",), seed=5).next(24)["sample"].tolist()
    again = shards.reader("clips", ("latents",), seed=5).next(24)["sample"].tolist()
    other = shards.reader("clips", ("latents",), seed=6).next(24)["sample"].tolist()
    assert first == again and first != other
    assert sorted(first[:12]) == sorted(first[12:]) == list(range(12))
    assert first[:12] != first[12:]


def test_resume_restores_the_position_exactly(shards_dir):
    shards = ShardSet(shards_dir)
    a = shards.reader("clips", ("latents", "text"), seed=1)
    a.next(5)
    state = a.state_dict()
    want = a.next(9)  # crosses the epoch boundary at 12
    b = shards.reader("clips", ("latents", "text"), seed=1)
    b.load_state_dict(state)
    got = b.next(9)
    assert state == {"position": 5}
    assert got["sample"].tolist() == want["sample"].tolist()
    assert torch.equal(got["latents"], want["latents"]) and torch.equal(got["text"], want["text"])
    a.load_state_dict(state)  # a running reader restarts from the restored position
    assert a.next(9)["sample"].tolist() == want["sample"].tolist()


def test_prefetch_keeps_at_most_two_shards_resident(shards_dir):
    reader = ShardSet(shards_dir).reader("clips", ("latents",), seed=0, prefetch=2)
    reader.next(1)
    time.sleep(0.5)  # time for the thread to load ahead as far as it may
    assert reader.resident() == 2, "one shard being consumed, one loaded ahead, no more"
    reader.close()


# -- errors name the file -------------------------------------------------------------------------------------------


def _rewrite_latents(path, fn):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["latents"] = fn(tensors["latents"])
    save_file(tensors, str(path), metadata=meta)


def _set_index(root, edit):
    index = json.loads((root / INDEX_FILE).read_text())
    edit(index)
    (root / INDEX_FILE).write_text(json.dumps(index))


def _fix_bytes(root, name):
    def edit(index):
        for e in index["clips"]["shards"]:
            if e["file"] == name:
                e["bytes"] = (root / name).stat().st_size

    _set_index(root, edit)


def _truncate(root):
    p = root / "clips-00001.safetensors"
    p.write_bytes(p.read_bytes()[:5000])


def _wrong_dtype(root):
    _rewrite_latents(root / "clips-00000.safetensors", lambda t: t.float())
    _fix_bytes(root, "clips-00000.safetensors")


def _wrong_shape(root):
    _rewrite_latents(root / "clips-00000.safetensors", lambda t: t[..., :4].contiguous())
    _fix_bytes(root, "clips-00000.safetensors")


def _other_config(root):
    p = root / "clips-00002.safetensors"
    tensors = load_file(str(p))
    save_file(tensors, str(p), metadata={"config_hash": "0123456789abcdef", "count": "4"})
    _fix_bytes(root, "clips-00002.safetensors")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, r"clips-00001\.safetensors: \d+ bytes, .*index\.json expects \d+"),
        (lambda r: (r / "clips-00002.safetensors").unlink(), r"clips-00002\.safetensors is missing"),
        (
            lambda r: _set_index(r, lambda i: i["clips"]["shards"].pop(1)),
            r"shard clips-00002\.safetensors starts at sample 8, expected 4",
        ),
        (_wrong_dtype, rf"clips-00000\.safetensors: tensor 'latents' is F32 .*expected BF16 \[4, {Z}, 5, 8, 8\]"),
        (
            _wrong_shape,
            (
                rf"clips-00000\.safetensors: tensor 'latents' is BF16 \[4, {Z}, 5, 8, 4\], expected BF16 "
                rf"\[4, {Z}, 5, 8, 8\]"
            ),
        ),
        (_other_config, r"clips-00002\.safetensors was written by another preprocessing config"),
        (lambda r: (r / INDEX_FILE).unlink(), r"index\.json not found: .* not a complete preprocessed directory"),
    ],
    ids=["truncated", "missing", "index-entry-missing", "dtype", "shape", "other-config", "no-index"],
)
def test_a_bad_shard_is_refused_by_name(damage, message, shards_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shards_dir, root)
    damage(root)
    with pytest.raises(ShardError, match=message):
        ShardSet(root)


def test_a_shard_damaged_while_training_fails_by_name(shards_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shards_dir, root)
    reader = ShardSet(root).reader("clips", ("latents",), seed=0, shuffle=False, prefetch=1)
    p = root / "clips-00001.safetensors"
    p.write_bytes(p.read_bytes()[:3000])
    reader.next(4)  # shard 0
    with pytest.raises(ShardError, match=r"clips-00001\.safetensors"):
        reader.next(4)


def test_shards_for_another_model_or_clip_shape_are_refused(shards_dir, tiny_pipeline_dir):
    cfg = load_train_config(
        "sft", {"init": str(tiny_pipeline_dir), "data": {"source": "shards", "root": str(shards_dir), "height": 64}}
    )
    gen = Generator.from_pretrained(tiny_pipeline_dir, text_encoder=False)
    with pytest.raises(
        ConfigError,
        match=r"data\.height.*64, but the clips in .*index\.json were preprocessed "
        r"with height=32",
    ):
        attach_shards(gen, cfg, latents=True)
    cfg.data.height = 32
    other = Generator.build_tiny(seed=1)  # another VAE
    with pytest.raises(ShardError, match=r"index\.json: latents were encoded by another VAE"):
        attach_shards(other, cfg, latents=True)
    cfg.validation_every, cfg.validation_prompts = 10, ["a prompt nobody preprocessed"]
    with pytest.raises(ConfigError, match=r"validation_prompts.*a prompt nobody preprocessed"):
        attach_shards(gen, cfg)


def test_generator_without_text_encoder(tiny_pipeline_dir, shards_dir, tmp_path):
    gen = Generator.from_pretrained(tiny_pipeline_dir, text_encoder=False)
    assert gen.text_encoder is None
    with pytest.raises(ValueError, match=r"no text encoder loaded.*'a red square'"):
        gen.encode_prompts(["a red square"])
    gen.use_prompt_table(ShardSet(shards_dir).prompt_table())
    full = Generator.from_pretrained(tiny_pipeline_dir)
    torch.testing.assert_close(gen.encode_prompts([DISC_PROMPT, ""]), full.encode_prompts([DISC_PROMPT, ""]), **BF16)
    gen.save_pretrained(tmp_path / "export")  # the text encoder's files are copied from the source directory
    again = Generator.from_pretrained(tmp_path / "export")
    for a, b in zip(again.text_encoder.parameters(), full.text_encoder.parameters()):
        assert torch.equal(a, b)


# -- preprocessing ----------------------------------------------------------------------------------------------


def _stamps(root):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob("*.safetensors")}


def test_preprocessing_splits_over_ranks_and_resumes(tiny_pipeline_dir, tmp_path):
    cfg = PreprocessConfig(model=str(tiny_pipeline_dir), num_videos=6, num_prompts=3, shard_size=2)
    out = tmp_path / "pre"
    r0 = preprocess(cfg, out, rank=0, world=2, progress=False)
    assert r0["index"] is None and not (out / INDEX_FILE).exists()
    assert sorted(r0["written"]) == [
        "clips-00000.safetensors",
        "clips-00002.safetensors",
        "prompts-00000.safetensors",
        "special.safetensors",
    ]
    assert sorted(r0["pending"]) == ["clips-00001.safetensors", "prompts-00001.safetensors"]
    with pytest.raises(ShardError, match="index.json not found"):
        ShardSet(out)
    before = _stamps(out)
    r1 = preprocess(cfg, out, rank=1, world=2, progress=False)
    assert r1["index"] and sorted(r1["written"]) == ["clips-00001.safetensors", "prompts-00001.safetensors"]
    after = _stamps(out)
    assert all(after[name] == stamp for name, stamp in before.items()), "rank 0's shards were rewritten"
    assert ShardSet(out).count("clips") == 6

    # a lost shard and a temp file of a killed writer: only the lost shard is written again
    (out / "clips-00001.safetensors").unlink()
    (out / ".clips-00002.safetensors.tmp-999").write_bytes(b"partial")
    kept = _stamps(out)
    again = preprocess(cfg, out, progress=False)
    assert again["written"] == ["clips-00001.safetensors"]
    assert sorted(again["skipped"]) == [
        "clips-00000.safetensors",
        "clips-00002.safetensors",
        "prompts-00000.safetensors",
        "prompts-00001.safetensors",
    ]
    assert all(_stamps(out)[name] == stamp for name, stamp in kept.items())
    ShardSet(out)

    # another config (shard size) rewrites every shard, and the directory's index describes the new one
    new = preprocess(
        PreprocessConfig(model=str(tiny_pipeline_dir), num_videos=6, num_prompts=3, shard_size=3), out, progress=False
    )
    assert new["config_hash"] != again["config_hash"]
    assert ShardSet(out).index["clips"]["shard_size"] == 3


def test_cli_preprocesses_a_video_folder(tiny_pipeline_dir, tmp_path):
    from backend.cli import app
    from trainer.data.synthetic import generate_dataset

    folder = generate_dataset(tmp_path / "videos", n=3, seed=7)
    (tmp_path / "prompts.txt").write_text("# generation prompts\na red square moves left\n\na blue circle grows\n")
    out = tmp_path / "shards"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "preprocess",
            str(out),
            "--model",
            str(tiny_pipeline_dir),
            "--source",
            "folder",
            "--root",
            str(folder),
            "--prompts-file",
            str(tmp_path / "prompts.txt"),
            "--shard-size",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "index:" in res.output
    shards = ShardSet(out)
    assert shards.count("clips") == 3 and shards.count("prompts") == 2
    data = DataConfig(source="folder", root=str(folder))
    clips, captions = load_clips(data)
    batch = shards.reader("clips", ("latents",), seed=0, shuffle=False).next(3)
    assert batch["caption"] == captions
    latents = encode_clips(Generator.from_pretrained(tiny_pipeline_dir), clips, progress=False)
    torch.testing.assert_close(batch["latents"].float(), latents, **BF16)
    assert shards.reader("prompts", ("text",), seed=0, shuffle=False).next(2)["caption"] == [
        "a red square moves left",
        "a blue circle grows",
    ]

    # these shards have neither flow nor frames: the methods that need them say which option was missing
    needs = (
        ("mogan", "teacher", "MoGAN reads the real clips' optical flow: preprocess with --flow horn_schunck"),
        ("dfdpo", "init", "DF-DPO edits the win clips at train time: preprocess with --pixels"),
    )
    for method, ref, message in needs:
        cfg = load_train_config(method, {ref: str(tiny_pipeline_dir), "data": {"source": "shards", "root": str(out)}})
        m = METHODS[method](cfg, torch.device("cpu"), torch.float32)
        with pytest.raises(ShardError, match=f"index.json: the clips have no .*; {message}"):
            m.setup_data(0, 1)

    bad = runner.invoke(
        app, ["data", "preprocess", str(tmp_path / "x"), "--model", str(tiny_pipeline_dir), "--source", "folder"]
    )
    assert bad.exit_code == 2 and "'root': required when source is 'folder'" in bad.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_pad_texts_restores_the_padded_form():
    rows = [torch.ones(3, 4), torch.full((1, 4), 2.0)]
    out = pad_texts(rows, 5)
    assert out.shape == (2, 5, 4)
    assert np.array_equal(out[:, :, 0].numpy(), [[1, 1, 1, 0, 0], [2, 0, 0, 0, 0]])
    with pytest.raises(ShardError, match="6 tokens, more than max_text_len=5"):
        pad_texts([torch.ones(6, 4)], 5)
