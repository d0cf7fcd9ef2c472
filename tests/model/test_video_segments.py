"""The timeline decoder: segment windows and their validation, one decode pass that yields each segment's clip, and
presentation-time edge cases (gaps, timestamps that jump backwards, a stream that ends early), on real files."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from model.video import DecodeLimits, encode_video, sample_clip
from model.video_segments import (
    SegmentClip,
    SegmentError,
    TimelineEnd,
    TimelinePlan,
    Window,
    check_segment_args,
    decode_segments,
    windows,
)

FPS = 8


def ids(count: int) -> np.ndarray:
    """Frames whose grey level tells their index (i * 6): (count, 48, 64, 3) uint8."""
    return np.stack([np.full((48, 64, 3), (i * 6) % 256, np.uint8) for i in range(count)])


def frame_ids(frames: np.ndarray) -> list[int]:
    return [round(float(f[..., 0].mean()) / 6) for f in frames]


def lossless(path: Path, count: int = 40) -> Path:
    return encode_video(path, ids(count), "libx264", fps=FPS, gop=8, options={"crf": "0"})


def run(source: Path, segment_s: float, stride_s: float | None = None, sampling: str = "exact"):  # type: ignore[no-untyped-def]
    spec = check_segment_args(segment_s, stride_s, 0.25, 100)
    events = list(decode_segments(source, 4, 32, spec, DecodeLimits(sampling=sampling)))  # type: ignore[arg-type]
    plan, clips, end = events[0], events[1:-1], events[-1]
    assert isinstance(plan, TimelinePlan) and isinstance(end, TimelineEnd)
    assert all(isinstance(c, SegmentClip) for c in clips)
    return plan, clips, end


@pytest.mark.parametrize(
    ("segment", "stride", "problem"),
    [(0.0, None, "bad_segment"), (-1.0, None, "bad_segment"), (math.nan, None, "bad_segment"),
     (math.inf, None, "bad_segment"), (2.0, 0.0, "bad_segment"), (0.1, None, "segment_too_short"),
     (2.0, 0.01, "segment_too_short")],
)
def test_bad_segment_arguments_are_refused_before_any_file_is_opened(
    segment: float, stride: float | None, problem: str
) -> None:
    with pytest.raises(SegmentError) as caught:
        check_segment_args(segment, stride, 0.25, 100)
    assert caught.value.code == problem


def test_windows_cover_the_video_with_a_shorter_tail_and_refuse_too_many_or_too_long() -> None:
    spec = check_segment_args(2.0, None, 0.5, 10)
    assert windows(5.0, spec) == (Window(0, 0.0, 2.0), Window(1, 2.0, 4.0), Window(2, 4.0, 5.0))
    assert windows(4.2, spec) == (Window(0, 0.0, 2.0), Window(1, 2.0, 4.0))  # a 0.2 s tail is below the minimum
    overlapping = check_segment_args(2.0, 1.0, 0.5, 10)
    assert [w.start_s for w in windows(4.0, overlapping)] == [0.0, 1.0, 2.0]
    with pytest.raises(SegmentError, match="ADAFOCUS_MAX_SEGMENTS") as many:
        windows(30.0, spec)
    assert many.value.code == "too_many_segments"
    with pytest.raises(SegmentError) as long:
        windows(1.5, spec)
    assert long.value.code == "segment_too_long"


def test_each_segment_is_the_clip_of_its_window_in_one_pass(tmp_path: Path) -> None:
    path = lossless(tmp_path / "ids.mp4")  # 40 frames, 5 s
    plan, clips, end = run(path, 1.0)
    assert [w.index for w in plan.windows] == [0, 1, 2, 3, 4] and plan.skipped == () and plan.gaps == ()
    assert [(c.index, c.start_s, c.end_s) for c in clips] == [(i, float(i), i + 1.0) for i in range(5)]
    assert [frame_ids(c.frames) for c in clips] == [[8 * i + 1, 8 * i + 3, 8 * i + 5, 8 * i + 7] for i in range(5)]
    assert end.frames_decoded == 40 and end.ended_at_s is None and end.missing == ()
    # a one-segment timeline is the ordinary decoder's clip, byte for byte
    (only,) = run(path, 5.0)[1]
    np.testing.assert_array_equal(only.frames, sample_clip(path, 4, 32).frames)


def test_overlapping_segments_share_frames_and_fast_sampling_moves_targets(tmp_path: Path) -> None:
    path = lossless(tmp_path / "ids.mp4")
    _, clips, _ = run(path, 2.0, stride_s=1.0)
    assert [c.start_s for c in clips] == [0.0, 1.0, 2.0, 3.0]
    assert frame_ids(clips[1].frames) == [10, 14, 18, 22]
    _, fast, end = run(path, 1.0, sampling="fast")
    assert end.sampling == "fast" and 0 < end.max_offset_s <= 0.5
    for c in fast:  # keyframes every second (GOP 8 at 8 fps): moved where near, never out of the segment
        assert all(8 * c.index <= i < 8 * c.index + 8 for i in frame_ids(c.frames)), (c.index, frame_ids(c.frames))


def write_pts(path: Path, pts: list[int]) -> Path:
    """Frames with the given presentation timestamps (1 / FPS time base), no B-frames; frame i's grey is i * 6."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "0", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(ids(i + 1)[i], format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_gap_in_the_timestamps_yields_no_segment_and_is_reported(tmp_path: Path) -> None:
    path = write_pts(tmp_path / "gap.mp4", list(range(16)) + list(range(40, 56)))  # 2 s, 3 s without frames, 2 s
    plan, clips, _ = run(path, 1.0)
    assert plan.gaps == ((2.0, 5.0),) and plan.skipped == (2, 3, 4)
    assert [c.index for c in clips] == [0, 1, 5, 6]
    assert frame_ids(clips[2].frames) == [17, 19, 21, 23]  # after the gap: the frames of 5.0 .. 6.0 s


def test_timestamps_that_jump_backwards_are_cut_by_presentation_time(tmp_path: Path) -> None:
    first = encode_video(tmp_path / "a.ts", ids(40), "libx264", fps=FPS, gop=8, options={"crf": "0"})
    second = encode_video(tmp_path / "b.ts", ids(40)[::-1].copy(), "libx264", fps=FPS, gop=8, options={"crf": "0"})
    joined = tmp_path / "joined.ts"  # MPEG-TS concatenates: the second half's timestamps start over
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    plan, clips, end = run(joined, 1.0)
    assert [c.index for c in clips] == list(range(len(plan.windows))) and end.ended_at_s is None
    assert [c.start_s for c in clips] == sorted(c.start_s for c in clips)


def test_a_stream_that_ends_early_answers_the_segments_so_far_and_says_where(tmp_path: Path) -> None:
    whole = encode_video(tmp_path / "a.mkv", ids(40), "libx264", fps=FPS, gop=8, options={"crf": "0"})
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    plan, clips, end = run(cut, 1.0)
    assert plan.duration_s < 5.0 and len(clips) >= 1
    assert end.ended_at_s == pytest.approx(plan.duration_s)
    assert end.end_reason is not None and "states 5.00 s" in end.end_reason


def test_a_stream_cut_before_its_first_segment_says_so(tmp_path: Path) -> None:
    whole = encode_video(tmp_path / "a.mkv", ids(40), "libx264", fps=FPS, gop=8, options={"crf": "0"})
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])  # frames for 1.5 s
    with pytest.raises(SegmentError, match=r"container states 5\.00 s: the stream ends early") as caught:
        run(cut, 3.0)
    assert caught.value.code == "segment_too_long"
