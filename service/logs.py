"""Request IDs and logging: every log line of a request carries its ID; text or one JSON object per line.

``RequestIdMiddleware`` (pure ASGI, outermost) takes the client's ``X-Request-ID`` when it is sane (1-128 of
``A-Z a-z 0-9 . _ : -``; anything else could forge log lines) or makes one, keeps it in a context variable for the
duration of the request, echoes it in the ``X-Request-ID`` response header, and writes the access log line
(method, path without the query string, status, duration; never a header, so never a token). ``/classify``
answers and error bodies carry it too (service/classify/flow.py, service/http/errors.py read ``current_request_id``).

``configure_logging(level, fmt)`` installs one stderr handler on the root logger: ``text`` (human) or ``json``
(``ADAFOCUS_LOG_FORMAT=json``: one object per line with ``ts``, ``level``, ``logger``, ``message``,
``request_id`` and, on access lines, ``method``, ``path``, ``status``, ``duration_ms``, ``client``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
HEADER = "x-request-id"
ACCESS_LOGGER = "service.access"
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "client")
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The ID of the request this code runs for (None outside a request, e.g. in the engine thread)."""
    return _request_id.get()


def accept_request_id(given: str | None) -> str:
    """The client's ID when it is sane, else a fresh one (32 hex digits)."""
    if given is not None and _VALID_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Request ID in, request ID out (header), one access log line per HTTP request."""

    def __init__(self, app: ASGIApp, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == HEADER.encode()), None)
        request_id = accept_request_id(given)
        token = _request_id.set(request_id)
        started = self.clock()
        status = 500  # unless a response starts
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER.encode()]
                message["headers"] = [*headers, (HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug (the error table's `internal`): answered here, inside the request, so that the body, the header
            # and the log line all carry the request ID (Starlette's outer handler would run after it is gone).
            log.exception("unhandled error")
            if started_response:
                raise
            body = json.dumps({"code": "internal", "message": "internal server error", "request_id": request_id})
            await send_with_id(
                {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body.encode()})
        finally:
            client = scope.get("client")
            fields = {
                "method": scope.get("method", ""),
                "path": scope.get("path", ""),  # never the query string
                "status": status,
                "duration_ms": round((self.clock() - started) * 1e3, 3),
                "client": f"{client[0]}:{client[1]}" if client else "-",
            }
            self.log.info(
                '%s "%s %s" %d %.1f ms',
                fields["client"],
                fields["method"],
                fields["path"],
                status,
                fields["duration_ms"],
                extra=fields,
            )
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request's ID (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message``; the brackets only inside a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "-")
        record.rid = f" [{rid}]" if rid != "-" else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "-")
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if rid == "-" else rid,
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                body[name] = getattr(record, name)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """One stderr handler on the root logger with the request-ID filter; replaces any handler installed before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own lines go through the root handler too
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
