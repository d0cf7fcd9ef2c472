"""h11's server connection, strict where request smuggling through a proxy relies on a lenient parser.

h11 (uvicorn's HTTP/1.1 parser here, service/http/connection_guard.py) accepts three things a proxy in front may read
differently, so that one request to the proxy becomes two here, or the other way round:

- a bare LF as a line end, in a request head and in a chunked body's trailer (RFC 9112 2.2 lets a recipient accept
  it; a proxy that does not sees one long line where h11 sees two, or a trailer that goes on where h11's ended);
- Content-Length together with Transfer-Encoding (h11 lets chunked win; RFC 9112 6.1 allows a server to reject
  such a request, and a proxy that honours Content-Length forwards the bytes after it as a request of their own);
- any HTTP/x.y version, so the HTTP/2 prior-knowledge preface ``PRI * HTTP/2.0`` is read as a request (then its
  ``SM`` line as a second one).

Each is an h11 protocol error, which uvicorn's protocol answers with its 400 (a JSON 400 ``bad_http_request`` and a
close, in the connection guard). A chunk-size line ended by a bare LF h11 refuses by itself.
"""

from __future__ import annotations

import re

import h11
from h11._receivebuffer import ReceiveBuffer

BARE_LF = re.compile(rb"(?<!\r)\n")
LINES_END = re.compile(rb"\n\r?\n")  # where h11 ends a head or a trailer (ReceiveBuffer.maybe_extract_lines)
HTTP_1 = frozenset({b"1.0", b"1.1"})


class _CrlfLines(ReceiveBuffer):
    """h11's receive buffer whose heads and trailers, the parts it reads as lines, must end every line with CRLF."""

    def maybe_extract_lines(self) -> list[bytearray] | None:
        data = bytes(self)  # not parsed yet; called for a head or a trailer only, never for body bytes
        if not data.startswith(b"\r\n"):  # else an empty trailer (or h11's "no request line")
            end = LINES_END.search(data)
            if data.startswith(b"\n") or BARE_LF.search(data, 0, len(data) if end is None else end.end()):
                raise h11.LocalProtocolError("a line ends with a bare LF: HTTP/1.1 lines end with CRLF")
        return super().maybe_extract_lines()


class StrictConnection(h11.Connection):
    """An ``h11.Connection`` in the server role that refuses bare-LF line ends, Content-Length with
    Transfer-Encoding, and versions other than HTTP/1.0 and HTTP/1.1."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        # NOTE: h11 has no option for bare LF and splits lines in its receive buffer; the fresh, empty buffer it
        # made is replaced by the strict one (check_parser verifies at start-up that h11 still has it)
        self._receive_buffer = _CrlfLines()

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = super().next_event()
        if isinstance(event, h11.Request):
            _refuse_ambiguous(event)
        return event


def check_parser() -> None:
    """Fail at start-up, not on the first request, if h11 no longer keeps the buffer ``StrictConnection`` replaces."""
    if not isinstance(getattr(h11.Connection(h11.SERVER), "_receive_buffer", None), ReceiveBuffer):
        raise RuntimeError("this h11 keeps no receive buffer to replace: service/http/strict_http.py needs updating")


def _refuse_ambiguous(request: h11.Request) -> None:
    if request.http_version not in HTTP_1:
        version = request.http_version.decode("ascii", "replace")
        raise h11.RemoteProtocolError(f"HTTP/{version} is not served here: HTTP/1.1 only (no HTTP/2 preface)")
    names = {name for name, _ in request.headers}
    if {b"content-length", b"transfer-encoding"} <= names:
        raise h11.RemoteProtocolError("Content-Length with Transfer-Encoding: send one of them (RFC 9112 6.1)")
