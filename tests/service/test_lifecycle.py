"""Overload, client disconnects and graceful drain, each against its own real `adafocus serve` process (real
sockets, real signals); request deadlines and the operator-token refusal in-process, where a test clock passes
the deadline and an event holds the engine, so that the outcome does not depend on the machine's speed."""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from model.video import encode_video
from service.classify.flow import DEADLINE_GRACE_S, within_deadline
from service.engine.engine import Engine
from service.engine.errors import DeadlineExceeded
from tests.service.conftest import (
    ManualClock,
    Server,
    TestClient,
    in_process,
    make_bundle,
    ramp,
    serve,
    service_state,
    wait_until,
)

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


@pytest.fixture(scope="module")
def queued(default_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request at a time, a long queue."""
    yield from serve(default_bundle, tmp_path_factory.mktemp("queued"), mode="single", max_batch=1, max_active=1)


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
    wait_until(
        lambda: 'adafocus_requests_total{status="499"} 3.0' in httpx.get(f"{queued.url}/metrics").text,
        what="the three disconnected requests to be answered 499",
    )
    metrics = httpx.get(f"{queued.url}/metrics").text
    assert 'adafocus_rejected_total{reason="disconnected"} 3.0' in metrics
    # no compute was spent on them: answered videos are the busy work only (the start-up self-test is not counted)
    assert 'adafocus_exits_total{budget="high",reason="max_cubes"} 4.0' in metrics


def test_sigterm_drains_in_flight_requests_then_exits(
    tiny_bundle: Path, video: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = Server(tiny_bundle, tmp_path_factory.mktemp("drain") / "server.log", log_level="DEBUG")
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
        wait_until(  # the route logs each /classify it starts (DEBUG): all three are in flight before the signal
            lambda: "/classify: 3 request(s) in flight" in server.log_path.read_text(errors="replace"),
            what="three requests in flight",
        )
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code != 200, what="readiness to fail")
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
        assert "drained" in server.log_path.read_text(errors="replace")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- in-process
@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def app(tiny_bundle: Path, clock: ManualClock) -> Iterator[TestClient]:
    """One request at a time, a queue of 2, no operator token, the default 30 s deadline on a clock the tests move."""
    yield from in_process(tiny_bundle, clock, mode="single", max_batch=1, max_active=1, max_queue=2, retry_after_s=2)


class HeldEngine:
    """Blocks the engine's runner thread (a job on it waits for an event) until ``release``: requests queue up."""

    def __init__(self, engine: Engine) -> None:
        self._holding, self._gate = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=engine.call_on_runner, args=(self._hold,), daemon=True)
        self._thread.start()
        assert self._holding.wait(30), "the engine's runner thread did not pick up the hold"

    def _hold(self) -> None:
        self._holding.set()
        self._gate.wait(60)

    def release(self) -> None:
        self._gate.set()
        self._thread.join(30)


def test_requests_past_their_deadline_get_504(app: TestClient, clock: ManualClock, video: bytes) -> None:
    engine = service_state(app).engine
    assert engine is not None
    body = multipart(video)
    requests = 2  # the queue's length
    held = HeldEngine(engine)
    with ThreadPoolExecutor(requests) as pool:
        try:
            futures = [pool.submit(post_to, app, body) for _ in range(requests)]
            wait_until(lambda: engine.queue_depth == requests, what="every request queued in the held engine")
            clock.advance(60.0)  # every queued request is now 30 s past its deadline
        finally:
            held.release()
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [504] * requests, [r.text for r in responses]
    assert {r.json()["code"] for r in responses} == {"deadline_exceeded"}
    assert max(r.elapsed.total_seconds() for r in responses) < 5.0  # nobody waits far past the deadline
    # the engine expired them (its first step after the hold), not the HTTP side's own wait
    assert f'adafocus_rejected_total{{reason="deadline"}} {float(requests)}' in app.get("/metrics").text
    after = post_to(app, body)  # a new request gets a new deadline on the moved clock
    assert after.status_code == 200, after.text


def test_a_full_queue_answers_503_with_retry_after_while_the_engine_is_held(app: TestClient, video: bytes) -> None:
    engine = service_state(app).engine
    assert engine is not None
    body = multipart(video)
    rejected_before = rejected(app, "queue_full")
    held = HeldEngine(engine)
    with ThreadPoolExecutor(2) as pool:
        try:
            queued = [pool.submit(post_to, app, body) for _ in range(2)]
            wait_until(lambda: engine.queue_depth == 2, what="the queue to fill")
            refused = post_to(app, body)  # the queue is full until the engine moves: refused, deterministically
        finally:
            held.release()
        answered = [f.result() for f in queued]
    assert (refused.status_code, refused.json()["code"], refused.headers["retry-after"]) == (503, "queue_full", "2")
    assert [r.status_code for r in answered] == [200, 200], [r.text for r in answered]
    assert rejected(app, "queue_full") == rejected_before + 1


def rejected(client: httpx.Client, reason: str) -> int:
    found = re.search(rf'adafocus_rejected_total\{{reason="{reason}"\}} (\d+)', client.get("/metrics").text)
    return 0 if found is None else int(float(found.group(1)))


def test_the_http_side_gives_up_at_the_deadline_when_the_engine_does_not_answer(app: TestClient) -> None:
    """The wait for a decode or the engine ends at deadline + grace, answered or not (here: long passed)."""
    state = service_state(app)

    async def wait_past_deadline() -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        work, disconnect = loop.create_future(), loop.create_future()
        with pytest.raises(DeadlineExceeded, match="no answer within the request timeout of 30 s"):
            await within_deadline(state, work, disconnect, state.clock() - DEADLINE_GRACE_S - 1.0)
        return work

    assert asyncio.run(wait_past_deadline()).cancelled()  # the work it waited for is given up


def test_without_an_operator_token_budget_changes_are_refused(app: TestClient) -> None:
    response = app.put("/budget", json={"level": "low"}, headers={"Authorization": "Bearer whatever"})
    assert (response.status_code, response.json()["code"]) == (403, "budget_changes_disabled")
    assert "ADAFOCUS_OPERATOR_TOKEN" in response.json()["message"]


def post_to(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/classify", content=body, headers={"Content-Type": CONTENT_TYPE})
