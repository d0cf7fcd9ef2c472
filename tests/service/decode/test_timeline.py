"""A timeline decode through the pool: real worker processes hand over one segment clip at a time through the
slot's shared block; a sink that stops ends the worker's pass, and the slot serves the next job."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.video import DecodeLimits, encode_video
from model.video_segments import SegmentClip, SegmentError, TimelinePlan, check_segment_args, decode_segments
from service.decode.pool import DecodeBusy, DecodeJob, DecodePool
from service.decode.priority import timeline_nice
from service.decode.timeline import TimelineJob
from tests.service.conftest import ramp
from tests.service.jobs import nice_job


class Sink:
    def __init__(self, stop_after: int | None = None) -> None:
        self.plans: list[TimelinePlan] = []
        self.clips: list[SegmentClip] = []
        self.stop_after = stop_after

    def plan(self, plan: TimelinePlan) -> None:
        self.plans.append(plan)

    def segment(self, clip: SegmentClip) -> bool:
        self.clips.append(clip)
        return self.stop_after is None or len(self.clips) < self.stop_after


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(1, DecodeLimits())
    pool.start()
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(tmp_path_factory.mktemp("timeline") / "v.mp4", ramp(48, 48, 64, seed=4), "libx264", fps=8)


def job(source: Path | bytes, segment_s: float, nice: int = 0) -> DecodeJob:
    spec = check_segment_args(segment_s, None, 0.5, 100)
    return DecodeJob(source, 4, 32, timeline=TimelineJob(spec, 30.0, nice))


@pytest.mark.parametrize("in_memory", [False, True])
def test_the_worker_streams_every_segment_as_the_decoder_in_this_process_cuts_them(
    pool: DecodePool, video: Path, in_memory: bool
) -> None:
    sink = Sink()
    done = pool.submit_timeline(job(video.read_bytes() if in_memory else video, 1.0), sink).result(timeout=60)
    spec = check_segment_args(1.0, None, 0.5, 100)
    events = list(decode_segments(video, 4, 32, spec))
    here = [e for e in events if isinstance(e, SegmentClip)]
    assert [c.index for c in sink.clips] == [0, 1, 2, 3, 4, 5] and len(sink.plans) == 1
    for got, want in zip(sink.clips, here, strict=True):
        np.testing.assert_array_equal(got.frames, want.frames)
    assert done.end == events[-1] and done.end.ended_at_s is None
    assert done.end.frames_decoded < 48  # non-reference frames between targets were skipped
    assert len(pool.shared_blocks()) == 1  # the slot's one block carried them all


def test_a_sink_that_stops_ends_the_pass_and_the_slot_serves_the_next_job(pool: DecodePool, video: Path) -> None:
    sink = Sink(stop_after=2)
    done = pool.submit_timeline(job(video, 1.0), sink).result(timeout=60)
    assert len(sink.clips) == 2 and done.end.end_reason == "cancelled"
    again = Sink()
    pool.submit_timeline(job(video, 2.0), again).result(timeout=60)
    assert [c.index for c in again.clips] == [0, 1, 2] and pool.restarts == 0


def test_a_segment_longer_than_the_video_is_refused_after_the_index_pass(pool: DecodePool, video: Path) -> None:
    sink = Sink()
    with pytest.raises(SegmentError) as caught:
        pool.submit_timeline(job(video, 60.0), sink).result(timeout=60)
    assert caught.value.code == "segment_too_long" and sink.clips == [] and sink.plans == []


def test_timelines_leave_one_worker_for_single_clips(video: Path) -> None:
    pool = DecodePool(2, DecodeLimits())
    pool.start()
    try:
        gate = Sink(stop_after=None)
        held = threading.Event()

        class Slow(Sink):
            def segment(self, clip: SegmentClip) -> bool:
                held.wait(30)  # the first timeline holds its worker until the test lets go
                return super().segment(clip)

        first = pool.submit_timeline(job(video, 1.0), Slow())
        with pytest.raises(DecodeBusy, match="timeline"):
            pool.submit_timeline(job(video, 1.0), gate)
        clip = pool.submit(DecodeJob(video, 4, 32)).result(timeout=60)  # the other worker still serves clips
        assert clip.frames.shape == (4, 32, 32, 3)
        held.set()
        first.result(timeout=60)
        pool.submit_timeline(job(video, 2.0), gate).result(timeout=60)  # its slot is free again
        assert [c.index for c in gate.clips] == [0, 1, 2]
    finally:
        pool.shutdown()


def test_a_timeline_decodes_at_a_raised_nice_value_and_single_clips_after_it_do_not(video: Path) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the workers start at this process's value
    pool = DecodePool(1, DecodeLimits(), job_fn=nice_job)
    pool.start()
    try:
        sink = Sink()
        done = pool.submit_timeline(job(video, 2.0, nice=7), sink).result(timeout=60)
        assert done.nice == timeline_nice(base, 7) and [c.index for c in sink.clips] == [0, 1, 2]
        clip = pool.submit(DecodeJob(b"x", 2, 4)).result(timeout=60)  # the same worker, its own value again
        assert clip.frames.tolist() == [[[[base] * 3] * 4] * 4] * 2
        assert pool.submit_timeline(job(video, 2.0, nice=0), Sink()).result(timeout=60).nice == base
    finally:
        pool.shutdown()
