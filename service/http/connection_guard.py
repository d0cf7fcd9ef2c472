"""Connections before any request exists: uvicorn's HTTP/1.1 protocol (h11) with a header deadline, a connection
cap and JSON answers for what it refuses by itself.

uvicorn closes idle keep-alive connections, but a connection that never finishes its headers (nothing sent, half a
request line, one byte a second) it keeps forever, and it has no cap on connections that answers JSON. Here:

- every request's headers must be complete within ``header_timeout_s`` of the connection opening, or of the first
  byte after the previous answer (a deadline, not an idle timer: a drip of bytes does not extend it); past it the
  connection is closed, with a JSON 408 ``request_timeout`` when part of a request had arrived;
- beyond ``max_connections`` open connections a new one is answered JSON 503 ``too_many_connections`` with
  Retry-After and closed;
- bytes that are not HTTP get JSON 400 ``bad_http_request`` instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.http.body_guard import BodyGuard, BodyLimits
from service.http.errors import error_response, to_api_error
from service.http.guard_errors import MalformedHttp, ReadTimeout, TooManyConnections


def raw_error(exc: Exception, retry_after_s: int) -> bytes:
    """A whole HTTP/1.1 answer for ``exc`` (the error table's status, code and headers), closing the connection."""
    error = to_api_error(exc, retry_after_s)
    body = json.dumps({"code": error.code, "message": error.message}).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **{k.lower(): v for k, v in error.headers.items()},
    }
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(header_timeout_s: float, max_connections: int, limits: BodyLimits) -> type[H11Protocol]:
    """The protocol class to pass to ``uvicorn.Config(http=...)``, with these limits."""

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        response = error_response(to_api_error(TooManyConnections(max_connections), limits.retry_after_s))
        response.headers["connection"] = "close"  # one answer, then the connection is given back
        await response(scope, receive, send)

    class GuardedH11Protocol(_GuardedH11Protocol):
        pass

    GuardedH11Protocol.header_timeout_s = header_timeout_s
    GuardedH11Protocol.max_connections = max_connections
    GuardedH11Protocol.retry_after_s = limits.retry_after_s
    GuardedH11Protocol.refuse_app = BodyGuard(refuse, limits)  # the refusal also discards an unread body
    return GuardedH11Protocol


class _GuardedH11Protocol(H11Protocol):
    # set by ``guarded_protocol`` on the class it returns, from the settings (no defaults of their own)
    header_timeout_s: float
    max_connections: int
    retry_after_s: int
    refuse_app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # its first request (read as usual, within the header deadline) gets the JSON 503, then it closes
            self.app = self.refuse_app
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._partial = True
            if self._header_deadline is None:  # the first byte after an answer: the next request's deadline starts
                self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are complete (or the connection failed)
            self._disarm()
            self._partial = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_error(MalformedHttp(f"invalid HTTP request: {msg}"), self.retry_after_s))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering the previous request (pipelining): its answer comes first
        if self._partial:
            self.transport.write(raw_error(ReadTimeout("request headers", self.header_timeout_s), self.retry_after_s))
        self.transport.close()
