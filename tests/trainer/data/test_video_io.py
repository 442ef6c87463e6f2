"""Tests for trainer.data.video_io's in-memory mp4 encoding and its index-first layout (``moov_first``)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from trainer.data.video_io import _boxes, _encode_av, encode_mp4, moov_first, read_video, write_video


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def _offsets_box(kind: bytes, offsets: list[int]) -> bytes:
    width = 4 if kind == b"stco" else 8
    return _box(
        kind, b"\0\0\0\0" + len(offsets).to_bytes(4, "big") + b"".join(o.to_bytes(width, "big") for o in offsets)
    )


def _kinds(data: bytes) -> list[bytes]:
    return [k for k, *_ in _boxes(data)]


def _frames(t: int = 9, h: int = 15, w: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def test_web_mp4_puts_the_index_first_and_decodes_like_the_muxers_own_layout(tmp_path):
    frames = _frames()
    buf = io.BytesIO()
    _encode_av(buf, frames, 8.0, "web")
    index_last = buf.getvalue()
    assert _kinds(index_last).index(b"moov") > _kinds(index_last).index(b"mdat")
    index_first = moov_first(index_last)
    kinds = _kinds(index_first)
    assert kinds[:2] == [b"ftyp", b"moov"] and kinds.index(b"moov") < kinds.index(b"mdat")
    assert len(index_first) == len(index_last)
    (tmp_path / "last.mp4").write_bytes(index_last)
    (tmp_path / "first.mp4").write_bytes(index_first)
    a, fps_a = read_video(tmp_path / "last.mp4")
    b, fps_b = read_video(tmp_path / "first.mp4")
    assert np.array_equal(a, b) and fps_a == fps_b == 8.0  # the chunk offsets were moved with the index
    assert moov_first(index_first) == index_first  # already index first: unchanged


def test_encode_mp4_is_what_write_video_stores(tmp_path):
    frames = _frames(5, 16, 16)
    data = encode_mp4(frames, 8.0, "web")
    assert _kinds(data)[1] == b"moov"
    path = write_video(tmp_path / "v.mp4", frames, fps=8.0, quality="web")
    assert _kinds(path.read_bytes())[1] == b"moov"
    decoded, _ = read_video(path)
    (tmp_path / "mem.mp4").write_bytes(data)
    assert np.array_equal(decoded, read_video(tmp_path / "mem.mp4")[0])
    lossless = encode_mp4(frames, 8.0, "lossless")  # training data: left in the muxer's layout
    assert _kinds(lossless).index(b"moov") > _kinds(lossless).index(b"mdat")
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(frames.astype(np.float32), 8.0)


def test_moov_first_shifts_32_and_64_bit_chunk_offsets_of_every_track():
    ftyp = _box(b"ftyp", b"isom\0\0\0\0")
    mdat = _box(b"mdat", bytes(range(40)))
    first_sample = len(ftyp) + 8
    stbl_a = _box(b"stbl", _offsets_box(b"stco", [first_sample, first_sample + 10]))
    stbl_b = _box(b"stbl", _offsets_box(b"co64", [first_sample + 20]))
    trak = lambda stbl: _box(b"trak", _box(b"mdia", _box(b"minf", stbl)))
    moov = _box(b"moov", _box(b"mvhd", b"\0" * 12) + trak(stbl_a) + trak(stbl_b))
    out = moov_first(ftyp + mdat + moov)
    assert out[: len(ftyp)] == ftyp and out[len(ftyp) + len(moov) :] == mdat
    shifted = out[len(ftyp) : len(ftyp) + len(moov)]
    for old, width in ((first_sample, 4), (first_sample + 10, 4), (first_sample + 20, 8)):
        new = (old + len(moov)).to_bytes(width, "big")
        assert new in shifted and out[old + len(moov) : old + len(moov) + 1] == (ftyp + mdat)[old : old + 1]


def test_moov_first_names_a_broken_box():
    ftyp = _box(b"ftyp", b"isom\0\0\0\0")
    broken = (500).to_bytes(4, "big") + b"mdat" + b"\0" * 10  # claims 500 bytes, has 18
    with pytest.raises(ValueError, match=r"mp4: box b'mdat' at byte 16 has an invalid size 500"):
        moov_first(ftyp + broken)
