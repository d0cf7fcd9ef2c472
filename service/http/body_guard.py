"""Request bodies before any route sees them (an ASGI middleware): small bodies capped, unread bodies discarded.

- Every route but the streamed uploads (/classify, read by service/classify/upload.py under its own limits, and the
  OIP inference bodies, service/http/oip_tensors.py) gets a small
  JSON body: over ``max_json_bytes`` it is refused from Content-Length at once, or as soon as the streamed count
  passes the cap, and a body slower than ``read_timeout_s`` is refused too. This runs before the route, so before
  authentication: an unauthenticated client can make the server hold at most ``max_json_bytes``. A request that
  has no route (``/classify/``, a wrong method) is answered 404 or 405 without its body being read first.
- Its JSON is checked by the route, after authentication (``check_json``): nested at most ``max_json_depth`` deep,
  measured without parsing (the parser recurses once per level), and UTF-8 JSON text.
- An answer sent before the request body was read to its end (a 413 from Content-Length, a 413 or 422 while
  streaming, a 504 for a slow upload, a 503 at shutdown) would otherwise reach a client that writes its whole body
  before reading as a TCP reset, once the server closes with unread bytes. So the answer goes out, then the rest
  of the body is read and discarded (for at most ``linger_s``), and only then is the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_response, to_api_error
from service.http.guard_errors import BadJson, BodyTooLarge, JsonTooDeep, ReadTimeout
from service.settings import Settings

# a JSON string, or an unterminated one up to the end: one pass, no backtracking (the two alternatives are disjoint)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class BodyLimits:
    """The guard's limits; their defaults are the settings' (``of``), written there only."""

    max_json_bytes: int  # bodies of every route not in ``streamed``
    read_timeout_s: float  # a small body must arrive within this
    linger_s: float  # at most this long discarding an unread body after the answer
    retry_after_s: int
    streamed: frozenset[str] = frozenset({"/classify"})  # routes that stream their body under their own limits

    def streams(self, path: str) -> bool:
        """``path`` reads its own body under its own limits (/classify, the OIP inference route)."""
        return path in self.streamed or (path.startswith("/v2/models/") and path.endswith("/infer"))

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        s = settings
        return cls(s.max_json_bytes, s.header_timeout_s, s.linger_s, s.retry_after_s)


class _Body:
    """The request body as the app reads it: whether it has reached its end, and a discard for the rest."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers = dict(scope.get("headers") or [])
        self.length = headers.get(b"content-length")
        # a request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3)
        self.complete = not (b"transfer-encoding" in headers or (self.length not in (None, b"0")))
        self._receive = receive

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True  # the last chunk, or the client is gone
        return message

    async def discard(self, seconds: float) -> bool:
        """Read and drop the rest of the body; False when it did not end within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                while not self.complete:
                    await self.receive()
        except TimeoutError:
            return False
        return True


def check_json(body: bytes, max_depth: int) -> None:
    """Refuse a JSON body whose arrays and objects nest deeper than ``max_depth`` (``JsonTooDeep``), or that is not
    UTF-8 JSON text (``BadJson``); the route's own parser then parses it."""
    depth = 0
    for bracket in _STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        if depth > max_depth:
            raise JsonTooDeep(max_depth)
    try:
        json.loads(body.decode("utf-8"))  # within the depth limit the parser's recursion is bounded
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJson(f"the body is not UTF-8 JSON: {exc}") from None


def routed_by(router: Router) -> Callable[[Scope], bool]:
    """Whether ``router`` has a route for a request (its path and its method)."""

    def routed(scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in router.routes)

    return routed


class BodyGuard:
    """ASGI middleware: small bodies capped before the route runs; unread bodies discarded after the answer.
    ``routed`` (``routed_by``): whether a request has a route; None: every request has one."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, routed: Callable[[Scope], bool] | None = None) -> None:
        self.app, self.limits = app, limits
        self.routed = routed or (lambda _: True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(scope, receive)
        send = self._lingering(body, send)
        app_receive: Receive = body.receive
        if not self.limits.streams(scope["path"]) and not body.complete and self.routed(scope):
            try:
                app_receive = await self._read_small(body)
            except (BodyTooLarge, ReadTimeout) as exc:
                await error_response(to_api_error(exc, self.limits.retry_after_s))(scope, body.receive, send)
                return
        await self.app(scope, app_receive, send)

    async def _read_small(self, body: _Body) -> Receive:
        """The whole small body, read now (within its limits); returns a receive that replays it."""
        cap = self.limits.max_json_bytes
        if body.length is not None and (not body.length.isdigit() or int(body.length) > cap):
            raise BodyTooLarge(cap)
        chunks: list[bytes] = []
        size = 0
        last: Message = {"type": "http.request", "body": b"", "more_body": False}
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):
                while not body.complete:
                    last = await body.receive()
                    size += len(last.get("body", b""))
                    if size > cap:
                        raise BodyTooLarge(cap)
                    chunks.append(last.get("body", b""))
        except TimeoutError:
            raise ReadTimeout("request body", self.limits.read_timeout_s) from None
        replay: list[Message] = [
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            if last["type"] == "http.request"
            else last
        ]

        async def receive() -> Message:
            return replay.pop() if replay else await body.receive()

        return receive

    def _lingering(self, body: _Body, send: Send) -> Send:
        """``send`` that, when the answer is ready before the body was read to its end, closes the connection
        only after discarding the rest of the body (bounded by ``linger_s``)."""
        lingering = False

        async def wrapped(message: Message) -> None:
            nonlocal lingering
            if message["type"] == "http.response.start" and not body.complete:
                lingering = True  # the connection cannot be reused: the rest of the body is discarded, then closed
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            if lingering and message["type"] == "http.response.body" and not message.get("more_body", False):
                await send({**message, "more_body": True})  # the client has its whole answer now
                await body.discard(self.limits.linger_s)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        return wrapped
