"""``POST /classify`` with ``segment_s``: a long video as a timeline, each segment one engine request.

One decode pass in a pool worker (``service.decode.timeline``) hands the segments over as they are decoded; each
becomes an engine request of the video's group (``service.engine.fairness``: the video holds at most
``ADAFOCUS_GROUP_MAX_ACTIVE`` slots, single clips take turns with it), at most ``window`` of them in the engine at
once, the rest held here in decode order. A finished segment is relayed at once to a streaming client (its own SSE
event, in the order segments finish); the answer lists them in time order with the video's label: the class of
the highest mean softmax probability over the segments answered.

The deadline (ADAFOCUS_TIMELINE_TIMEOUT_S, or ``deadline_ms``) is the video's: each segment's engine request carries
it (near it, segments past their glance answer with their prediction so far), and when it passes the answer holds
the segments finished and says where it stopped. A client that leaves (or a stream closed) stops the decode at the
next segment and cancels every segment still queued or active: their slots are free at the next step.

The OIP infer route runs the same ``Timeline`` for one file (service/classify/frames.py, service/http/oip_timeline.py),
its ``segment_s`` / ``stride_s`` checked by the same ``segment_spec``. Each timeline's outcome, its segments and
the time to its first are counted (``adafocus_timeline_*``, service/metrics.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from model.video import DecodeError, Source
from model.video_segments import SegmentClip, SegmentError, SegmentSpec, TimelinePlan, check_segment_args
from service.classify.upload import BadUpload, Sampling
from service.decode.pool import DecodeJob, DecoderCrashed
from service.decode.timeline import TimelineDone, TimelineJob
from service.engine.errors import DeadlineExceeded, QueueFull
from service.engine.types import EngineRequest, EngineResult
from service.lifecycle import ServiceState
from service.logs import current_request_id
from service.metrics import TimelineOutcome
from service.schemas import Cube, Gap, Segment, TimelineResponse, Timings, TopK

TOP_K = 5
_groups = itertools.count()  # a process-wide id per timeline: its engine requests' group


@dataclass(frozen=True)
class TimelineForm:
    """The timeline's own form fields, validated before any decoding."""

    spec: SegmentSpec
    sampling: Sampling | None  # None: the server's ADAFOCUS_DECODE_SAMPLING


def wants_timeline(fields: Mapping[str, str]) -> bool:
    return "segment_s" in fields or "stride_s" in fields


def timeline_form(
    state: ServiceState, fields: Mapping[str, str], sampling: Sampling | None, frames: bool
) -> TimelineForm:
    """``segment_s`` (required once ``stride_s`` is given) and ``stride_s``, checked before decoding, with the
    request's ``sampling`` (parsed by the flow's one rule, ``upload.parse_sampling``). ``frames=true`` is refused:
    a timeline's answer would carry T frames per segment, growing with the video's length (and its memory with
    it), where the timeline holds only each segment's answer. A refusal counts as an ``invalid`` timeline."""
    try:
        if frames:
            raise BadUpload("form field 'frames' cannot be combined with 'segment_s': a timeline's answer does not "
                            "carry the frames (they grow with the video); ask for frames of a single clip instead")
        return TimelineForm(segment_spec(state, fields.get("segment_s"), fields.get("stride_s")), sampling)
    except (BadUpload, SegmentError):
        record_outcome(state, "invalid")
        raise


def segment_spec(state: ServiceState, segment_s: object, stride_s: object) -> SegmentSpec:
    """The one rule of a timeline's ``segment_s`` and ``stride_s`` (form text or an OIP parameter's number), within
    ADAFOCUS_MIN_SEGMENT_S and ADAFOCUS_MAX_SEGMENTS (the video's length is checked when it is decoded)."""
    s = state.settings
    segment = _seconds(segment_s, "segment_s")
    if segment is None:
        raise SegmentError("bad_segment", "stride_s needs segment_s")
    return check_segment_args(segment, _seconds(stride_s, "stride_s"), s.min_segment_s, s.max_segments)


def _seconds(value: object, name: str) -> float | None:
    """Seconds as given: None when absent; a number, or text that is one (``nan`` and ``-2`` too: the range is
    ``check_segment_args``'); anything else (a word, a boolean, a list) is ``bad_segment``."""
    if value is None:
        return None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise SegmentError("bad_segment", f"{name} must be a number of seconds, got {str(value)[:32]!r}")


def record_outcome(state: ServiceState, outcome: TimelineOutcome, segments: int | None = None) -> None:
    """``adafocus_timeline_requests_total{outcome}``, and the segments of an answer (complete or partial)."""
    if state.metrics is not None:
        state.metrics.on_timeline(outcome, segments)


@dataclass
class _Sink:
    """The pool's ``TimelineSink``: on its supervisor thread, hands the plan and the segments to the event loop."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any]
    stopped: threading.Event = field(default_factory=threading.Event)

    def plan(self, plan: TimelinePlan) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, plan)

    def segment(self, clip: SegmentClip) -> bool:
        if self.stopped.is_set():
            return False
        self.loop.call_soon_threadsafe(self.events.put_nowait, clip)
        return True


@dataclass(frozen=True)
class TimelineRequest:
    """What the flow has validated: the form's parts a timeline uses."""

    budget: str | None
    deadline: float  # service clock
    form: TimelineForm
    started: float  # service clock, the request's start
    relay: Callable[[Segment], None] | None  # a streaming client's: each finished segment
    explain: bool = False  # each segment's cubes in its answer


class Timeline:
    """One timeline request: ``run`` decodes, feeds the engine and answers."""

    def __init__(self, state: ServiceState, request: TimelineRequest) -> None:
        assert state.engine is not None and state.pool is not None and state.bundle is not None
        self.state, self.request = state, request
        self.engine, self.pool, self.bundle = state.engine, state.pool, state.bundle
        self.group = f"timeline-{next(_groups)}"
        self.window = 2 * state.settings.group_max_active  # segments in the engine at once (queued or active)
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.sink = _Sink(self.loop, self.events)
        self.held: deque[SegmentClip] = deque()  # decoded, not yet submitted
        self.in_engine: dict[Future[EngineResult], SegmentClip] = {}
        self.done: dict[int, tuple[SegmentClip, EngineResult]] = {}
        self.plan: TimelinePlan | None = None
        self.first_at: float | None = None
        self.late: list[SegmentClip] = []  # reached the engine but got no glance before the deadline

    async def run(self, source: Source) -> TimelineResponse:
        """The answer; cancelling it (the client left) stops the decode and frees the video's engine slots. Its
        outcome is counted (``adafocus_timeline_requests_total``)."""
        try:
            answer = await self._run(source)
        except asyncio.CancelledError:
            record_outcome(self.state, "cancelled")
            raise
        except (SegmentError, DecodeError, DecoderCrashed):  # the video: too short for segment_s, undecodable ...
            record_outcome(self.state, "invalid")
            raise
        except Exception:
            record_outcome(self.state, "failed")
            raise
        record_outcome(self.state, "complete" if answer.ended_at_s is None else "partial", len(answer.segments))
        return answer

    async def _run(self, source: Source) -> TimelineResponse:
        cfg = self.bundle.config
        job = DecodeJob(
            source, cfg.num_frames, cfg.frame_size, self.request.form.sampling,
            TimelineJob(
                self.request.form.spec, self.state.settings.timeline_decode_s, self.state.settings.timeline_decode_nice
            ),
        )
        decode = self.pool.submit_timeline(job, self.sink)
        decode.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self.events.put_nowait, f))
        try:
            summary, ended = await self._pump(decode)
        finally:
            self._stop(decode)
        return self._answer(summary, ended)

    def probabilities(self) -> list[tuple[float, ...]]:
        """Every class's probability for each segment answered, in time order (the answer's ``segments``')."""
        return [self.done[i][1].probabilities for i in sorted(self.done)]

    async def _pump(self, decode: Future[TimelineDone]) -> tuple[TimelineDone | None, tuple[float, str] | None]:
        """Route decoder and engine events until every segment is answered, or the deadline passes."""
        summary: TimelineDone | None = None
        while summary is None or self.held or self.in_engine:
            left = self.request.deadline - self.state.clock()
            if left <= 0 and not self.in_engine:  # past the deadline: nothing held is submitted any more
                return summary, (self._frontier(), "the request's deadline passed")
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation (the client left) that
            # arrives as the event does, and the video would run on with nobody to answer
            getter = asyncio.ensure_future(self.events.get())
            try:
                done, _ = await asyncio.wait({getter}, timeout=max(0.0, left) + 0.25)
            finally:
                getter.cancel()  # a no-op once it has its event
            if getter not in done:
                return summary, (self._frontier(), "the request's deadline passed")
            event = getter.result()
            if event is decode:
                summary = decode.result()  # DecodeError, SegmentError, DecoderCrashed raise here
            elif isinstance(event, TimelinePlan):
                self.plan = event
            elif isinstance(event, SegmentClip):
                self.held.append(event)
            elif isinstance(event, Future):
                self._finished(event)
            self._submit()
        if self.late:  # the last segments reached the engine but got no glance before the deadline
            return summary, (self._frontier(), "the request's deadline passed")
        return summary, None

    def _submit(self) -> None:
        """Move held segments into the engine while the video has room in its window."""
        while self.held and len(self.in_engine) < self.window and self.state.clock() < self.request.deadline:
            clip = self.held[0]
            request = EngineRequest(
                clip.frames, budget=self.request.budget, deadline=self.request.deadline,
                explain=self.request.explain, client_id=current_request_id() or "-", group=self.group,
            )
            try:
                future = self.engine.submit(request)
            except QueueFull:
                if self.in_engine:
                    return  # retried when one of ours finishes
                raise
            self.held.popleft()
            self.in_engine[future] = clip
            future.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self.events.put_nowait, f))

    def _finished(self, future: Future[EngineResult]) -> None:
        clip = self.in_engine.pop(future, None)
        if clip is None or future.cancelled():
            return
        try:
            result = future.result()  # an engine error fails the timeline
        except DeadlineExceeded:  # no glance before the video's deadline: the answer says where it stopped
            self.late.append(clip)
            return
        self.done[clip.index] = (clip, result)
        first_after = None
        if self.first_at is None:
            self.first_at = first_after = self.state.clock() - self.request.started
        if self.state.metrics is not None:
            self.state.metrics.on_timeline_segment(first_after)
        if self.request.relay is not None:
            self.request.relay(self._segment(clip, result))

    def _frontier(self) -> float:
        """Where the timeline stops at its deadline: the start of the earliest segment not answered."""
        unanswered = [c.start_s for c in (*self.held, *self.in_engine.values(), *self.late)]
        if unanswered:
            return min(unanswered)
        return max((c.end_s for c, _ in self.done.values()), default=0.0)

    def _stop(self, decode: Future[TimelineDone]) -> None:
        """Stop the decode at its next segment and free every slot the video still holds."""
        self.sink.stopped.set()
        decode.cancel()
        for future in list(self.in_engine):
            self.engine.cancel(future)
        self.in_engine.clear()
        self.held.clear()

    def _segment(self, clip: SegmentClip, r: EngineResult) -> Segment:
        names = self.bundle.config.class_names
        return Segment(
            index=clip.index, start_s=clip.start_s, end_s=clip.end_s, label=names[r.class_id], class_id=r.class_id,
            confidence=r.confidence, top_k=[TopK(class_id=i, label=names[i], probability=p) for i, p in r.top_k],
            exit_step=r.exit_step, exit_reason=r.exit_reason, gmacs=r.gmacs, cubes=_cubes(r),
        )

    def _answer(self, summary: TimelineDone | None, ended: tuple[float, str] | None) -> TimelineResponse:
        plan = self.plan
        assert plan is not None or summary is None
        names = self.bundle.config.class_names
        answered = [self.done[i] for i in sorted(self.done)]
        mean = video_probabilities([r.probabilities for _, r in answered], len(names))
        best = sorted(range(len(names)), key=lambda c: -mean[c])[: min(TOP_K, len(names))]
        end = None if summary is None else summary.end
        if ended is None and end is not None and end.ended_at_s is not None:
            ended = (end.ended_at_s, end.end_reason or "the stream ended early")
        spec = self.request.form.spec
        results = [r for _, r in answered]
        all_k = self.engine.costs.exit_gmacs[-1] * len(answered)
        return TimelineResponse(
            request_id=current_request_id() or "-", label=names[best[0]], class_id=best[0],
            confidence=mean[best[0]], top_k=[TopK(class_id=c, label=names[c], probability=mean[c]) for c in best],
            segments=[self._segment(c, r) for c, r in answered], segment_s=spec.segment_s, stride_s=spec.stride_s,
            duration_s=plan.duration_s if plan else 0.0, segments_planned=len(plan.windows) if plan else 0,
            gaps=[Gap(start_s=a, end_s=b) for a, b in (plan.gaps if plan else ())],
            skipped=list(plan.skipped) if plan else [],
            ended_at_s=None if ended is None else ended[0], end_reason=None if ended is None else ended[1],
            gmacs=sum(r.gmacs for r in results), gmacs_all_k=all_k,
            budget=results[0].budget if results else (self.request.budget or self.engine.budget.current().name),
            budget_version=results[0].budget_version if results else self.engine.budget.current().version,
            sampling=end.sampling if end else (self.request.form.sampling or self.state.settings.decode_sampling),
            decode_method=plan.method if plan else "scan", frames_decoded=end.frames_decoded if end else 0,
            first_segment_s=self.first_at, replica=self.state.replica,
            timings=Timings(
                queue=sum(r.queue_seconds for r in results), decode=summary.seconds if summary else 0.0,
                compute=sum(r.compute_seconds for r in results), total=self.state.clock() - self.request.started,
            ),
        )


def _cubes(r: EngineResult) -> list[Cube] | None:
    if r.cubes is None:
        return None
    return [Cube(t=c.t, y=c.y, x=c.x, size=c.size, frames=c.frames, skipped=c.skipped) for c in r.cubes]


def timeline_deadline(state: ServiceState, started: float, deadline_ms: str | float | None) -> float:
    """The video's deadline: ADAFOCUS_TIMELINE_TIMEOUT_S, or ``deadline_ms`` when sooner (validated by the flow)."""
    deadline = started + state.settings.timeline_timeout_s
    if deadline_ms:
        deadline = min(deadline, started + float(deadline_ms) / 1000)
    return deadline


def video_probabilities(per_segment: list[tuple[float, ...]], classes: int) -> list[float]:
    """The video's class probabilities: the mean of its segments' softmax outputs (zeros without segments)."""
    if not per_segment:
        return [0.0] * classes
    sums = [math.fsum(p[c] for p in per_segment) for c in range(classes)]
    return [s / len(per_segment) for s in sums]
