"""The trace of one request: its stages timed on the service clock while it runs, turned into spans when it ends.

Span tree (names and attributes in the README's "Tracing" section)::

    POST /classify            SERVER; the client's traceparent is its parent
    ├── upload                the body read into its spool
    ├── decode                submit to the decoder pool -> frames back (the worker's own seconds an attribute)
    ├── infer                 engine submit -> result
    │   ├── queue             submit -> the glance batch that admitted it
    │   ├── glance            the glance batch (batch size, exit 0)
    │   └── cube              one per focus batch it took part in (batch size, step index, exit)
    └── answer                result -> response body

An Open Inference Protocol request (``POST /v2/models/{name}/infer``, N clips) has the same tree: ``upload`` is its
body read and parsed, ``decode`` its N files decoded (or, for a ``frames`` input, the client's frames sampled and
resized; ``adafocus.decoded_on`` says which), ``infer`` holds every clip's queue span and model calls, and
the root's outcome attributes are lists, one element per clip, when N > 1.

The engine thread records a ``StepRecord`` per model call of a traced request (``EngineRequest.record_steps``); the
spans are made here, on the event loop, from those records, each handed finished to the sink (service/tracing/
setup.py: the SDK's batch processor): the step loop does no span or export work. A request
that fails ends the stage it was in with status ERROR and its stable error code; the root span gets the same.
While tracing is off (or the sampler dropped the trace) a request has ``NO_TRACE``, whose methods do nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service.decode.pool import Decoded
from service.engine.types import EngineResult, StepRecord

Attributes = dict[str, AttributeValue]
STEP_NAMES = {"glance": "glance", "focus": "cube"}


@dataclass(frozen=True)
class TraceClock:
    """Service-clock seconds (monotonic) to the epoch nanoseconds of spans, by one offset taken per request."""

    now: Callable[[], float]
    offset_ns: int  # wall-clock ns minus service-clock ns, taken when the request's trace began

    def ns(self, t: float) -> int:
        return int(t * 1e9) + self.offset_ns


@dataclass
class Stage:
    name: str
    start: float  # service clock
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True)
class SpanData:
    """One finished span, as the sink takes it."""

    name: str
    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    attributes: Attributes
    start_ns: int
    end_ns: int
    status: Status


@dataclass(frozen=True)
class Root:
    """The request's own span, as ``Tracing.begin`` decided it (ids, sampled, its remote parent)."""

    name: str  # "POST /classify"
    context: SpanContext
    parent: SpanContext | None  # the client's traceparent, when valid
    attributes: Attributes


class Sink(Protocol):
    def span_id(self) -> int: ...

    def emit(self, span: SpanData) -> None: ...


UNSET = Status(StatusCode.UNSET)


class NoTrace:
    """The trace of a request while tracing is off or the trace is not sampled: records nothing."""

    recording = False  # the engine keeps no step records

    def uploaded(self) -> None:
        pass

    def decoded(self, decoded: Decoded) -> None:
        pass

    def decoded_clips(self, decoded: Sequence[Decoded], on: str) -> None:
        pass

    def inferred(self, result: EngineResult) -> None:
        pass

    def inferred_clips(self, results: Sequence[EngineResult]) -> None:
        pass

    def end(self, error: BaseException | None) -> None:
        pass


NO_TRACE = NoTrace()


class RequestTrace:
    """One sampled request's trace: its stages' start times as they come, every span built by ``end``. Event-loop
    side only."""

    recording = True  # the engine keeps a StepRecord per model call of the request

    def __init__(
        self,
        sink: Sink,
        root: Root,
        started: float,
        clock: TraceClock,
        describe: Callable[[BaseException], tuple[int, str]],
    ) -> None:
        self._sink, self._root, self._clock, self._describe = sink, root, clock, describe
        self._started = started
        self._stages = [Stage("upload", started)]
        self._results: list[EngineResult] = []
        self._ended = False

    def _next(self, name: str) -> None:
        self._stages.append(Stage(name, self._clock.now()))

    def uploaded(self) -> None:
        """The body is read: the decode begins."""
        self._next("decode")

    def decoded(self, decoded: Decoded) -> None:
        """The frames are back from the decoder: the engine request begins."""
        self._stages[-1].attributes.update({
            "adafocus.decode.worker_seconds": decoded.seconds,
            "adafocus.decode.sampling": decoded.sampling,
            "adafocus.decode.frames": int(decoded.frames.shape[0]),
        })
        self._next("infer")

    def decoded_clips(self, decoded: Sequence[Decoded], on: str) -> None:
        """The N clips of an OIP request have their frames (``on``: ``server``, decoded here; ``client``, frames
        sent decoded and only sampled and resized here): the engine requests begin."""
        self._stages[-1].attributes.update({
            "adafocus.clips": len(decoded),
            "adafocus.decoded_on": on,
            "adafocus.decode.worker_seconds": sum(d.seconds for d in decoded),
            "adafocus.decode.frames": int(decoded[0].frames.shape[0]),
        })
        if on == "server":
            self._stages[-1].attributes["adafocus.decode.sampling"] = decoded[0].sampling
        self._next("infer")

    def inferred(self, result: EngineResult) -> None:
        """The engine answered: the response body is made."""
        self.inferred_clips([result])

    def inferred_clips(self, results: Sequence[EngineResult]) -> None:
        """The engine answered every clip: the response body is made."""
        self._results = list(results)
        self._stages[-1].attributes.update({"adafocus.queue_seconds": max(r.queue_seconds for r in results)})
        self._next("answer")

    def end(self, error: BaseException | None) -> None:
        """The request ended (``error``: how it failed): every span is made and handed to the sink; once."""
        if self._ended:
            return
        self._ended = True
        end = self._clock.now()
        code = None if error is None else self._describe(error)
        failed = UNSET if code is None else Status(StatusCode.ERROR, code[1])
        root = self._root.context
        for i, stage in enumerate(self._stages):
            last = i == len(self._stages) - 1
            attributes = stage.attributes if not (last and code) else {**stage.attributes, **_error(code[1])}
            context = self._emit(stage.name, root, stage.start, end if last else self._stages[i + 1].start,
                                 attributes, failed if last else UNSET)
            if stage.name == "infer":
                for result in self._results:
                    self._steps(context, result)
        attributes = {**self._root.attributes, **self._outcome(code)}
        self._sink.emit(SpanData(self._root.name, root, self._root.parent, SpanKind.SERVER, attributes,
                                 self._clock.ns(self._started), self._clock.ns(end), failed))

    def _emit(
        self, name: str, parent: SpanContext, start: float, end: float, attributes: Attributes, status: Status = UNSET
    ) -> SpanContext:
        """A child span of ``parent`` from ``start`` to ``end`` (service clock), handed to the sink; its context."""
        context = SpanContext(parent.trace_id, self._sink.span_id(), False, parent.trace_flags, parent.trace_state)
        data = SpanData(name, context, parent, SpanKind.INTERNAL, attributes, self._clock.ns(start),
                        self._clock.ns(end), status)
        self._sink.emit(data)
        return context

    def _steps(self, infer: SpanContext, result: EngineResult) -> None:
        """The queue wait and one span per model call the request took part in, under ``infer``."""
        if not result.steps:
            return
        admitted = result.steps[0].start  # the glance batch that admitted it
        self._emit("queue", infer, admitted - result.queue_seconds, admitted, {})
        for step in result.steps:
            self._emit(STEP_NAMES[step.stage], infer, step.start, step.end, step_attributes(step))

    def _outcome(self, code: tuple[int, str] | None) -> Attributes:
        if code is not None:
            return {"http.response.status_code": code[0], **_error(code[1])}
        attributes: Attributes = {"http.response.status_code": 200}
        if len(self._results) == 1:
            (r,) = self._results
            attributes.update({
                "adafocus.class_id": r.class_id,
                "adafocus.exit_step": r.exit_step,
                "adafocus.exit_reason": r.exit_reason,
                "adafocus.cubes_used": r.cubes_used,
                "adafocus.gmacs": r.gmacs,
                "adafocus.budget": r.budget,
                "adafocus.budget_version": r.budget_version,
            })
        elif self._results:  # one element per clip
            rs = self._results
            attributes.update({
                "adafocus.class_id": [r.class_id for r in rs],
                "adafocus.exit_step": [r.exit_step for r in rs],
                "adafocus.exit_reason": [r.exit_reason for r in rs],
                "adafocus.cubes_used": [r.cubes_used for r in rs],
                "adafocus.gmacs": [r.gmacs for r in rs],
                "adafocus.budget": rs[0].budget,
                "adafocus.budget_version": rs[0].budget_version,
            })
        return attributes


def step_attributes(step: StepRecord) -> Attributes:
    return {
        "adafocus.batch_size": step.batch_size,
        "adafocus.step_index": step.exit_index,
        "adafocus.exit": step.exited,
    }


def _error(code: str) -> Attributes:
    """A failed span's attributes beside its status ERROR (whose description is the code too)."""
    return {"error.type": code, "adafocus.error.code": code}
