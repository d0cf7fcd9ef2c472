"""A cut-off upload is never decoded (service/classify/upload.py): a multipart body that ends before its closing
boundary, or before its Content-Length, is 400 ``incomplete_upload``; the reader itself, and a real server on a raw
socket (Content-Length of half the body with only that half sent; half the body with the whole Content-Length)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from model.video import encode_video
from service.classify.upload import BadUpload, IncompleteUpload, Upload, parse_sampling, read_upload
from tests.service.conftest import Server, ramp, serve, wait_until

BOUNDARY = "cut-off-test"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form(video: bytes, **fields: str) -> bytes:
    """A whole multipart body: the fields, then the video, then the closing boundary."""
    body = b"".join(part(name, value.encode()) for name, value in fields.items())
    return body + part("video", video, "clip.mp4") + f"--{BOUNDARY}--\r\n".encode()


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def read(body: bytes, content_length: int | None = None) -> Upload:
    length = None if content_length is None else str(content_length)
    return asyncio.run(read_upload(CONTENT_TYPE, length, chunks(body), 1_000_000, 1_000_000, 8))


def test_sampling_has_one_rule_for_every_field_that_gives_it() -> None:
    assert [parse_sampling(None), parse_sampling("exact"), parse_sampling("fast")] == [None, "exact", "fast"]
    for value in ("Fast", "", "legacy", " fast", 3, True):
        with pytest.raises(BadUpload) as raised:
            parse_sampling(value)
        assert str(raised.value) == f"form field 'sampling' must be one of exact, fast, got {str(value)!r}"
    with pytest.raises(BadUpload) as raised:
        parse_sampling("best", "parameter")
    assert str(raised.value) == "parameter 'sampling' must be one of exact, fast, got 'best'"


def test_a_whole_body_is_read() -> None:
    body = form(b"\x00video bytes\xff" * 300, budget="low")
    upload = read(body, len(body))
    with upload.spool:
        assert (upload.spool.source(), upload.fields) == (b"\x00video bytes\xff" * 300, {"budget": "low"})


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_a_body_cut_before_its_closing_boundary_is_incomplete(cut: float) -> None:
    body = form(b"v" * 5000)
    short = body[: int(len(body) * cut)]
    with pytest.raises(IncompleteUpload, match=rf"ended after {len(short)} bytes, before its closing boundary"):
        read(short, len(short))  # its Content-Length matches: only the multipart framing shows the cut
    with pytest.raises(IncompleteUpload, match="before its closing boundary"):
        read(short)  # chunked: no Content-Length at all


def test_a_body_short_of_its_content_length_is_incomplete() -> None:
    body = form(b"v" * 5000)
    with pytest.raises(IncompleteUpload, match=rf"ended after 3000 of the {len(body)} bytes its Content-Length"):
        read(body[:3000], len(body))


def test_a_repeated_form_field_is_refused_by_name() -> None:
    body = part("budget", b"low") + part("budget", b"high") + form(b"v" * 100)
    with pytest.raises(BadUpload, match="form field 'budget' is given more than once"):
        read(body)


# ------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("cut-off"))


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return encode_video(tmp_path_factory.mktemp("videos") / "clip.webm", ramp(12, 48, 64, seed=5), "libvpx-vp9")\
        .read_bytes()


def raw_post(server: Server, body: bytes, content_length: int, then: str = "read") -> bytes:
    """POST /classify with this body and Content-Length on a raw socket, then ``read`` the answer, or shut the write
    side and read it (``half_close``), or ``close`` at once; what the server sent before it closed."""
    head = (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        if then == "close":
            return b""
        if then == "half_close":
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n\r\n" not in received or (len(received.partition(b"\r\n\r\n")[2]) < content_length_of(received)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def content_length_of(response: bytes) -> int:
    found = re.search(rb"(?im)^content-length: (\d+)\r$", response.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


def metric(server: Server, sample: str) -> float:
    """One sample of the server's metrics (0 when absent)."""
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def decodes(server: Server) -> float:
    """Uploads the server has decoded so far (the decode histogram's count)."""
    return metric(server, "adafocus_decode_duration_seconds_count")


def test_a_truncated_body_is_refused_and_never_decoded(server: Server, video: bytes) -> None:
    """The attack of issue 26: a Content-Length of half the body, and only that half sent."""
    body = form(video, explain="true")
    before = decodes(server)
    half = body[: len(body) // 2]
    answer = raw_post(server, half, len(half))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"code":"incomplete_upload"' in answer and b"before its closing boundary" in answer
    whole = raw_post(server, body, len(body))  # the same upload, whole, on the same server
    assert whole.startswith(b"HTTP/1.1 200 ") and b'"label"' in whole
    assert decodes(server) == before + 1  # the whole one only


def answered(server: Server) -> dict[str, float]:
    """/classify requests the server has answered (or recorded, for a client gone), by status."""
    text = httpx.get(f"{server.url}/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^adafocus_requests_total\{status="(\d+)"\} (\S+)$', text, re.M)}


def test_a_body_short_of_its_content_length_is_never_decoded(server: Server, video: bytes) -> None:
    """Half the body with the whole body's Content-Length, then the client closes the connection, or its write side
    only: nothing is decoded, nothing answered 200."""
    body = form(video)
    before, seen = decodes(server), answered(server)
    for then in ("close", "half_close"):
        raw_post(server, body[: len(body) // 2], len(body), then)
    wait_until(lambda: sum(answered(server).values()) == sum(seen.values()) + 2, what="both requests recorded")
    assert decodes(server) == before
    assert answered(server).get("200") == seen.get("200")


def test_a_client_that_ends_its_side_early_is_answered_incomplete_upload(server: Server, video: bytes) -> None:
    """A client that shuts its write side mid-body (half the body sent, the full Content-Length declared) still
    reads its answer: 400 ``incomplete_upload``, and nothing is decoded."""
    body = form(video)
    seen = answered(server)
    answer = raw_post(server, body[: len(body) // 2], len(body), "half_close")
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"incomplete_upload"' in answer
    assert f"ended after {len(body) // 2} of the {len(body)} bytes".encode() in answer
    assert raw_post(server, body[: len(body) // 2], len(body), "close") == b""
    wait_until(lambda: answered(server).get("400", 0) == seen.get("400", 0) + 2, what="both answered 400")
