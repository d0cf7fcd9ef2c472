"""OpenTelemetry tracing, chosen once at start-up: off (no endpoint: every request gets ``NO_TRACE``, whose methods
do nothing), or an SDK tracer provider whose ``BatchSpanProcessor`` exports over OTLP/HTTP (protobuf) from its own
thread. The request's spans are built by service/tracing/request.py when the request ends, on the event loop; the
engine thread only appends a ``StepRecord`` per model call of a traced request.

The API package (``opentelemetry-api``) is a dependency of the server; the SDK and the OTLP exporter are the
``[otel]`` extra (``make install`` installs it): a server without them runs with tracing off, and one given an
endpoint without them stops at start-up (the settings' check, ``sdk_missing``). The SDK reads its own ``OTEL_*``
variables where the settings pass nothing (export headers, certificates, the batch processor's sizes).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.logs import current_request_id
from service.tracing.request import NO_TRACE, NoTrace, RequestTrace, TraceClock

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
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


class Tracing:
    """The server's tracer: ``begin`` starts one request's trace. ``describe`` maps a request's error to its HTTP
    status and stable code (the error table of service/http/errors.py, handed in by the app)."""

    def __init__(
        self,
        provider: TracerProvider | None,
        describe: Callable[[BaseException], tuple[int, str]],
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._provider = provider
        self._tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)
        self._describe, self._clock, self._wall_ns = describe, clock, wall_ns

    @classmethod
    def off(cls) -> Tracing:
        return cls(None, lambda _: (500, "internal"))

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def begin(self, headers: Mapping[str, str], method: str, route: str, started: float) -> RequestTrace | NoTrace:
        """The trace of a request that arrived at ``started`` (service clock), continuing the trace of its
        ``traceparent`` header when it has a valid one; ``NO_TRACE`` while tracing is off."""
        if self._tracer is None:
            return NO_TRACE
        clock = TraceClock(self._clock, self._wall_ns() - int(self._clock() * 1e9))
        parent = W3C.extract(headers)
        attributes = {
            "http.request.method": method,
            "http.route": route,
            "adafocus.request_id": current_request_id() or "-",
        }
        root = self._tracer.start_span(
            f"{method} {route}", parent, trace.SpanKind.SERVER, attributes, start_time=clock.ns(started)
        )
        return RequestTrace(self._tracer, root, started, clock, self._describe)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every ended span now (tests; shutdown does it too)."""
        return self._provider is None or self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread."""
        if self._provider is not None:
            self._provider.shutdown()


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
    # NOTE(tracing): the SDK is the optional [otel] extra, imported only once tracing is on
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert config.endpoint is not None
        exporter = OTLPSpanExporter(endpoint=traces_url(config.endpoint))
    resource = Resource.create({"service.name": config.service_name, "service.instance.id": config.instance})
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)), resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, describe, clock)
