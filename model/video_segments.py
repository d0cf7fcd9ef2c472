"""A long video as a timeline of segments: one index pass, one decode pass, one T-frame clip per segment, streamed.

1. ``check_segment_args`` validates the segment length and stride alone (before any file is opened);
2. the index pass (``model.video_plan.index_stream``: demux only) gives every frame's presentation time; the
   segments are windows of ``segment_s`` every ``stride_s`` (= ``segment_s`` unless given) from the first frame, plus
   a shorter last one when the tail is at least ``min_segment_s`` long; a segment longer than the video or more
   segments than ``max_segments`` is refused here (``SegmentError``), before any frame is decoded;
3. each segment's T targets are the frames at the centres of T equal parts of its window (the decoder's sampling:
   ``exact``, or ``fast``'s cheapest frame within the tolerance); all targets together are one plan of packet runs
   (``model.video_plan._runs``: seek or demux on, whichever costs fewer packets, non-reference frames skipped);
4. the runs are decoded once, in order; a decoded target is converted and kept only until every segment that
   needs it is complete, and a complete segment is yielded at once (``SegmentClip``): memory is bounded by a few
   segments' frames and the index, not by the video.

Presentation time rules: segments follow the sorted timestamps (a stream whose timestamps jump backwards is cut by
presentation time, not decode order); a stretch without frames longer than ``GAP_STEPS`` frame intervals is a gap,
and a segment at least half in gaps yields no clip (``TimelinePlan.gaps`` says where). A decode that fails
part-way (a truncated or corrupt stream) ends the timeline: the segments complete so far were yielded, and
``TimelineEnd.ended_at_s`` says where it stopped; so does a container that states a longer duration than its
packets hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from model.video import _feed, _positions
from model.video_io import (
    DecodeError,
    DecodeLimits,
    Source,
    check_frame,
    open_container,
    seekable,
    to_rgb,
    video_stream,
)
from model.video_legacy import SeekMiss
from model.video_plan import ClipPlan, StreamIndex, _check_duration, _fast_targets, _frame_step, _runs, index_stream

# timeline_unavailable: a server whose decoding cannot cut timelines (a fleet's decode tier: fleet/decode_tier.py)
SegmentCode = Literal[
    "bad_segment", "segment_too_short", "segment_too_long", "too_many_segments", "timeline_unavailable"
]
GAP_STEPS = 5  # a pause between two frames longer than this many typical frame intervals is a gap
EARLY_END_S = 0.5  # a container stating this much more duration than its packets hold ended early


class SegmentError(Exception):
    """A segment length or stride the timeline cannot be cut by; ``code`` is stable (the HTTP layer maps it)."""

    def __init__(self, code: SegmentCode, message: str) -> None:
        super().__init__(message)
        self.code: SegmentCode = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return (SegmentError, (self.code, self.message))


@dataclass(frozen=True)
class SegmentSpec:
    """How to cut the video (validated by ``check_segment_args``)."""

    segment_s: float
    stride_s: float  # the start of segment i is i * stride_s
    max_segments: int
    min_segment_s: float


@dataclass(frozen=True)
class Window:
    index: int
    start_s: float  # from the first frame's presentation time
    end_s: float


@dataclass(frozen=True)
class TimelinePlan:
    """What the index pass decided; sent ahead of the first segment."""

    duration_s: float
    windows: tuple[Window, ...]  # every segment, gap or not
    skipped: tuple[int, ...]  # indices of the windows that fall in gaps (no clip)
    gaps: tuple[tuple[float, float], ...]  # (start_s, end_s) stretches without frames
    method: Literal["seek", "scan"]
    decode_cost: int  # frames the decoder is expected to decode
    frames_in_stream: int


@dataclass(frozen=True)
class SegmentClip:
    index: int
    start_s: float
    end_s: float
    frames: np.ndarray  # (T, size, size, 3) uint8 RGB


@dataclass(frozen=True)
class TimelineEnd:
    """The decode pass's summary, after the last segment."""

    frames_decoded: int
    sampling: str
    max_offset_s: float
    ended_at_s: float | None = None  # set: the stream ended (or broke) here, before the end the plan expected
    end_reason: str | None = None  # why, for humans
    missing: tuple[int, ...] = field(default=())  # windows not gaps whose frames never came (after an early end)


TimelineEvent = TimelinePlan | SegmentClip | TimelineEnd


def check_segment_args(
    segment_s: float, stride_s: float | None, min_segment_s: float, max_segments: int
) -> SegmentSpec:
    """The segment length and stride, checked before any decoding: finite, positive, at least the minimum."""
    for name, value in (("segment_s", segment_s), ("stride_s", stride_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SegmentError("bad_segment", f"{name} must be a positive number of seconds, got {value}")
    if segment_s < min_segment_s:
        raise SegmentError(
            "segment_too_short",
            f"segment_s is {segment_s:g} s; the minimum (ADAFOCUS_MIN_SEGMENT_S) is {min_segment_s:g} s",
        )
    stride = segment_s if stride_s is None else stride_s
    if stride < min_segment_s / 4:
        raise SegmentError("segment_too_short", f"stride_s is {stride:g} s; the minimum is {min_segment_s / 4:g} s")
    return SegmentSpec(segment_s, stride, max_segments, min_segment_s)


def windows(duration_s: float, spec: SegmentSpec) -> tuple[Window, ...]:
    """The segments of a video of ``duration_s``: full windows, then a shorter last one when the tail left
    uncovered is at least ``min_segment_s``; ``segment_too_long`` / ``too_many_segments`` otherwise."""
    eps = 1e-6
    if spec.segment_s > duration_s + eps:
        raise SegmentError(
            "segment_too_long", f"segment_s is {spec.segment_s:g} s but the video lasts {duration_s:.2f} s"
        )
    full = math.floor((duration_s - spec.segment_s) / spec.stride_s + eps) + 1
    count = full
    tail_start = full * spec.stride_s
    covered = (full - 1) * spec.stride_s + spec.segment_s
    if duration_s - covered >= spec.min_segment_s - eps and duration_s - tail_start >= spec.min_segment_s - eps:
        count += 1
    if count > spec.max_segments:
        raise SegmentError(
            "too_many_segments",
            f"{count} segments of {spec.segment_s:g} s every {spec.stride_s:g} s; the limit (ADAFOCUS_MAX_SEGMENTS) "
            f"is {spec.max_segments}",
        )
    out = [Window(i, i * spec.stride_s, i * spec.stride_s + spec.segment_s) for i in range(full)]
    if count > full:
        out.append(Window(full, tail_start, duration_s))
    return tuple(out)


def find_gaps(index: StreamIndex, step: int) -> tuple[tuple[float, float], ...]:
    """Stretches between consecutive frames (presentation order) longer than ``GAP_STEPS`` frame intervals, in
    seconds from the first frame; a gap starts one frame interval after the frame before it."""
    keys, tb = index.keys, float(index.time_base)
    diffs = np.diff(keys)  # (N - 1,)
    at = np.nonzero(diffs > GAP_STEPS * step)[0]
    first = int(keys[0])
    return tuple(((int(keys[i]) - first + step) * tb, (int(keys[i + 1]) - first) * tb) for i in at.tolist())


def segment_targets(index: StreamIndex, window: Window, num_frames: int, step: int) -> tuple[int, ...]:
    """The window's T target timestamps: per centre of T equal parts, the first frame at or after it inside the
    window, else the last frame before it in the window; () when no frame falls in the window."""
    keys, tb, first = index.keys, float(index.time_base), int(index.keys[0])
    lo_pts, hi_pts = first + window.start_s / tb, first + window.end_s / tb
    lo = int(np.searchsorted(keys, lo_pts - 1e-9, side="left"))
    hi = int(np.searchsorted(keys, hi_pts - 1e-9, side="left"))
    if hi <= lo:
        return ()
    inside = keys[lo:hi]  # (n,) the window's frames
    span = hi_pts - lo_pts
    wanted = lo_pts + (np.arange(num_frames) + 0.5) * span / num_frames - step / 2  # (T,)
    at = np.minimum(np.searchsorted(inside, wanted, side="left"), len(inside) - 1)  # (T,)
    return tuple(int(v) for v in inside[at])


def in_gaps(window: Window, gaps: tuple[tuple[float, float], ...]) -> bool:
    """At least half of the window lies in gaps."""
    overlap = sum(max(0.0, min(window.end_s, b) - max(window.start_s, a)) for a, b in gaps)
    return overlap >= 0.5 * (window.end_s - window.start_s)


@dataclass
class _Books:
    """The decode pass's bookkeeping: which segment waits for which frame, and the frames held for them."""

    targets: dict[int, tuple[int, ...]]  # segment index -> its T target pts (the gaps' windows absent)
    windows: dict[int, Window]
    needed_by: dict[int, list[int]] = field(default_factory=dict)  # target pts -> segments still waiting for it
    missing: dict[int, set[int]] = field(default_factory=dict)  # segment -> its target pts not yet decoded
    held: dict[int, np.ndarray] = field(default_factory=dict)  # target pts -> (size, size, 3), while needed
    refs: dict[int, int] = field(default_factory=dict)  # target pts -> segments not yet yielded that need it
    done: set[int] = field(default_factory=set)
    last_pts: int | None = None  # the latest presentation time decoded

    def __post_init__(self) -> None:
        for seg, pts in self.targets.items():
            self.missing[seg] = set(pts)
            for p in set(pts):
                self.needed_by.setdefault(p, []).append(seg)
                self.refs[p] = self.refs.get(p, 0) + 1

    def take(self, pts: int, rgb: np.ndarray) -> Iterator[int]:
        """Keep a decoded target; yields the segments it completes."""
        self.held[pts] = rgb
        for seg in self.needed_by.pop(pts, []):
            self.missing[seg].discard(pts)
            if not self.missing[seg]:
                yield seg

    def clip(self, seg: int) -> SegmentClip:
        """Segment ``seg``'s clip (a target never decoded: the nearest decoded one of the segment stands in);
        its frames are dropped once no other pending segment needs them."""
        pts = self.targets[seg]
        have = sorted(p for p in set(pts) if p in self.held)
        frames = np.stack([self.held[p] if p in self.held else self.held[_nearest(have, p)] for p in pts])  # (T,S,S,3)
        self.done.add(seg)
        for p in set(pts):
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.held.pop(p, None)
        w = self.windows[seg]
        return SegmentClip(seg, w.start_s, w.end_s, frames)

    def pending(self) -> list[int]:
        return sorted(s for s in self.targets if s not in self.done)

    def partial(self, seg: int) -> bool:
        """Some of the segment's frames were decoded."""
        return any(p in self.held for p in self.targets[seg])


def _nearest(have: list[int], p: int) -> int:
    return min(have, key=lambda h: (abs(h - p), h))


def plan_timeline(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_frames: int,
    spec: SegmentSpec, limits: DecodeLimits, started: float,
) -> tuple[TimelinePlan, dict[int, tuple[int, ...]], ClipPlan]:
    """The index pass and the one plan of runs for every segment's targets."""
    index = index_stream(container, stream, limits, started)
    if not index.timed or container.format.name == "avi":
        raise DecodeError("undecodable", "a timeline needs presentation timestamps; this stream has none")
    step = _frame_step(index.keys)
    tb = float(index.time_base)
    duration = (int(index.keys[-1]) - int(index.keys[0]) + step) * tb
    _check_duration(duration, limits)
    try:
        cut = windows(duration, spec)
    except SegmentError as exc:
        stated = _stated_duration(container, stream)
        if exc.code != "segment_too_long" or stated is None or stated <= duration + EARLY_END_S:
            raise
        raise SegmentError(exc.code, f"{exc.message} (its container states {stated:.2f} s: the stream ends early, "
                                     "truncated or corrupt)") from None
    gaps = find_gaps(index, step)
    skipped = tuple(w.index for w in cut if in_gaps(w, gaps))
    per_segment = {}
    for w in cut:
        if w.index not in skipped:
            found = segment_targets(index, w, num_frames, step)
            if found:
                per_segment[w.index] = found
    offset = 0.0
    if limits.sampling == "fast":  # a frame moved out of its segment's window stays where exact sampling put it
        tb, first = float(index.time_base), int(index.keys[0])
        for seg, pts in per_segment.items():
            w = next(w for w in cut if w.index == seg)
            lo, hi = first + w.start_s / tb - 1e-9, first + w.end_s / tb - 1e-9
            moved, _ = _fast_targets(index, pts, limits.tolerance_s)
            per_segment[seg] = tuple(m if lo <= m < hi else p for m, p in zip(moved, pts, strict=True))
            offset = max([offset, *(abs(m - p) * tb for m, p in zip(per_segment[seg], pts, strict=True))])
    skipped = tuple(w.index for w in cut if w.index not in per_segment)
    every = tuple(sorted({p for pts in per_segment.values() for p in pts}))
    runs, cost = _runs(index, every, limits, seekable(container))
    method: Literal["seek", "scan"] = "seek" if any(r.seek for r in runs[1:]) else "scan"
    skip = stream.codec_context.name in ("h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video")
    clip_plan = ClipPlan(every, True, method, len(index), duration, cost, index, limits.sampling, runs, offset, skip)
    plan = TimelinePlan(duration, cut, skipped, gaps, method, cost, len(index))
    return plan, per_segment, clip_plan


def decode_segments(
    source: Source, num_frames: int, size: int, spec: SegmentSpec, limits: DecodeLimits = DecodeLimits()
) -> Generator[TimelineEvent, None, None]:
    """The timeline of the video at ``source``: its ``TimelinePlan``, then each segment's clip as soon as it is
    complete (time order, but for B-frame reordering across a boundary), then the ``TimelineEnd``."""
    started = time.monotonic()
    with open_container(source) as container:
        stream = video_stream(container, limits)
        try:
            plan, per_segment, clip_plan = plan_timeline(container, stream, num_frames, spec, limits, started)
        except av.FFmpegError as exc:
            raise DecodeError("undecodable", f"corrupt or unsupported video data: {exc}") from exc
        stated = _stated_duration(container, stream)
        yield plan
        books = _Books(per_segment, {w.index: w for w in plan.windows})
        end = yield from _decode_all(source, container, stream, clip_plan, books, size, limits, started)
    decoded, error = end
    ended_at, reason = None, None
    if error is not None:
        last = books.last_pts
        first = int(clip_plan.index.keys[0])
        ended_at = 0.0 if last is None else (last - first) * float(clip_plan.index.time_base)
        reason = error
    elif stated is not None and stated > plan.duration_s + EARLY_END_S:
        ended_at = plan.duration_s
        reason = f"the container states {stated:.2f} s but its frames end at {plan.duration_s:.2f} s"
    for seg in books.pending():  # targets never decoded: stand-ins when the segment has some frames
        if error is None and books.partial(seg):
            yield books.clip(seg)
    missing = tuple(books.pending())
    yield TimelineEnd(decoded, clip_plan.sampling, clip_plan.max_offset_s, ended_at, reason, missing)


def _stated_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video's duration as its container header states it, in seconds (None when it states none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def _decode_all(
    source: Source, container: av.container.InputContainer, stream: av.video.stream.VideoStream, plan: ClipPlan,
    books: _Books, size: int, limits: DecodeLimits, started: float,
) -> Generator[SegmentClip, None, tuple[int, str | None]]:
    """Decode the plan's runs (rewound demuxer, seeks allowed; a seek that misses: a fresh demuxer without seeks,
    from the start, skipping the segments already yielded). Returns (frames decoded, why it stopped early)."""
    decoded = 0
    try:
        if seekable(container):
            try:
                decoded += yield from _decode_runs(container, stream, plan, books, size, limits, started, True)
                return decoded, None
            except SeekMiss:
                pass
        with open_container(source) as fresh:
            fresh_stream = video_stream(fresh, limits)
            decoded += yield from _decode_runs(fresh, fresh_stream, plan, books, size, limits, started, False)
        return decoded, None
    except (av.FFmpegError, DecodeError) as exc:
        return decoded, f"{type(exc).__name__}: {exc}"


def _decode_runs(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, plan: ClipPlan, books: _Books,
    size: int, limits: DecodeLimits, started: float, seeks: bool,
) -> Generator[SegmentClip, None, int]:
    """``model.video._decode_runs`` for a timeline: each decoded target goes to the books, each segment it completes
    is yielded at once; returns the frames decoded."""
    scaler = VideoReformatter()
    ctx = stream.codec_context
    packets = None
    decoded = 0
    skip: Any = "NONREF" if plan.skip_nonref else "DEFAULT"
    targets = set(plan.targets)
    for run in plan.runs:
        if seeks and run.seek:
            try:
                container.seek(int(plan.index.pts[run.start]), backward=True, any_frame=False, stream=stream)
            except av.FFmpegError:
                raise SeekMiss() from None
            packets = _positions(container, stream, plan, None)
        elif packets is None:
            packets = _positions(container, stream, plan, 0)
        for frame in _feed(ctx, packets, run, targets, skip, started, limits):
            decoded += 1
            check_frame(frame, started, limits)
            pts = frame.pts
            if pts is None:
                continue
            books.last_pts = pts if books.last_pts is None else max(books.last_pts, pts)
            if pts not in books.needed_by:
                continue
            for seg in list(books.take(pts, to_rgb(frame, size, scaler))):
                if seg not in books.done:
                    yield books.clip(seg)
    return decoded
