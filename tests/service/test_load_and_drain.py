"""Overload, client disconnects and graceful drain, each against its own real `adafocus serve` process."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from model.video import encode_video
from tests.service.conftest import Server, make_bundle, ramp, serve

BOUNDARY = "adafocus-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(video: bytes, **fields: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'.encode())
    return b"".join([*parts, video, f"\r\n--{BOUNDARY}--\r\n".encode()])


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `default` architecture (16 frames at 96 px, K = 4), random weights: slow enough to queue up on CPU."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "default", "default")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return encode_video(tmp_path_factory.mktemp("v") / "v.mp4", ramp(16, 48, 64), "libx264").read_bytes()


@pytest.fixture(scope="module")
def busy(default_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request at a time, a queue of 2, no operator token."""
    yield from serve(
        default_bundle, tmp_path_factory.mktemp("busy"), mode="single", max_batch=1, max_active=1, max_queue=2,
        retry_after_s=2,
    )


def post(server: Server, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", content=body, headers={"Content-Type": CONTENT_TYPE}, timeout=60)


def test_a_full_queue_answers_503_with_retry_after(busy: Server, video: bytes) -> None:
    body = multipart(video)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: post(busy, body), range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert (r.json()["code"], r.headers["retry-after"]) == ("queue_full", "2")
    metrics = httpx.get(f"{busy.url}/metrics").text
    rejected = re.search(r'adafocus_rejected_total\{reason="queue_full"\} (\d+)', metrics)
    assert rejected is not None and int(rejected.group(1)) == statuses.count(503)


def test_without_an_operator_token_budget_changes_are_refused(busy: Server) -> None:
    response = httpx.put(f"{busy.url}/budget", json={"level": "low"}, headers={"Authorization": "Bearer whatever"})
    assert (response.status_code, response.json()["code"]) == (403, "budget_changes_disabled")
    assert "ADAFOCUS_OPERATOR_TOKEN" in response.json()["message"]


@pytest.fixture(scope="module")
def queued(default_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request at a time, a long queue, a 0.6 s deadline per request."""
    yield from serve(
        default_bundle, tmp_path_factory.mktemp("queued"), mode="single", max_batch=1, max_active=1,
        request_timeout_s=0.6,
    )


def test_clients_that_disconnect_are_dropped(queued: Server, video: bytes) -> None:
    body = multipart(video)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with ThreadPoolExecutor(4) as pool:
        busy_work = [pool.submit(post, queued, body) for _ in range(4)]
        for _ in range(3):  # gone right after sending: noticed while reading the body or while decoding
            with socket.create_connection(("127.0.0.1", queued.port)) as sock:
                sock.sendall(head + body)
        assert [f.result().status_code for f in busy_work] == [200] * 4
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{queued.url}/metrics").text
        if 'adafocus_requests_total{status="499"} 3.0' in metrics:
            break
        time.sleep(0.1)
    assert 'adafocus_rejected_total{reason="disconnected"} 3.0' in metrics
    # no compute was spent on them: answered videos are the busy work plus the start-up self-test only
    assert 'adafocus_exits_total{budget="high",reason="max_cubes"} 5.0' in metrics


def test_requests_past_their_deadline_get_504(queued: Server, video: bytes) -> None:
    body = multipart(video)
    with ThreadPoolExecutor(48) as pool:  # 48 in flight, about 25 ms each one at a time: past a 0.6 s deadline
        responses = list(pool.map(lambda _: post(queued, body), range(96)))
    statuses = [r.status_code for r in responses]
    assert 504 in statuses and set(statuses) <= {200, 504}, sorted(set(statuses))
    assert {r.json()["code"] for r in responses if r.status_code == 504} == {"deadline_exceeded"}
    assert max(r.elapsed.total_seconds() for r in responses) < 5.0  # nobody waits far past the deadline


def test_sigterm_drains_in_flight_requests_then_exits(
    tiny_bundle: Path, video: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = Server(tiny_bundle, tmp_path_factory.mktemp("drain") / "server.log")
    try:
        server.wait_ready()
        body = multipart(video, explain="true")
        uploads = []
        for _ in range(3):  # in flight: headers and half the body sent
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.putrequest("POST", "/classify")
            conn.putheader("Content-Type", CONTENT_TYPE)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            conn.send(body[: len(body) // 2])
            uploads.append(conn)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        ready = httpx.get(f"{server.url}/readyz")
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            ready = httpx.get(f"{server.url}/readyz")
        assert (ready.status_code, ready.json()["checks"]["not_draining"]) == (503, False)
        refused = post(server, body)
        assert (refused.status_code, refused.json()["code"]) == (503, "draining")
        for conn in uploads:
            conn.send(body[len(body) // 2 :])
        answers = [conn.getresponse() for conn in uploads]
        assert [a.status for a in answers] == [200, 200, 200]
        assert all(b'"cubes"' in a.read() for a in answers)
        assert server.process.wait(timeout=30) == 0
        assert "drained" in server.log()
    finally:
        server.stop()
