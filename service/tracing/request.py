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

The engine thread records a ``StepRecord`` per model call of a traced request (``EngineRequest.record_steps``); the
spans are made here, on the event loop, from those records: the step loop does no span or export work. A request
that fails ends the stage it was in with status ERROR and its stable error code; the root span gets the same.
While tracing is off every request has ``NO_TRACE``, whose methods do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer
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


class NoTrace:
    """The trace of a request while tracing is off: records nothing, costs a method call."""

    recording = False  # the engine keeps no step records

    def uploaded(self) -> None:
        pass

    def decoded(self, decoded: Decoded) -> None:
        pass

    def inferred(self, result: EngineResult) -> None:
        pass

    def end(self, error: BaseException | None) -> None:
        pass


NO_TRACE = NoTrace()


class RequestTrace:
    """One request's trace; its root span is started (the sampler decided: ``recording``), the rest is built by
    ``end``. Event-loop side only."""

    def __init__(
        self,
        tracer: Tracer,
        root: Span,
        started: float,
        clock: TraceClock,
        describe: Callable[[BaseException], tuple[int, str]],
    ) -> None:
        self._tracer, self._root, self._clock, self._describe = tracer, root, clock, describe
        self.recording = root.is_recording()  # False: a client's unsampled traceparent, or the sample ratio
        self._stages = [Stage("upload", started)]
        self._result: EngineResult | None = None
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

    def inferred(self, result: EngineResult) -> None:
        """The engine answered: the response body is made."""
        self._result = result
        self._stages[-1].attributes.update({"adafocus.queue_seconds": result.queue_seconds})
        self._next("answer")

    def end(self, error: BaseException | None) -> None:
        """The request ended (``error``: how it failed): every span is made and ended; once."""
        if self._ended:
            return
        self._ended = True
        if not self.recording:
            self._root.end()  # a non-recording span: nothing is exported
            return
        end = self._clock.now()
        code = None if error is None else self._describe(error)
        context = trace.set_span_in_context(self._root)
        for i, stage in enumerate(self._stages):
            last = i == len(self._stages) - 1
            span = self._span(stage.name, context, stage.start, stage.attributes)
            if stage.name == "infer" and self._result is not None:
                self._steps(trace.set_span_in_context(span), self._result)
            if last and code is not None:
                _failed(span, code[1])
            span.end(self._clock.ns(end if last else self._stages[i + 1].start))
        self._root.set_attributes(self._outcome(code))
        if code is not None:
            _failed(self._root, code[1])
        self._root.end(self._clock.ns(end))

    def _span(self, name: str, context: Context, start: float, attributes: Attributes) -> Span:
        return self._tracer.start_span(name, context, attributes=attributes, start_time=self._clock.ns(start))

    def _steps(self, context: Context, result: EngineResult) -> None:
        """The queue wait and one span per model call the request took part in, under ``infer``."""
        if not result.steps:
            return
        admitted = result.steps[0].start  # the glance batch that admitted it
        queue = self._span("queue", context, admitted - result.queue_seconds, {})
        queue.end(self._clock.ns(admitted))
        for step in result.steps:
            span = self._span(STEP_NAMES[step.stage], context, step.start, step_attributes(step))
            span.end(self._clock.ns(step.end))

    def _outcome(self, code: tuple[int, str] | None) -> Attributes:
        if code is not None:
            return {"http.response.status_code": code[0]}
        attributes: Attributes = {"http.response.status_code": 200}
        if self._result is not None:
            r = self._result
            attributes.update({
                "adafocus.class_id": r.class_id,
                "adafocus.exit_step": r.exit_step,
                "adafocus.exit_reason": r.exit_reason,
                "adafocus.cubes_used": r.cubes_used,
                "adafocus.gmacs": r.gmacs,
                "adafocus.budget": r.budget,
                "adafocus.budget_version": r.budget_version,
            })
        return attributes


def step_attributes(step: StepRecord) -> Attributes:
    return {
        "adafocus.batch_size": step.batch_size,
        "adafocus.step_index": step.exit_index,
        "adafocus.exit": step.exited,
    }


def _failed(span: Span, code: str) -> None:
    """Status ERROR with the stable error code (its description, ``error.type`` and ``adafocus.error.code``)."""
    span.set_attributes({"error.type": code, "adafocus.error.code": code})
    span.set_status(Status(StatusCode.ERROR, code))
