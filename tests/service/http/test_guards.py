"""Hostile clients against a real `adafocus serve` (real sockets, real signals): oversized and endless bodies before
authentication, endless form fields, connections that never finish their headers, a connection flood, clients that
write their whole body before reading, a drain timeout shorter than the work, Ctrl-C to the process group.

Each attack is a bounded client (it stops at the server's answer or at a fixed budget of bytes) and each test
asserts the exact answer and, where memory was the problem, that the server's peak RSS stayed within a bound."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import pytest

from model.video import encode_video
from tests.model.test_video import raw_h264
from tests.service.conftest import OPERATOR_TOKEN, Server, ramp, serve, wait_until

MAX_UPLOAD = 300_000
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 6
RSS_BOUND = 40 * 1024 * 1024  # what one attack may add to the server's peak memory (it cost 1.0-1.4 GB before)
BOUNDARY = "hardening-boundary"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(
        tiny_bundle,
        tmp_path_factory.mktemp("hardening"),
        operator_token=OPERATOR_TOKEN,
        max_upload_bytes=MAX_UPLOAD,
        header_timeout_s=HEADER_TIMEOUT_S,
        keep_alive_s=HEADER_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
        request_timeout_s=3,
        retry_after_s=2,
        max_pixels_per_frame=MAX_PIXELS,
    )


MAX_PIXELS = 100 * 100  # the switching stream below goes from 64x64 to 128x128


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return encode_video(tmp_path_factory.mktemp("v") / "v.mp4", ramp(8, 32, 32), "libx264").read_bytes()


def memory(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of a process in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]).encode()


def upload_head(*headers: str) -> bytes:
    return head("POST", "/classify", f"Content-Type: multipart/form-data; boundary={BOUNDARY}", *headers)


def upload_body(video: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'.encode()
        + video
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def read_answer(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], dict[str, object]]:
    """One HTTP answer from a raw socket: (status, headers, JSON body)."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    body = json.loads(response.read())
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def stream_until_answered(sock: socket.socket, pieces: Iterator[bytes], budget: int) -> int:
    """Write ``pieces`` until the server answers (readable socket) or ``budget`` bytes went out; bytes written."""
    sent = 0
    for piece in pieces:
        if select.select([sock], [], [], 0)[0] or sent > budget:
            break
        sock.sendall(piece)
        sent += len(piece)
    assert select.select([sock], [], [], 30)[0], "no answer"
    return sent


# ------------------------------------------------------------------------------ A: bodies before authentication
def test_an_unauthenticated_huge_budget_body_is_refused_from_content_length(server: Server) -> None:
    _, peak_before = memory(server.process.pid)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        declared = 500 * 1024 * 1024  # the reproduction's 500 MB, announced; the client sends 1 MB of it at most
        sock.sendall(head("PUT", "/budget", "Content-Type: application/json", f"Content-Length: {declared}"))
        started = time.monotonic()
        sent = stream_until_answered(sock, iter([b" " * 65536] * 16), 1 << 20)
        status, headers, body = read_answer(sock)
    assert (status, body["code"]) == (413, "body_too_large")
    assert headers["connection"] == "close"
    assert time.monotonic() - started < 2.0 and sent <= 1 << 20
    assert memory(server.process.pid)[1] <= peak_before + RSS_BOUND


def test_an_unauthenticated_chunked_budget_body_is_refused_while_streaming(server: Server) -> None:
    _, peak_before = memory(server.process.pid)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head("PUT", "/budget", "Content-Type: application/json", "Transfer-Encoding: chunked"))
        sent = stream_until_answered(sock, (chunk(b" " * 65536) for _ in range(8000)), 500 * 1024 * 1024)
        status, _, body = read_answer(sock)
    assert (status, body["code"]) == (413, "body_too_large")
    assert sent < 64 * 1024 * 1024  # refused at 16 KiB; what was sent meanwhile sat in socket buffers, not the heap
    assert memory(server.process.pid)[1] <= peak_before + RSS_BOUND


def test_a_small_budget_body_still_needs_the_token(server: Server) -> None:
    response = httpx.put(f"{server.url}/budget", json={"level": "low"})
    assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    over = httpx.put(
        f"{server.url}/budget",
        content=b"{" + b" " * 20000 + b"}",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"},
    )
    assert (over.status_code, over.json()["code"]) == (413, "body_too_large")  # the cap holds with the token too


# ------------------------------------------------------------------------------ B: endless form fields
def test_endless_chunked_form_fields_are_refused(server: Server) -> None:
    _, peak_before = memory(server.process.pid)
    field = b"x" * 1000

    def fields() -> Iterator[bytes]:  # the reproduction: 1,000,000 fields of 1,000 bytes, chunked
        for i in range(1_000_000):
            part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + field + b"\r\n"
            yield chunk(part)

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(upload_head("Transfer-Encoding: chunked"))
        sent = stream_until_answered(sock, fields(), 64 * 1024 * 1024)
        status, _, body = read_answer(sock)
    assert (status, body["code"]) == (413, "too_many_fields")
    assert sent < 64 * 1024 * 1024
    assert memory(server.process.pid)[1] <= peak_before + RSS_BOUND


def test_field_bytes_count_towards_the_upload_limit(server: Server) -> None:
    not_a_video = b"\0" * (MAX_UPLOAD - 4000)  # under the limit alone; refused by the decoder, after the upload

    def post(fields: int) -> httpx.Response:
        data = {f"f{i}": "x" * 1000 for i in range(fields)}
        return httpx.post(f"{server.url}/classify", files={"video": ("v.mp4", not_a_video)}, data=data, timeout=60)

    under, over = post(3), post(5)  # 3 KB of fields fit in the 4 KB left; 5 KB do not
    assert (under.status_code, under.json()["code"]) == (415, "not_a_video")
    assert (over.status_code, over.json()["code"]) == (413, "too_large")


# ------------------------------------------------------------------------------ D: connections
def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` and what it sent before."""
    started, data = time.monotonic(), b""
    sock.settimeout(HEADER_TIMEOUT_S * 10)
    while chunk_ := sock.recv(65536):
        data += chunk_
    return time.monotonic() - started, data


def test_an_idle_connection_is_closed_at_the_header_deadline(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        seconds, data = closed_after(sock)
    assert data == b""  # nothing was asked: nothing to answer
    assert HEADER_TIMEOUT_S - 0.1 <= seconds < HEADER_TIMEOUT_S + 1.5


def test_half_headers_and_a_byte_drip_get_408_at_the_deadline(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as half:
        half.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\n")
        seconds, data = closed_after(half)
    assert data.startswith(b"HTTP/1.1 408 ") and b'"code": "request_timeout"' in data
    assert seconds < HEADER_TIMEOUT_S + 1.5
    request = head("GET", "/healthz", "X-Slow: " + "s" * 200)
    with socket.create_connection(("127.0.0.1", server.port)) as drip:
        started = time.monotonic()
        try:
            for byte in request:  # a byte every 50 ms: the whole head would take 11 s; the deadline does not move
                drip.sendall(bytes([byte]))
                time.sleep(0.05)
                if select.select([drip], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, data = closed_after(drip)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.5


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head("GET", "/healthz"))
        status, _, body = read_answer(sock)
        assert (status, body) == (200, {"status": "ok"})
        seconds, data = closed_after(sock)
    assert data == b"" and seconds < HEADER_TIMEOUT_S + 1.5


def test_connections_beyond_the_cap_get_503_with_retry_after(server: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS)]
    for sock in held:  # each one busy with a request (an idle one would be closed for the new connection instead)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(HEADER_TIMEOUT_S / 4)  # the server has read them (their header deadline is still far)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.sendall(head("GET", "/healthz"))
            status, headers, body = read_answer(extra)
        assert (status, body["code"], headers["retry-after"], headers["connection"]) == (
            503,
            "too_many_connections",
            "2",
            "close",
        )
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, what="room for a new connection")


def test_garbage_gets_a_json_400(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        _, data = closed_after(sock)
    assert data.startswith(b"HTTP/1.1 400 ") and b'"code": "bad_http_request"' in data


# ------------------------------------------------------------------------------ E: answers before the body's end
def test_a_client_that_writes_its_whole_body_first_gets_the_413(server: Server) -> None:
    body = upload_body(b"\0" * (10 * MAX_UPLOAD))
    for length in (f"Content-Length: {len(body)}", None):  # refused from Content-Length, and while streaming
        framing = [length] if length else ["Transfer-Encoding: chunked"]
        payload = (
            body
            if length
            else b"".join(chunk(body[i : i + 65536]) for i in range(0, len(body), 65536)) + (b"0\r\n\r\n")
        )
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(upload_head("Connection: close", *framing) + payload)  # the whole body, then read
            status, headers, answer = read_answer(sock)
            assert sock.recv(1) == b""  # then a clean close (a reset would raise here)
        assert (status, answer["code"], headers["connection"]) == (413, "too_large", "close")


def test_a_slow_upload_gets_its_504_after_writing_the_rest(server: Server, video: bytes) -> None:
    body = upload_body(video)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(upload_head("Connection: close", f"Content-Length: {len(body)}") + body[:100])
        assert select.select([sock], [], [], 30)[0]  # the server answers at the 3 s deadline ...
        sock.sendall(body[100:])  # ... and the client, unaware, writes the rest before reading
        status, _, answer = read_answer(sock)
    assert (status, answer["code"]) == (504, "deadline_exceeded")


# ------------------------------------------------------------------------------ F, I: shutdown
def half_upload(port: int, body: bytes) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/classify")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    return conn


def test_work_past_the_drain_timeout_gets_a_json_503(tiny_bundle: Path, video: bytes, tmp_path: Path) -> None:
    server = Server(tiny_bundle, tmp_path / "server.log", drain_timeout_s=1, log_level="DEBUG", retry_after_s=2)
    try:
        server.wait_ready()
        stuck = [half_upload(server.port, upload_body(video)) for _ in range(2)]  # never finished by the client
        wait_until(lambda: "/classify: 2 request(s) in flight" in server.log(), what="two requests in flight")
        server.process.send_signal(signal.SIGTERM)
        answers = [conn.getresponse() for conn in stuck]
        assert [(a.status, json.loads(a.read())["code"], a.getheader("retry-after")) for a in answers] == [
            (503, "draining", "2")
        ] * 2
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_sigint_to_the_process_group_loses_no_in_flight_request(
    tiny_bundle: Path, video: bytes, tmp_path: Path
) -> None:
    server = Server(tiny_bundle, tmp_path / "server.log", new_session=True, log_level="DEBUG")
    try:
        server.wait_ready()
        body = upload_body(video)
        uploads = [half_upload(server.port, body) for _ in range(4)]
        wait_until(lambda: "/classify: 4 request(s) in flight" in server.log(), what="four requests in flight")
        os.killpg(server.process.pid, signal.SIGINT)  # Ctrl-C: the server and its decoder workers alike
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, what="the drain to begin")
        for conn in uploads:
            conn.send(body[len(body) // 2 :])
        answers = [conn.getresponse() for conn in uploads]
        assert [a.status for a in answers] == [200] * 4, [a.read()[:200] for a in answers]
        assert server.process.wait(timeout=30) == 0
        log = server.log()
        assert "Traceback" not in log and "KeyboardInterrupt" not in log and "decoder_crashed" not in log
    finally:
        server.stop()


def test_a_stream_that_switches_to_larger_frames_gets_frame_too_large(server: Server) -> None:
    switch = raw_h264(ramp(10, 64, 64)) + raw_h264(ramp(10, 128, 128))  # the header says 64x64
    answer = httpx.post(f"{server.url}/classify", files={"video": ("s.h264", switch)}, timeout=30)
    assert answer.status_code == 422 and answer.json()["code"] == "frame_too_large"
    assert "128x128" in answer.json()["message"]


def test_two_frames_far_apart_are_not_counted_twice_as_long(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "far.mp4"
    with av.open(str(path), mode="w") as container:  # two frames 590 s apart: lasts 590 s, under the 600 s limit
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i, pts in enumerate((0, 590)):
            frame = av.VideoFrame.from_ndarray(ramp(1, 32, 32)[0] // (i + 1), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    answer = httpx.post(f"{server.url}/classify", files={"video": ("far.mp4", path.read_bytes())}, timeout=30)
    assert answer.status_code == 200, answer.text
