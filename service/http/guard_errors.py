"""Limits on what one client may hold: the domain errors of the body and connection guards (no HTTP here).

service/http/body_guard.py (bodies of requests) and service/http/connection_guard.py (sockets) raise or answer them; the
error table in service/http/errors.py gives each its status and code.
"""

from __future__ import annotations


class BodyTooLarge(Exception):
    """A JSON request body (everything but the streamed /classify upload) over ``max_json_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body exceeds the limit of {limit} bytes for this endpoint")
        self.limit = limit



class ReadTimeout(Exception):
    """The client did not send a request's headers (or a JSON body) within ``header_timeout_s``."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"the {what} did not arrive within {seconds:g} s")


class TooManyConnections(Exception):
    """The server already holds ``max_connections`` open connections."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server holds its limit of {limit} connections; retry later")


class MalformedHttp(Exception):
    """Bytes that are not an HTTP/1.1 request (answered by the connection itself, before any route)."""


class JsonTooDeep(Exception):
    """A JSON body whose arrays and objects nest deeper than ``max_json_depth``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the JSON body nests arrays and objects deeper than {limit} levels")


class BadJson(Exception):
    """A JSON body that is not UTF-8 JSON text (RFC 8259)."""
