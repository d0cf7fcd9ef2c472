"""The NVDEC decoder's CPU-side parts, here: the plan's targets as the frame indices NVDEC is asked for, the NV12
handover through the one resize path, and the per-request fall-back to the CPU decoder. The hardware decode itself
is compared with the CPU decoder only where NVDEC runs (marked ``gpu``; skipped here, with the reason)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from model.video import DecodeLimits, encode_video, sample_clip, to_rgb
from model.video_io import open_container, video_stream
from model.video_nvdec import fill_from_nv12, nvdec_unavailable, sample_clip_nvdec, target_indices
from model.video_plan import plan_clip
from tests.model.test_video import ramp

NVDEC_WHY = nvdec_unavailable()
TOLERANCE = 2  # of 255, per channel: NVDEC's NV12 through libswscale against the CPU decoder's planar YUV


def as_nv12(frame: av.VideoFrame) -> np.ndarray:
    """A planar YUV 4:2:0 frame repacked as NV12 ((H * 3 / 2, W): Y, then U and V interleaved), as NVDEC outputs it."""
    yuv = frame.to_ndarray(format="yuv420p")  # (H * 3 / 2, W): Y, then U, then V planes
    h, w = frame.height, frame.width
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)  # (H/2, W/2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)  # (H/2, W/2)
    uv = np.stack([u, v], axis=-1).reshape(h // 2, w)  # (H/2, W) interleaved
    return np.concatenate([yuv[:h], uv])  # (H * 3 / 2, W)


@pytest.fixture(scope="module")
def gop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """B-frames and a keyframe every 6 frames: decode order differs from presentation order."""
    return encode_video(tmp_path_factory.mktemp("nvdec") / "gop6.mp4", ramp(30, 48, 64), "libx264", fps=10,
                        gop=6)


def every_frame(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))  # presentation order


@pytest.mark.parametrize("sampling", ["exact", "fast"])
def test_the_frames_asked_of_nvdec_by_index_are_the_cpu_decoders(gop: Path, sampling: str) -> None:
    limits = DecodeLimits(sampling=sampling, tolerance_s=0.3)  # type: ignore[arg-type]
    with open_container(str(gop)) as container:
        plan = plan_clip(container, video_stream(container, limits), 8, limits, 0.0)
    frames = every_frame(gop)
    scaler = VideoReformatter()
    by_index = {i: to_rgb(frames[i], 16, scaler) for i in target_indices(plan)}
    keys = plan.index.keys
    order = [by_index[int(np.searchsorted(keys, t))] for t in plan.targets]
    np.testing.assert_array_equal(np.stack(order), sample_clip(gop, 8, 16, limits).frames)


def test_an_nv12_picture_written_into_the_streams_frame_resizes_to_the_cpu_decoders_bytes(gop: Path) -> None:
    frames = every_frame(gop)
    template = every_frame(gop)[0]  # what the NVDEC path writes into: the stream's first frame, decoded on the CPU
    for frame in frames[1:6]:
        nv12 = as_nv12(frame)
        padded = np.zeros((nv12.shape[0] + 24, nv12.shape[1] + 16), np.uint8)  # a decoder's coded size: 16 rows more
        h = frame.height
        padded[:h, : frame.width], padded[h + 16 : h + 16 + h // 2, : frame.width] = nv12[:h], nv12[h:]
        for picture in (nv12, padded):
            np.testing.assert_array_equal(to_rgb(fill_from_nv12(template, picture), 24), to_rgb(frame, 24))
    with pytest.raises(ValueError, match="cannot hold"):
        fill_from_nv12(template, np.zeros((10, 10), np.uint8))


def test_what_nvdec_does_not_take_is_decoded_on_the_cpu(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.webm", ramp(8, 32, 48), "libvpx")  # VP8: not in NVDEC_CODECS
    clip = sample_clip_nvdec(str(path), 4, 16)
    assert clip.backend == "cpu"
    np.testing.assert_array_equal(clip.frames, sample_clip(str(path), 4, 16).frames)


def test_hostile_input_keeps_its_stable_codes(gop: Path) -> None:
    from model.video import DecodeError

    with pytest.raises(DecodeError) as empty:
        sample_clip_nvdec(b"", 4, 16)
    with pytest.raises(DecodeError) as text:
        sample_clip_nvdec(b"not a video at all" * 100, 4, 16)
    assert (empty.value.code, text.value.code) == ("not_a_video", "not_a_video")


@pytest.mark.gpu
@pytest.mark.skipif(NVDEC_WHY is not None, reason=f"NVDEC cannot run here: {NVDEC_WHY}")
@pytest.mark.parametrize("sampling", ["exact", "fast"])
def test_nvdec_gives_the_cpu_decoders_frames_within_the_tolerance(gop: Path, sampling: str) -> None:
    limits = DecodeLimits(sampling=sampling, tolerance_s=0.3)  # type: ignore[arg-type]
    for source in (str(gop), gop.read_bytes()):
        gpu, cpu = sample_clip_nvdec(source, 8, 16, limits), sample_clip(source, 8, 16, limits)
        assert (gpu.backend, gpu.sampling, gpu.max_offset_s) == ("nvdec", cpu.sampling, cpu.max_offset_s)
        assert int(np.abs(gpu.frames.astype(np.int16) - cpu.frames).max()) <= TOLERANCE


@pytest.mark.skipif(NVDEC_WHY is None, reason="NVDEC runs here: a truncated stream reaches the hardware decoder")
@pytest.mark.parametrize("sampling", ["exact", "fast"])
def test_a_truncated_upload_falls_back_to_what_the_cpu_decoder_gives_it(gop: Path, sampling: str) -> None:
    """Cut mid-stream, where NVDEC cannot run: the fall-back answers as the CPU decoder does, frames or stable
    code."""
    from model.video import DecodeError

    limits = DecodeLimits(sampling=sampling, tolerance_s=0.3)  # type: ignore[arg-type]
    data = gop.read_bytes()
    for cut in (data[: len(data) * 2 // 3], data[: len(data) // 3]):
        try:
            expected = sample_clip(cut, 8, 16, limits)
        except DecodeError as exc:
            with pytest.raises(DecodeError) as got:
                sample_clip_nvdec(cut, 8, 16, limits)
            assert got.value.code == exc.code
            continue
        np.testing.assert_array_equal(sample_clip_nvdec(cut, 8, 16, limits).frames, expected.frames)
