"""Tests for trainer.data.folder.VideoFolder: up-front validation that names every bad file, caption sources,
gif and frame-folder inputs, temporal sampling and resize/crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.data.folder import DatasetError, VideoFolder, resize_center_crop, temporal_indices
from trainer.data.video_io import write_video


def _ramp_video(t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """Frame i is a flat grey of value 10 * i + 20: the frame index can be read back from the pixels."""
    return np.broadcast_to((np.arange(t) * 10 + 20).astype(np.uint8)[:, None, None, None], (t, h, w, 3)).copy()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _faststart_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """An mp4 with the index (moov) before the data, as cameras and web encoders write them."""
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv444p"
        s.options = {"crf": "0", "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_loads_videos_with_jsonl_and_sidecar_captions(tmp_path):
    write_video(tmp_path / "a.mp4", _ramp_video(12))
    write_video(tmp_path / "sub" / "b.mp4", _ramp_video(10, 48, 64))
    (tmp_path / "sub" / "b.txt").write_text("  a blue ball\n bounces \n")
    write_video(tmp_path / "c.mp4", _ramp_video(10))
    (tmp_path / "c.txt").write_text("sidecar loses")
    _write_jsonl(
        tmp_path / "captions.jsonl",
        [{"file": "a.mp4", "caption": "a red square moves left"}, {"file": "c.mp4", "caption": "jsonl wins"}],
    )
    ds = VideoFolder(tmp_path, num_frames=8, height=16, width=16)
    assert len(ds) == 3
    items = {e.name: ds[i] for i, e in enumerate(ds.entries)}
    assert items["a.mp4"][1] == "a red square moves left"
    assert items["sub/b.mp4"][1] == "a blue ball bounces"
    assert items["c.mp4"][1] == "jsonl wins"
    video = items["sub/b.mp4"][0]
    assert video.shape == (8, 16, 16, 3) and video.dtype == np.uint8
    # "first" sampling: frames 0..7, whose grey levels are 20, 30, ..., 90
    np.testing.assert_allclose(video[:, 8, 8, 0], np.arange(8) * 10 + 20, atol=2)
    assert ds.entries[0].num_frames == 12 and ds.entries[0].fps == 8.0


def test_truncated_and_garbage_files_are_both_named(tmp_path):
    for name in ("good.mp4", "cut.mp4"):
        write_video(tmp_path / name, _ramp_video(9))
    data = (tmp_path / "cut.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    _write_jsonl(
        tmp_path / "captions.jsonl",
        [{"file": n, "caption": "x moves"} for n in ("good.mp4", "cut.mp4", "garbage.mp4")],
    )
    with pytest.raises(DatasetError) as exc:
        VideoFolder(tmp_path, num_frames=8, height=16, width=16)
    assert isinstance(exc.value, ValueError)
    assert [n for n, _ in exc.value.problems] == ["cut.mp4", "garbage.mp4"]
    assert "cut.mp4" in str(exc.value) and "garbage.mp4" in str(exc.value) and "good.mp4" not in str(exc.value)
    # skip_bad: the same two are left out and reported, the good one remains
    ds = VideoFolder(tmp_path, num_frames=8, height=16, width=16, skip_bad=True)
    assert len(ds) == 1 and ds.entries[0].name == "good.mp4"
    assert [n for n, _ in ds.skipped] == ["cut.mp4", "garbage.mp4"]


def test_truncation_that_still_decodes_is_caught_by_the_frame_count(tmp_path):
    import av

    _faststart_mp4(tmp_path / "clip.mp4", _ramp_video(20))
    with av.open(str(tmp_path / "clip.mp4")) as c:
        starts = [p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None]
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "clip.mp4").write_bytes(data[: starts[12]])  # cut cleanly between two frames
    (tmp_path / "clip.txt").write_text("a grey wall")
    with pytest.raises(DatasetError, match=r"clip\.mp4: truncated: the header declares 20 frames but only 12"):
        VideoFolder(tmp_path, num_frames=4, height=16, width=16)


def test_missing_caption_short_clip_and_missing_listed_file_are_named(tmp_path):
    write_video(tmp_path / "nocap.mp4", _ramp_video(9))
    write_video(tmp_path / "short.mp4", _ramp_video(3))
    (tmp_path / "short.txt").write_text("a short clip")
    write_video(tmp_path / "ok.mp4", _ramp_video(9))
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "empty.txt").write_text("")
    _write_jsonl(tmp_path / "captions.jsonl", [{"file": "gone.mp4", "caption": "never written"}])
    with pytest.raises(DatasetError) as exc:
        VideoFolder(tmp_path, num_frames=8, height=16, width=16)
    reasons = dict(exc.value.problems)
    assert set(reasons) == {"nocap.mp4", "short.mp4", "gone.mp4", "empty.mp4"}
    assert "no caption" in reasons["nocap.mp4"] and "nocap.txt" in reasons["nocap.mp4"]
    assert "too short: 3 frames" in reasons["short.mp4"] and "num_frames=8" in reasons["short.mp4"]
    assert "does not exist" in reasons["gone.mp4"]
    assert "empty.txt is empty" in reasons["empty.mp4"]  # empty caption and an unreadable file, both reported
    assert len(reasons["empty.mp4"].split("; ")) == 2


def test_gif_and_frame_folder_inputs_load(tmp_path):
    import imageio.v3 as iio

    write_video(tmp_path / "anim.gif", _ramp_video(6, 20, 30), fps=10)
    (tmp_path / "anim.txt").write_text("a gif")
    frames = _ramp_video(7, 24, 24)
    (tmp_path / "shots").mkdir()
    for i, f in enumerate(frames):
        iio.imwrite(tmp_path / "shots" / f"{i:03d}.png", f)
    (tmp_path / "shots" / "fps.txt").write_text("12")
    (tmp_path / "shots.txt").write_text("a frame folder")
    ds = VideoFolder(tmp_path, num_frames=5, height=16, width=16, sampling="stride")
    by_name = {e.name: (e, ds[i]) for i, e in enumerate(ds.entries)}
    assert set(by_name) == {"anim.gif", "shots"}
    (e_gif, (v_gif, c_gif)), (e_dir, (v_dir, c_dir)) = by_name["anim.gif"], by_name["shots"]
    assert (c_gif, c_dir) == ("a gif", "a frame folder")
    assert v_gif.shape == v_dir.shape == (5, 16, 16, 3)
    assert e_dir.fps == 12.0 and e_dir.num_frames == 7 and e_gif.num_frames == 6
    # "stride" over 7 frames -> indices 0, 2, 3, 5, 6 (grey 20, 40, 50, 70, 80); PNG is lossless
    assert v_dir[:, 0, 0, 0].tolist() == [20, 40, 50, 70, 80]


def test_stride_sampling_reads_the_right_frames_from_mp4(tmp_path):
    write_video(tmp_path / "long.mp4", _ramp_video(21))
    ds = VideoFolder(tmp_path, num_frames=5, height=32, width=32, captions={"long.mp4": "a ramp"}, sampling="stride")
    video, caption = ds[0]
    assert caption == "a ramp"
    np.testing.assert_allclose(video[:, 4, 4, 0], np.array([0, 5, 10, 15, 20]) * 10 + 20, atol=2)
    assert ds[-1][1] == "a ramp"
    with pytest.raises(IndexError):
        ds[1]


def test_temporal_indices_by_hand():
    assert temporal_indices(10, 4, "first").tolist() == [0, 1, 2, 3]
    assert temporal_indices(10, 4, "stride").tolist() == [0, 3, 6, 9]
    assert temporal_indices(17, 9, "stride").tolist() == list(range(0, 17, 2))
    assert temporal_indices(5, 5, "stride").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="fewer than num_frames=6"):
        temporal_indices(5, 6)


def test_resize_center_crop_keeps_the_center_and_aspect():
    # 64 x 128 frame: left quarter red, middle half green, right quarter blue -> 32 x 32 keeps only green
    f = np.zeros((1, 64, 128, 3), np.uint8)
    f[:, :, :32, 0] = 255
    f[:, :, 32:96, 1] = 255
    f[:, :, 96:, 2] = 255
    out = resize_center_crop(f, 32, 32)
    assert out.shape == (1, 32, 32, 3)
    assert (out[..., 1] == 255).all() and (out[..., [0, 2]] == 0).all()
    # upscaling a 2 x 2 checker to 4 x 8 (wider target): scale 4 -> 8 x 8, center rows 2..5 kept
    g = np.array([[[0] * 3, [200] * 3], [[200] * 3, [0] * 3]], np.uint8)[None]
    up = resize_center_crop(g, 4, 8)
    assert up.shape == (1, 4, 8, 3) and up[0, 0, 0, 0] < up[0, 0, 7, 0] and up[0, 3, 0, 0] > up[0, 3, 7, 0]


def test_bad_arguments_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolder(tmp_path, num_frames=0, height=8, width=8)
    with pytest.raises(ValueError, match="does not exist"):
        VideoFolder(tmp_path / "nope", num_frames=1, height=8, width=8)
    with pytest.raises(DatasetError, match="no videos found"):
        VideoFolder(tmp_path, num_frames=1, height=8, width=8)
