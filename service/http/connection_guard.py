"""Connections before any request exists: uvicorn's HTTP/1.1 protocol (h11, made strict by service/http/strict_http.py)
with deadlines, connection caps and JSON answers for what it refuses by itself.

uvicorn closes idle keep-alive connections, but a connection that never finishes its headers (nothing sent, half a
request line, one byte a second) it keeps forever, and it has no cap on connections that answers JSON. Here:

- a new connection's first byte must arrive within ``first_byte_timeout_s``, or it is closed without an answer;
- every request's headers must be complete within ``header_timeout_s`` of the connection opening, or of the first
  byte after the previous answer (a deadline, not an idle timer: a drip of bytes does not extend it); past it the
  connection is closed with a JSON 408 ``request_timeout``;
- one client address holds at most ``max_per_client`` connections: one more is closed at once, before a byte is read;
- beyond ``max_connections`` the connection idle the longest (no request in progress: none sent yet, or between two
  on a keep-alive connection) is closed to make room; only when none is idle is a new one answered JSON 503
  ``too_many_connections`` with Retry-After, and closed;
- bytes that are not HTTP/1.1 get JSON 400 ``bad_http_request`` instead of uvicorn's plain text;
- every connection the server closes counts in ``adafocus_connections_closed_total{reason}`` (``CLOSE_REASONS``);
  the open ones in ``adafocus_connections_open``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.http.body_guard import BodyGuard, BodyLimits
from service.http.errors import error_response, to_api_error
from service.http.guard_errors import MalformedHttp, ReadTimeout, TooManyConnections
from service.http.strict_http import StrictConnection, check_parser
from service.lifecycle import ServiceState
from service.settings import Settings

CLOSE_REASONS = (
    "first_byte_timeout", "header_timeout", "keep_alive_timeout", "per_client_cap", "evicted_idle",
    "too_many_connections", "bad_http_request",
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection guard's limits; their defaults are the settings' (``of``), written there only."""

    first_byte_timeout_s: float  # a new connection's first byte (at most ``header_timeout_s``)
    header_timeout_s: float  # a request's whole headers
    max_connections: int  # open connections, the server's
    max_per_client: int  # open connections of one client address
    retry_after_s: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        s = settings
        first_byte = min(s.first_byte_timeout_s, s.header_timeout_s)
        return cls(first_byte, s.header_timeout_s, s.max_connections, s.max_connections_per_client, s.retry_after_s)


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


class ConnectionBook:
    """A server's open connections (one book per server, used on its event loop only): how many each client address
    holds, which count toward ``max_connections`` (all but those refused with 503), and the idle ones, oldest first."""

    def __init__(self) -> None:
        self.clients: Counter[str] = Counter()
        self.hosts: dict[_GuardedH11Protocol, str | None] = {}
        self.counted: set[_GuardedH11Protocol] = set()
        self.idle: dict[_GuardedH11Protocol, None] = {}  # insertion order: the order they became idle

    def full(self, host: str | None, per_client: int) -> bool:
        return host is not None and self.clients[host] >= per_client

    def add(self, conn: _GuardedH11Protocol, host: str | None) -> None:
        self.hosts[conn] = host
        self.counted.add(conn)
        if host is not None:
            self.clients[host] += 1

    def forget(self, conn: _GuardedH11Protocol) -> None:
        if conn not in self.hosts:
            return
        host = self.hosts.pop(conn)
        self.counted.discard(conn)
        self.idle.pop(conn, None)
        if host is not None:
            self.clients[host] -= 1
            if not self.clients[host]:
                del self.clients[host]

    def set_idle(self, conn: _GuardedH11Protocol, idle: bool) -> None:
        self.idle.pop(conn, None)
        if idle and conn in self.hosts:
            self.idle[conn] = None  # now the newest idle one

    def oldest_idle(self) -> _GuardedH11Protocol | None:
        while self.idle:
            conn = next(iter(self.idle))
            if not conn.transport.is_closing():
                return conn
            self.idle.pop(conn)  # already closing (its client left, a keep-alive timeout): gone soon
        return None


def guarded_protocol(limits: ConnectionLimits, body: BodyLimits, service: ServiceState) -> type[H11Protocol]:
    """The protocol class to pass to ``uvicorn.Config(http=...)``, with these limits; closes counted in
    ``service``'s metrics."""
    check_parser()

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        response = error_response(to_api_error(TooManyConnections(limits.max_connections), limits.retry_after_s))
        response.headers["connection"] = "close"  # one answer, then the connection is given back
        await response(scope, receive, send)

    class GuardedH11Protocol(_GuardedH11Protocol):
        pass

    GuardedH11Protocol.limits = limits
    GuardedH11Protocol.book = ConnectionBook()
    GuardedH11Protocol.service = service
    GuardedH11Protocol.refuse_app = BodyGuard(refuse, body)  # the refusal also discards an unread body
    return GuardedH11Protocol


class _GuardedH11Protocol(H11Protocol):
    # set by ``guarded_protocol`` on the class it returns (no defaults of their own)
    limits: ConnectionLimits
    book: ConnectionBook
    service: ServiceState
    refuse_app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = StrictConnection(DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if size is None else size)
        self._deadline: asyncio.TimerHandle | None = None
        self._opened = 0.0
        self._fresh = True  # no byte received yet
        self._partial = False  # bytes of a request whose headers are not complete yet
        self._close_reason: str | None = None  # why the server closes it; counted once

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        host = self.client[0] if self.client else None
        if self.book.full(host, self.limits.max_per_client):
            self._close("per_client_cap")  # at once: no byte read, no slot held
            return
        self.book.add(self, host)
        self._make_room()
        self.book.set_idle(self, self.app is not self.refuse_app)
        self._arm(self._opened + self.limits.first_byte_timeout_s, self._first_byte_overdue)
        self._count_open()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and not self._partial:  # a request's first byte: its deadline starts
            self._partial = True
            self.book.set_idle(self, False)
            started = self._opened if self._fresh else self.loop.time()
            self._fresh = False
            self._arm(started + self.limits.header_timeout_s, self._headers_overdue)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are complete (or the connection failed)
            self._disarm()
            self._partial = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.conn.their_state is h11.IDLE and not self._partial and not self.conn.trailing_data[0]
        if idle and not self.transport.is_closing() and self.app is not self.refuse_app:
            self.book.set_idle(self, True)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol: True keeps writing open
        """The client ended its side while its request body was still due (half a body, then ``shutdown(SHUT_WR)``):
        the body ends here, short of its Content-Length, so the route refuses it (400 ``incomplete_upload``) and the
        answer still reaches the client, then the connection closes. Otherwise (between requests, or after a whole
        body) the connection closes now, as uvicorn's does."""
        if self.cycle is None or self.cycle.response_complete or self.conn.their_state is not h11.SEND_BODY:
            return None
        self.cycle.more_body = False
        self.cycle.keep_alive = False  # closed once the answer is sent
        self.cycle.message_event.set()
        return True  # keep the transport open for writing

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.book.forget(self)
        self._count_open()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()
        self.book.forget(self)  # the WebSocket protocol takes the transport over; this one never hears of it again
        self._count_open()
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_error(MalformedHttp(f"invalid HTTP request: {msg}"), self.limits.retry_after_s))
        self._close("bad_http_request")

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._count_close("keep_alive_timeout")
        super().timeout_keep_alive_handler()

    def _make_room(self) -> None:
        """Beyond ``max_connections``: close the oldest idle connection, or refuse this one when none is idle."""
        while len(self.book.counted) > self.limits.max_connections:
            victim = self.book.oldest_idle()
            if victim is None:
                # its first request (read as usual, within the deadlines) gets the JSON 503, then it closes
                self.app = self.refuse_app
                self.book.counted.discard(self)  # on its way out: it does not hold a place under the cap
                self._count_close("too_many_connections")
                return
            victim._close("evicted_idle")

    def _close(self, reason: str) -> None:
        self._count_close(reason)
        self._disarm()
        self.book.forget(self)
        self.transport.close()

    def _count_close(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            metrics = self.service.metrics
            if metrics is not None:
                metrics.on_connection_closed(reason)

    def _count_open(self) -> None:
        metrics = self.service.metrics
        if metrics is not None:
            metrics.on_connections_open(len(self.book.hosts))

    def _arm(self, when: float, overdue: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_at(when, overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _first_byte_overdue(self) -> None:
        self._deadline = None
        if self._fresh and not self.transport.is_closing():
            self._close("first_byte_timeout")

    def _headers_overdue(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering the previous request (pipelining): its answer comes first
        if self._partial:
            timeout = ReadTimeout("request headers", self.limits.header_timeout_s)
            self.transport.write(raw_error(timeout, self.limits.retry_after_s))
        self._close("header_timeout")
