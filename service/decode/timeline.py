"""A timeline decode through the pool: one worker decodes the whole video once and hands its segment clips over one
at a time (``model.video_segments.decode_segments``), so that neither the worker nor the pipe ever holds the video.

The exchange, after the pool's usual hand-over and acknowledgement (``service.decode.pool``):
- worker -> pool ``("timeline_plan", TimelinePlan)`` after the index pass (or ``segment_error`` / ``decode_error``);
- per segment, worker -> pool ``("segment", index, start_s, end_s, clip)``, the clip written into the slot's shared
  block (``shared_memory.reply``: ``("shm", shape, ...)``, else the frames pickled); the worker then waits for
  ``("next",)`` (the pool copied the clip out; the block is free again) or ``("stop",)`` (the request left);
- worker -> pool ``("timeline_end", TimelineEnd, seconds, nice)``.
The worker runs the pass in a thread of its own at a raised nice value (``TimelineJob.nice``,
``service.decode.priority``), so that single-clip decodes come first when the cores are busy.
The pool hands each segment to the job's ``TimelineSink`` on its supervisor thread. The time limit is the job's
``max_decode_s`` for the whole video (a 10-minute video needs more than one clip's limit), checked by the worker
between frames and by the pool, which kills a silent worker as for any job.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Protocol

import numpy as np

from model.video_io import DecodeError, DecodeLimits, Source
from model.video_segments import SegmentClip, SegmentError, SegmentSpec, TimelineEnd, TimelinePlan, decode_segments
from service.decode.priority import thread_nice
from service.decode.shared_memory import reply

# the pool's own types (service.decode.pool imports this module): its job, the pool and one of its workers
DecodeJob = Any
DecodePool = Any
Worker = Any


@dataclass(frozen=True)
class TimelineJob:
    """What makes a decode job a timeline: how to cut, and the wall-time limit of the whole pass."""

    spec: SegmentSpec
    max_decode_s: float
    nice: int = 0  # how much the worker raises the pass's nice value (``service.decode.priority``)


@dataclass(frozen=True)
class TimelineDone:
    end: TimelineEnd
    seconds: float  # wall time of the pass inside the worker (includes the hand-over of each segment)
    nice: int = 0  # the nice value the pass ran at


class TimelineSink(Protocol):
    """Receives a timeline decode's plan and segments, on the pool's supervisor thread (must be quick)."""

    def plan(self, plan: TimelinePlan) -> None: ...

    def segment(self, clip: SegmentClip) -> bool:
        """Take one segment's clip; False: stop decoding (the request left)."""
        ...


# ---------------------------------------------------------------------------------------------- the worker's side
def serve_timeline(
    conn: Connection, job: DecodeJob, timeline: TimelineJob, limits: DecodeLimits, source: Source,
    shared: SharedMemory | None,
) -> None:
    """Decode ``job``'s timeline, sending the plan, each segment (waiting for the pool between them) and the end."""
    started = time.monotonic()
    limits = dataclasses.replace(limits, max_decode_s=timeline.max_decode_s)
    if job.sampling is not None:
        limits = dataclasses.replace(limits, sampling=job.sampling)
    events = decode_segments(source, job.num_frames, job.size, timeline.spec, limits)
    try:
        for event in events:
            if isinstance(event, TimelinePlan):
                conn.send(("timeline_plan", event))
            elif isinstance(event, SegmentClip):
                clip = reply(event.frames, shared, time.monotonic() - started)
                conn.send(("segment", event.index, event.start_s, event.end_s, clip))
                if conn.recv() != ("next",):
                    events.close()
                    stopped = TimelineEnd(0, limits.sampling, 0.0, event.end_s, "cancelled")
                    conn.send(("timeline_end", stopped, time.monotonic() - started, thread_nice()))
                    return
            else:
                conn.send(("timeline_end", event, time.monotonic() - started, thread_nice()))
    except SegmentError as exc:
        conn.send(("segment_error", exc.code, exc.message))
    except DecodeError as exc:
        conn.send(("decode_error", exc.code, exc.message))


# ---------------------------------------------------------------------------------------------- the pool's side
def receive_timeline(pool: DecodePool, worker: Worker, job: DecodeJob, sink: TimelineSink) -> TimelineDone:
    """Run ``job`` (a timeline) on ``worker``: each segment to ``sink`` as it comes; the pass's summary."""
    assert job.timeline is not None
    limit = time.monotonic() + job.timeline.max_decode_s + pool.kill_grace_s
    message = pool._exchange(worker, job)
    if message[0] == "no_block":
        worker.block.back_off(f"decoder worker {worker.pid} could not map its shared block ({message[1]})")
        message = pool._exchange(worker, job, shared=False)
    while True:
        kind = message[0]
        if kind == "decode_error":
            raise DecodeError(message[1], message[2])
        if kind == "segment_error":
            raise SegmentError(message[1], message[2])
        if kind == "timeline_end":
            return TimelineDone(message[1], float(message[2]), int(message[3]))
        if kind == "timeline_plan":
            sink.plan(message[1])
        elif kind == "segment":
            keep = sink.segment(SegmentClip(message[1], message[2], message[3], _frames(worker, message[4])))
            _send(pool, worker, ("next",) if keep else ("stop",))
        message = _receive(pool, worker, limit)


def _frames(worker: Worker, clip: tuple[Any, ...]) -> np.ndarray:
    """A segment's frames: copied out of the slot's block (it takes the next segment), or as pickled."""
    return worker.block.read(clip[1]) if clip[0] == "shm" else np.asarray(clip[1])


def _send(pool: DecodePool, worker: Worker, message: tuple[str]) -> None:
    assert worker.conn is not None
    try:
        worker.conn.send(message)
    except (EOFError, OSError):
        pool._died(worker)  # raises DecoderCrashed
        raise


def _receive(pool: DecodePool, worker: Worker, limit: float) -> tuple[Any, ...]:
    """The worker's next message before ``limit`` (monotonic); a silent worker is killed (``decode_timeout``)."""
    assert worker.conn is not None
    try:
        if not worker.conn.poll(max(0.0, limit - time.monotonic())):
            worker.process.kill()
            worker.broken = "timeout"
            assert worker.conn is not None
            raise DecodeError("decode_timeout", "the timeline decode overran its time limit")
        return tuple(worker.conn.recv())
    except (EOFError, OSError):
        pool._died(worker)  # raises DecoderCrashed
        raise
