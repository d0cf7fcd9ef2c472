"""OpenTelemetry tracing, chosen once at start-up: off (no endpoint: every request gets ``NO_TRACE``, whose methods
do nothing), or the SDK's ``BatchSpanProcessor`` exporting over OTLP/HTTP (protobuf) from its own thread.

A request's spans are built by service/tracing/request.py when the request ends, on the event loop, from the times
it recorded; the engine thread only appends a ``StepRecord`` per model call of a traced request. As every span is
finished when it is built, each becomes the SDK's ``ReadableSpan`` (what a live SDK span turns into when it ends) and
goes straight to the batch processor: 3 µs a span here, against 40 µs through ``Tracer.start_span`` and a live span
(measured; docs/benchmarks.md, "Tracing"). Sampling is the SDK's ``ParentBased(TraceIdRatioBased)``, asked once per
request; trace and span ids are the SDK's random ones.

The API package (``opentelemetry-api``) is a dependency of the server; the SDK and the OTLP exporter are the
``[otel]`` extra (``make install`` installs it), imported only once tracing is on: a server without them runs with
tracing off, and one given an endpoint without them stops at start-up (the settings' check, ``sdk_missing``). The
exporter reads the SDK's own ``OTEL_EXPORTER_OTLP_*`` variables for what the settings do not pass (headers,
certificates, compression).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.logs import current_request_id
from service.tracing.request import NO_TRACE, Attributes, NoTrace, RequestTrace, Root, SpanData, TraceClock

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

TRACES_PATH = "v1/traces"  # the OTLP/HTTP signal path under the collector's base URL, as the OTel spec has it
INSTRUMENTATION = "adafocus.service"
W3C = TraceContextTextMapPropagator()  # the client's `traceparent` (and `tracestate`) continue its trace


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str | None  # the OTLP/HTTP collector's base URL; None: tracing off
    service_name: str  # the resource's service.name
    sample_ratio: float  # share of new traces kept (0..1); a client's traceparent decides for its own (parent-based)
    instance: str  # the resource's service.instance.id: this replica's name


def sdk_missing() -> bool:
    """True when the ``[otel]`` extra (SDK and OTLP/HTTP exporter) is not installed."""
    names = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
    return any(importlib.util.find_spec(name) is None for name in names)


def traces_url(endpoint: str) -> str:
    """``<endpoint>/v1/traces``, unless the endpoint already names the signal path."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/" + TRACES_PATH) else f"{base}/{TRACES_PATH}"


class SpanSink:
    """The SDK side of tracing on: sampling, ids, and finished spans to the batch processor (thread-safe)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        # NOTE(tracing): the SDK is the optional [otel] extra, imported only once tracing is on
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            assert config.endpoint is not None
            exporter = OTLPSpanExporter(endpoint=traces_url(config.endpoint))
        self._readable = ReadableSpan
        self._processor = BatchSpanProcessor(exporter)
        self._sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._ids = RandomIdGenerator()
        self._resource = Resource.create({"service.name": config.service_name, "service.instance.id": config.instance})
        self._scope = InstrumentationScope(INSTRUMENTATION)

    def trace_id(self) -> int:
        return self._ids.generate_trace_id()

    def span_id(self) -> int:
        return self._ids.generate_span_id()

    def sample(self, parent: Context, trace_id: int, name: str, attributes: Attributes) -> TraceState | None:
        """The trace state of a kept trace (the parent's, or empty); None: the sampler dropped it."""
        result = self._sampler.should_sample(parent, trace_id, name, trace.SpanKind.SERVER, attributes)
        if not result.decision.is_sampled():
            return None
        return result.trace_state or TraceState()

    def emit(self, span: SpanData) -> None:
        """A finished span, to the batch processor (its export thread encodes and sends it)."""
        self._processor.on_end(self._readable(
            span.name, span.context, span.parent, self._resource, span.attributes, kind=span.kind,
            status=span.status, start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=self._scope,
        ))

    def flush(self, timeout_s: float) -> bool:
        return self._processor.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self._processor.shutdown()


class Tracing:
    """The server's tracing: ``begin`` starts one request's trace. ``describe`` maps a request's error to its HTTP
    status and stable code (the error table of service/http/errors.py, handed in by the app)."""

    def __init__(
        self,
        sink: SpanSink | None,
        describe: Callable[[BaseException], tuple[int, str]],
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._sink = sink
        self._describe, self._clock, self._wall_ns = describe, clock, wall_ns

    @classmethod
    def off(cls) -> Tracing:
        return cls(None, lambda _: (500, "internal"))

    @property
    def on(self) -> bool:
        return self._sink is not None

    def begin(self, headers: Mapping[str, str], scope: Mapping[str, Any], started: float) -> RequestTrace | NoTrace:
        """The trace of the request of ASGI ``scope`` that arrived at ``started`` (service clock), continuing the
        trace of its ``traceparent`` header when it has a valid one; ``NO_TRACE`` while tracing is off or when the
        sampler drops it (a client's unsampled traceparent, the sample ratio)."""
        sink = self._sink
        if sink is None:
            return NO_TRACE
        method = str(scope.get("method", "POST"))
        route = str(getattr(scope.get("route"), "path", scope.get("path", "")))  # the template: /v2/models/{name}/infer
        carrier = W3C.extract(headers)
        parent: SpanContext | None = trace.get_current_span(carrier).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        trace_id = sink.trace_id() if parent is None else parent.trace_id
        name = f"{method} {route}"
        attributes: Attributes = {
            "http.request.method": method,
            "http.route": route,
            "adafocus.request_id": current_request_id() or "-",
        }
        state = sink.sample(carrier, trace_id, name, attributes)
        if state is None:
            return NO_TRACE
        root = SpanContext(trace_id, sink.span_id(), False, TraceFlags(TraceFlags.SAMPLED), state)
        clock = TraceClock(self._clock, self._wall_ns() - int(self._clock() * 1e9))
        return RequestTrace(sink, Root(name, root, parent, attributes), started, clock, self._describe)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every ended span now (tests; shutdown does it too)."""
        return self._sink is None or self._sink.flush(timeout_s)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread."""
        if self._sink is not None:
            self._sink.shutdown()


def start_tracing(
    config: TracingConfig,
    describe: Callable[[BaseException], tuple[int, str]],
    clock: Callable[[], float] = time.monotonic,
    exporter: SpanExporter | None = None,
) -> Tracing:
    """Tracing as configured: off without an endpoint (and no ``exporter``); else spans batched and exported over
    OTLP/HTTP to the endpoint, or to ``exporter`` (tests: the SDK's in-memory one)."""
    if config.endpoint is None and exporter is None:
        return Tracing.off()
    return Tracing(SpanSink(config, exporter), describe, clock)
