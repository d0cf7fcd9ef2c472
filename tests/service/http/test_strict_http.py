"""Strict HTTP/1.1 and JSON bodies (issue 26, items 4 and 5), against a real `adafocus serve` over raw sockets: what
request smuggling through a proxy relies on is refused with one 400 and a close (the HTTP/2 preface, Content-Length
with Transfer-Encoding, bare-LF line ends), a path with a trailing slash is not found whatever its body, and
PUT /budget checks its token before it parses its body, whose nesting depth is capped."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import OPERATOR_TOKEN, Server, serve
from tests.service.http.test_guards import BOUNDARY, chunk, read_answer, upload_body

MAX_JSON_DEPTH = 8
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 3.4: what a client speaking HTTP/2 with prior knowledge sends


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(
        tiny_bundle,
        tmp_path_factory.mktemp("strict"),
        operator_token=OPERATOR_TOKEN,
        max_json_depth=MAX_JSON_DEPTH,
        keep_alive_s=1,
    )


def exchange(server: Server, data: bytes) -> bytes:
    """Send ``data`` at once, then read everything until the server closes the connection (10 s at most)."""
    received = b""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(data)
        sock.settimeout(10)
        try:
            while got := sock.recv(65536):
                received += got
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def one_refusal(received: bytes) -> bool:
    """One answer, a JSON 400 ``bad_http_request``, and nothing after it."""
    return (
        received.startswith(b"HTTP/1.1 400 ")
        and received.count(b"HTTP/1.1 ") == 1
        and b'"code": "bad_http_request"' in received
    )


def test_the_http2_preface_gets_one_400_and_a_close(server: Server) -> None:
    assert one_refusal(exchange(server, PREFACE))


def test_content_length_with_transfer_encoding_is_refused(server: Server) -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"  # a proxy that honours Content-Length forwards this
    request = (
        b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    assert one_refusal(exchange(server, request))


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /healthz HTTP/1.1\nHost: test\n\n", id="every-line"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: test\nX-Smuggle: 1\r\n\r\n", id="one-header-line"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\n", id="the-blank-line"),
        pytest.param(
            b"PUT /budget HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\n\r\n",
            id="a-trailer-line",
        ),
        pytest.param(
            b"PUT /budget HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\r\n0\r\n\r\n",
            id="a-chunk-size-line",
        ),
    ],
)
def test_bare_lf_line_ends_are_refused(server: Server, request_bytes: bytes) -> None:
    assert one_refusal(exchange(server, request_bytes))
    fixed = exchange(server, request_bytes.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert fixed.count(b"HTTP/1.1 ") == 1 and not fixed.startswith(b"HTTP/1.1 400 ")  # with CRLF: answered


def test_a_trailing_slash_path_is_not_found_whatever_its_body(server: Server) -> None:
    big = upload_body(b"\0" * 100_000)  # over ADAFOCUS_MAX_JSON_BYTES: the cap of a route that does not exist
    response = httpx.post(
        f"{server.url}/classify/", content=big, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    small = httpx.post(f"{server.url}/classify/", files={"video": ("v.mp4", b"\0" * 100)})
    assert (small.status_code, small.json()["code"]) == (404, "not_found")  # not a redirect to /classify
    assert (httpx.get(f"{server.url}/healthz/").status_code, httpx.get(f"{server.url}/healthz").status_code) == (
        404,
        200,
    )


def nested(depth: int) -> bytes:
    """``{"thresholds": [[...[0]...]]}`` whose arrays and objects nest ``depth`` deep."""
    return b'{"thresholds": ' + b"[" * (depth - 1) + b"0" + b"]" * (depth - 1) + b"}"


def put_budget(server: Server, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    response = httpx.put(f"{server.url}/budget", content=body, headers=headers)
    return response.status_code, response.json()["code"]


def test_a_deeply_nested_budget_body_gets_json_too_deep(server: Server) -> None:
    assert put_budget(server, b"[" * 5000 + b"]" * 5000, AUTH) == (422, "json_too_deep")  # the 5,000 deep
    assert put_budget(server, nested(MAX_JSON_DEPTH + 1), AUTH) == (422, "json_too_deep")
    assert put_budget(server, nested(MAX_JSON_DEPTH), AUTH) == (422, "invalid_request")  # deep enough to parse
    brackets_in_a_string = json.dumps({"level": "[" * 100}).encode()  # strings do not nest
    assert put_budget(server, brackets_in_a_string, AUTH) == (422, "invalid_budget")


def test_the_operator_token_is_checked_before_the_body_is_read_as_json(server: Server) -> None:
    no_token = {"Content-Type": "application/json"}
    wrong = {**AUTH, "Authorization": "Bearer " + "x" * 30}
    for body in (b"[" * 5000 + b"]" * 5000, b"{not json", b'{"level": "\xff"}'):
        assert put_budget(server, body, no_token) == (401, "unauthorized")
        assert put_budget(server, body, wrong) == (403, "forbidden")
    assert put_budget(server, b"{not json", AUTH) == (422, "invalid_request")
    assert put_budget(server, b'{"level": "\xff"}', AUTH) == (422, "invalid_request")  # not UTF-8: not JSON
    accepted = httpx.put(f"{server.url}/budget", content=b'{"level": "low"}', headers=AUTH)
    assert (accepted.status_code, accepted.json()["name"]) == (200, "low")


def test_a_chunked_budget_body_with_a_token_is_read_whole(server: Server) -> None:
    body = b'{"level": "low"}'
    request = (
        b"PUT /budget HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n\r\n".encode()
        + chunk(body[:5])
        + chunk(body[5:])
        + b"0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        status, _, answer = read_answer(sock)
    assert (status, answer["name"]) == (200, "low")
