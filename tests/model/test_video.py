"""The video decoder on real files encoded by PyAV: codecs, containers, sampling, seek vs scan, rotation, limits."""

from __future__ import annotations

import dataclasses
import io
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model.video import DecodeError, DecodeLimits, decode_clip, encode_video, plan_clip, sample_clip


def ramp(frames: int, height: int, width: int) -> np.ndarray:
    """Frame t is uniformly red = 15 * t, with a green marker at the top centre: (T, H, W, 3)."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 0] = (np.arange(frames, dtype=np.uint8) * 15)[:, None, None]
    video[:, : height // 4, width // 2 - 4 : width // 2 + 4, 1] = 255
    return video


@pytest.mark.parametrize(
    ("name", "codec"),
    [("a.mp4", "libx264"), ("b.webm", "libvpx-vp9"), ("c.mkv", "libsvtav1"), ("d.avi", "mpeg4"), ("e.avi", "mjpeg")],
)
def test_codecs_and_containers_sample_segment_centres(tmp_path: Path, name: str, codec: str) -> None:
    path = encode_video(tmp_path / name, ramp(16, 48, 64), codec)
    clip = decode_clip(path, num_frames=4, size=32)
    assert clip.shape == (4, 32, 32, 3)
    assert clip.dtype == np.uint8
    # 16 frames, 4 segments: the frames at the segment centres are 2, 6, 10, 14 (red 30, 90, 150, 210)
    np.testing.assert_allclose(clip[:, 24, 16, 0], [30, 90, 150, 210], atol=8)


@pytest.mark.parametrize("name", ["gop4.mp4", "gop4.mkv", "gop4.ts", "gop4.flv", "gop4.avi"])
def test_seek_and_scan_return_the_same_frames(tmp_path: Path, name: str) -> None:
    path = encode_video(tmp_path / name, ramp(24, 32, 32), "libx264", gop=4)  # with B-frames
    seek = decode_clip(path, 6, 32, DecodeLimits(method="seek"))  # TS, FLV and AVI always scan
    scan = decode_clip(path, 6, 32, DecodeLimits(method="scan"))
    np.testing.assert_array_equal(seek, scan)
    np.testing.assert_allclose(scan[:, 16, 16, 0], [30, 90, 150, 210, 270 % 256, 330 % 256], atol=10)
    np.testing.assert_array_equal(decode_clip(path.read_bytes(), 6, 32), scan)  # in-memory source, same frames


def test_cost_model_scans_long_gops_and_seeks_when_every_frame_is_a_keyframe(tmp_path: Path) -> None:
    long_gop = encode_video(tmp_path / "long.mp4", ramp(96, 32, 32), "libx264", gop=250)
    intra = encode_video(tmp_path / "intra.mkv", ramp(96, 32, 32), "mjpeg")
    with av.open(str(long_gop)) as container:
        assert plan_clip(container, container.streams.video[0], 4, DecodeLimits()).method == "scan"
    with av.open(str(intra)) as container:
        plan = plan_clip(container, container.streams.video[0], 4, DecodeLimits())
    assert (plan.method, plan.frames_in_stream) == ("seek", 96)


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    video = ramp(4, 32, 64)  # landscape, marker at the top centre
    upright = decode_clip(encode_video(tmp_path / "r0.mp4", video, "libx264"), 2, 32)
    turned = decode_clip(encode_video(tmp_path / "r90.mp4", video, "libx264", rotation=90), 2, 32)
    rows, cols = np.nonzero(upright[0, :, :, 1] > 128)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 7, 12, 19)
    rows, cols = np.nonzero(turned[0, :, :, 1] > 128)  # a quarter turn counter-clockwise: the marker is on the left
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 19, 0, 7)


def test_odd_sized_frames_are_resized_and_centre_cropped(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "odd.mkv", ramp(8, 37, 45), "libx264", pix_fmt="yuv444p")
    clip = decode_clip(path, 4, 24)
    assert clip.shape == (4, 24, 24, 3)


def write_still(path: Path, codec: str, pix_fmt: str) -> Path:
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 32, pix_fmt  # type: ignore[union-attr]
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        container.mux(stream.encode(frame))  # type: ignore[union-attr,arg-type]
        container.mux(stream.encode(None))  # type: ignore[union-attr]
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_bad_inputs_raise_stable_codes(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    whole = encode_video(tmp_path / "whole.mp4", ramp(16, 32, 32), "libx264").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # moov (at the end) is lost
    fast = encode_video(
        tmp_path / "fast.mp4", np.random.default_rng(0).integers(0, 255, (16, 64, 64, 3), np.uint8), "libx264",
        container_options={"movflags": "faststart"},
    ).read_bytes()
    (tmp_path / "cut_fast.mp4").write_bytes(fast[: len(fast) * 6 // 10])  # index intact, data cut
    cases = {
        "empty.mp4": "not_a_video",
        "text.mp4": "not_a_video",
        "cut.mp4": "undecodable",
        "cut_fast.mp4": "undecodable",
        "audio.m4a": "no_video_stream",
        "still.png": "not_a_video",
        "still.jpg": "not_a_video",
    }
    write_audio_only(tmp_path / "audio.m4a")
    write_still(tmp_path / "still.png", "png", "rgb24")
    write_still(tmp_path / "still.jpg", "mjpeg", "yuvj420p")
    codes = {}
    for name in cases:
        with pytest.raises(DecodeError) as info:
            decode_clip(tmp_path / name, 4, 32)
        codes[name] = info.value.code
    assert codes == cases


@pytest.mark.parametrize("sampling", ["exact", "fast", "legacy"])
def test_limits(tmp_path: Path, sampling: str) -> None:
    path = encode_video(tmp_path / "v.mp4", ramp(16, 32, 48), "libx264", fps=8)  # 2 s
    cases = {
        "too_large": DecodeLimits(max_bytes=100),
        "frame_too_large": DecodeLimits(max_pixels_per_frame=32 * 47),
        "too_long": DecodeLimits(max_duration_s=1.5),
        "decode_timeout": DecodeLimits(max_decode_s=0.0),
    }
    codes = {}
    for expected, limits in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_clip(path, 4, 32, dataclasses.replace(limits, sampling=sampling))  # type: ignore[arg-type]
        codes[expected] = info.value.code
    assert codes == {code: code for code in cases}
    with pytest.raises(DecodeError) as info:  # packets in the stream bound the index
        decode_clip(path, 4, 32, DecodeLimits(max_frames=15, sampling=sampling))  # type: ignore[arg-type]
    assert info.value.code == "too_long"
    assert decode_clip(path, 4, 32, DecodeLimits(max_duration_s=2.0)).shape == (4, 32, 32, 3)


def test_decode_error_pickles_with_its_code() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(DecodeError("zero_frames", "nothing")))
    assert (error.code, str(error)) == ("zero_frames", "nothing")


def raw_h264(frames: np.ndarray) -> bytes:
    """(T, H, W, 3) frames as a raw Annex B H.264 stream (no container: nothing but the SPS states the size)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    return buf.getvalue()


def test_a_stream_that_switches_to_larger_frames_mid_way_is_refused(tmp_path: Path) -> None:
    small, large = ramp(10, 64, 64), ramp(10, 128, 128)
    path = tmp_path / "switch.h264"
    path.write_bytes(raw_h264(small) + raw_h264(large))  # the header (first SPS) says 64x64
    limits = DecodeLimits(max_pixels_per_frame=100 * 100)
    with pytest.raises(DecodeError) as info:
        decode_clip(path, 4, 32, limits)
    assert info.value.code == "frame_too_large" and "128x128" in str(info.value)
    assert decode_clip(path, 4, 32).shape == (4, 32, 32, 3)  # within the default limit it decodes


def test_two_frames_far_apart_last_as_long_as_their_span(tmp_path: Path) -> None:
    path = tmp_path / "far.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i, pts in enumerate((0, 590)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 100, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        plan = plan_clip(container, container.streams.video[0], 4, DecodeLimits())
    assert 590.0 <= plan.duration_s <= 591.0  # not 1180 s (the gap counted twice)
    assert decode_clip(path, 4, 32, DecodeLimits(max_duration_s=600)).shape == (4, 32, 32, 3)


def outcome(path: Path, sampling: str, num_frames: int = 6) -> np.ndarray | str:
    """The clip's frames, or the ``DecodeError`` code: anything else (a crash, another exception) fails the test."""
    try:
        clip = sample_clip(path, num_frames, 32, DecodeLimits(sampling=sampling))  # type: ignore[arg-type]
    except DecodeError as exc:
        return exc.code
    assert clip.frames.shape == (num_frames, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.sampling == sampling
    return clip.frames


@pytest.mark.parametrize("name", ["bframes.mp4", "nob.mp4", "bframes.mkv", "bframes.ts", "hevc.mp4"])
def test_exact_sampling_decodes_only_targets_and_their_references_and_returns_the_full_decodes_frames(
    tmp_path: Path, name: str
) -> None:
    codec, options = ("libx265", {"x265-params": "log-level=error"}) if name.startswith("hevc") else (
        "libx264", {"bf": "0"} if name.startswith("nob") else {})
    path = encode_video(tmp_path / name, ramp(64, 32, 32), codec, gop=16, options=options)
    old = sample_clip(path, 8, 32, DecodeLimits(sampling="legacy"))
    new = sample_clip(path, 8, 32)
    with av.open(str(path)) as container:
        plan = plan_clip(container, container.streams.video[0], 8, DecodeLimits())
    np.testing.assert_array_equal(new.frames, old.frames)
    assert (new.sampling, new.max_offset_s, old.sampling) == ("exact", 0.0, "legacy")
    assert new.frames_decoded <= plan.decode_cost  # the planner counts what the decoder will decode
    assert new.frames_decoded < old.frames_decoded  # frames that nothing needs are skipped (here: B and GOP tails)
    assert all(plan.index is not None and plan.index.keyframe[run.start] for run in plan.runs)


def test_fast_sampling_takes_keyframes_within_the_tolerance_and_exact_frames_beyond_it(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "gop4.mp4", ramp(32, 32, 32), "libx264", fps=8, gop=4, options={"bf": "0"})
    exact = sample_clip(path, 4, 32)
    fast = sample_clip(path, 4, 32, DecodeLimits(sampling="fast", tolerance_s=0.25))  # 2 frames either side
    # targets 4, 12, 20, 28 are keyframes themselves: fast takes them, nothing moves
    np.testing.assert_array_equal(fast.frames, exact.frames)
    assert (fast.sampling, fast.max_offset_s) == ("fast", 0.0)
    clip = sample_clip(path, 8, 32, DecodeLimits(sampling="fast", tolerance_s=0.25))
    # targets 2, 6, ... 30 sit halfway between keyframes 0, 4, ...: each moves by 2 frames (0.25 s) to one
    np.testing.assert_allclose(clip.frames[:, 16, 16, 0], [0, 60, 120, 180, 240, 44, 104, 164], atol=8)
    assert clip.max_offset_s == 0.25 and clip.frames_decoded == 8
    near = sample_clip(path, 8, 32, DecodeLimits(sampling="fast", tolerance_s=0.15))  # P-frame 1 frame away
    assert near.max_offset_s == 0.125 and near.frames_decoded < sample_clip(path, 8, 32).frames_decoded
    none = sample_clip(path, 8, 32, DecodeLimits(sampling="fast", tolerance_s=0.0))  # nothing near: exact frames
    np.testing.assert_array_equal(none.frames, sample_clip(path, 8, 32).frames)
    assert (none.sampling, none.max_offset_s) == ("fast", 0.0)


def test_a_long_video_is_decoded_by_seeking_at_a_cost_and_memory_bounded_by_the_clip(tmp_path: Path) -> None:
    short = encode_video(tmp_path / "short.mp4", ramp(120, 16, 16), "libx264", fps=30, gop=30)
    long = encode_video(tmp_path / "long.mp4", np.tile(ramp(120, 16, 16), (20, 1, 1, 1)), "libx264", fps=30, gop=30)
    with av.open(str(long)) as container:
        plan = plan_clip(container, container.streams.video[0], 16, DecodeLimits())
    assert (plan.method, plan.frames_in_stream, plan.duration_s) == ("seek", 2400, 80.0)
    assert len(plan.runs) == 16 and plan.decode_cost <= 16 * 30  # each target from its keyframe, nothing between
    peaks = []
    for path in (short, long):
        sample_clip(path, 16, 32)  # warm: imports and caches out of the measurement
        tracemalloc.start()
        clip = sample_clip(path, 16, 32)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert clip.frames_decoded <= plan.decode_cost
    assert peaks[1] < peaks[0] + 512 * 1024  # 20x the video: the index grows by a few integers per packet


def drop_references(src: Path, dst: Path, after: int) -> Path:
    """``src`` remuxed without every other non-key H.264 reference packet from packet ``after`` on."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        dropped = 0
        for i, packet in enumerate(p for p in inp.demux(ist) if p.size):
            header = bytes(packet)[4]  # the first NAL unit's header (4-byte lengths; x264 starts P-frames with it)
            if i >= after and not packet.is_keyframe and header & 0x1F == 1 and header & 0x60:
                dropped += 1
                if dropped % 2:
                    continue
            packet.stream = ost
            out.mux(packet)
    return dst


def two_encoders(path: Path, first: np.ndarray, second: np.ndarray) -> Path:
    """One MPEG-TS stream: ``first`` with B-frames and 6-frame GOPs, then ``second`` from a fresh encoder with no
    B-frames and 20-frame GOPs (new parameter sets mid-stream)."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25, options={"bf": "3", "g": "6"})
        stream.width, stream.height, stream.pix_fmt = first.shape[2], first.shape[1], "yuv420p"  # type: ignore[union-attr]
        for image in first:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))  # type: ignore[union-attr]
        out.mux(stream.encode(None))  # type: ignore[union-attr]
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = second.shape[2], second.shape[1], "yuv420p"  # type: ignore[attr-defined]
        ctx.time_base, ctx.options = Fraction(1, 25), {"bf": "0", "g": "20"}
        shift = int(len(first) / Fraction(25) / stream.time_base)  # type: ignore[operator]
        for i, image in enumerate([*second, None]):
            frame = None if image is None else av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame is not None:
                frame.pts = i
            for packet in ctx.encode(frame):  # type: ignore[attr-defined]
                packet.stream = stream
                packet.pts = int(packet.pts * Fraction(1, 25) / stream.time_base) + shift  # type: ignore[operator]
                packet.dts = int(packet.dts * Fraction(1, 25) / stream.time_base) + shift  # type: ignore[operator]
                packet.time_base = stream.time_base
                out.mux(packet)
    return path


def irregular_keyframes(path: Path, frames: np.ndarray, keyframes: set[int]) -> Path:
    """An MP4 whose GOP length changes: keyframes forced at ``keyframes`` (B-frames on)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8, options={"g": "1000", "sc_threshold": "0", "forced-idr": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"  # type: ignore[union-attr]
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pict_type = av.video.frame.PictureType.I if i in keyframes else av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))  # type: ignore[union-attr]
        out.mux(stream.encode(None))  # type: ignore[union-attr]
    return path


@pytest.mark.parametrize("sampling", ["exact", "fast"])
def test_bad_streams_give_a_stable_code_or_the_full_decodes_frames(tmp_path: Path, sampling: str) -> None:
    video = ramp(48, 32, 32)
    gop_change = two_encoders(tmp_path / "gops.ts", video[:24], video[24:])
    data = gop_change.read_bytes()
    (tmp_path / "cut.ts").write_bytes(data[: len(data) * 6 // 10])  # truncated mid-stream: no index to lose
    irregular = irregular_keyframes(tmp_path / "irregular.mp4", video, {0, 1, 2, 3, 9, 30, 31, 44})
    for path in (gop_change, tmp_path / "cut.ts", irregular):
        frames = outcome(path, sampling)
        assert not isinstance(frames, str), f"{path.name}: {frames}"
        if sampling == "exact":  # what a full decode of every frame returns
            np.testing.assert_array_equal(frames, outcome(path, "legacy"), err_msg=path.name)
    with av.open(str(tmp_path / "cut.ts")) as container:  # the frames that are there, sampled over what is there
        assert 12 < plan_clip(container, container.streams.video[0], 4, DecodeLimits()).frames_in_stream < 48
    base = encode_video(tmp_path / "base.mp4", video, "libx264", gop=16)
    broken = drop_references(base, tmp_path / "holes.mp4", after=24)  # the last GOP refers to frames not there
    frames, full = outcome(broken, sampling), outcome(broken, "legacy")
    assert not isinstance(frames, str) and not isinstance(full, str)
    if sampling == "exact":  # before the holes, the frames of a full decode; after them, concealed ones
        np.testing.assert_array_equal(frames[:3], full[:3])
    for name in ("cut.mp4", "empty.mp4"):
        (tmp_path / name).write_bytes(base.read_bytes()[: 100 if name == "cut.mp4" else 0])
        assert outcome(tmp_path / name, sampling) in ("undecodable", "not_a_video")
