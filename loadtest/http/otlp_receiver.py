"""A local stand-in for an OpenTelemetry collector: an OTLP/HTTP (protobuf) receiver on a free loopback port, in a
thread of this process. ``adafocus bench tracing`` exports a server's spans to it; the tracing tests read back what
the SDK's exporter sent. It decodes every ``ExportTraceServiceRequest`` and keeps it, as a collector's receiver
would before its pipeline, and answers 200 with an empty ``ExportTraceServiceResponse``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

HOST = "127.0.0.1"


class OtlpReceiver(ThreadingHTTPServer):
    """``with OtlpReceiver() as receiver:`` serves on ``receiver.url`` until the block ends."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self._lock = threading.Lock()
        self.received: list[tuple[str, str, ExportTraceServiceRequest]] = []  # (path, content type, request)
        self.body_bytes = 0
        self._thread = threading.Thread(target=self.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def url(self) -> str:
        """The base URL a server's ``ADAFOCUS_OTLP_ENDPOINT`` takes."""
        return f"http://{HOST}:{self.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def keep(self, path: str, content_type: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self._lock:
            self.received.append((path, content_type, request))
            self.body_bytes += len(body)

    def span_count(self) -> int:
        """Spans received so far."""
        with self._lock:
            return sum(
                len(scope.spans) for _, _, r in self.received for rs in r.resource_spans for scope in rs.scope_spans
            )


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.keep(self.path, self.headers.get("Content-Type", ""), body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # no line per export on stderr
        pass
