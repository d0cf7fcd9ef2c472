"""The frames path samples and resizes exactly as the decoder does: frames sent decoded give the model the pixels
the server's own decode of the same video gives it (a lossless RGB video, so that the codec changes nothing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.video import decode_clip, encode_video
from service.classify.frames import model_frames, sample_indices
from tests.service.conftest import ramp


@pytest.mark.parametrize(("count", "num_frames"), [(4, 4), (12, 4), (13, 4), (20, 8), (7, 3), (100, 16)])
def test_sample_indices_are_the_decoders_targets(tmp_path: Path, count: int, num_frames: int) -> None:
    frames = np.zeros((count, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(count, dtype=np.uint8)[:, None, None] * 2  # frame i is red level 2i
    video = encode_video(tmp_path / "levels.mov", frames, "png", pix_fmt="rgb24")
    decoded = decode_clip(video, num_frames, 16)  # (T, 16, 16, 3)
    assert [int(f[0, 0, 0]) // 2 for f in decoded] == sample_indices(count, num_frames)


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 48), (32, 32), (90, 160)])
def test_model_frames_equal_the_decoders_frames(tmp_path: Path, height: int, width: int) -> None:
    raw = ramp(10, height, width, seed=3)  # (T_in, H, W, 3)
    video = encode_video(tmp_path / "clip.mov", raw, "png", pix_fmt="rgb24")
    expected = decode_clip(video, 4, 32)  # (4, 32, 32, 3)
    got = model_frames(raw, 4, 32)
    assert got.shape == (4, 32, 32, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_model_frames_at_the_models_size_and_count_are_the_input_itself() -> None:
    body = bytearray(ramp(4, 32, 32, seed=5).tobytes())  # a request body's bytes: a writable buffer
    frames = np.frombuffer(memoryview(body), np.uint8).reshape(4, 32, 32, 3)  # (T, S, S, 3), as oip_tensors.array
    got = model_frames(frames, 4, 32)
    assert got is frames  # no copy


def test_model_frames_copy_a_read_only_input_and_gather_a_longer_one() -> None:
    raw = ramp(8, 32, 32, seed=6)  # (8, S, S, 3)
    read_only = np.frombuffer(raw.tobytes(), np.uint8).reshape(raw.shape)  # bytes: not writable
    same = model_frames(read_only[:4], 4, 32)
    assert same is not read_only and same.flags.writeable
    np.testing.assert_array_equal(same, raw[:4])
    longer = model_frames(raw, 4, 32)  # (4, S, S, 3): frames 1, 3, 5, 7
    assert not np.shares_memory(longer, raw)
    np.testing.assert_array_equal(longer, raw[sample_indices(8, 4)])
    assert sample_indices(8, 4) == [1, 3, 5, 7]
