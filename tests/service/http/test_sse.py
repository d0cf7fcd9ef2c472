"""A client that disconnects from an anytime stream frees its engine slot at the next step (real server), and
leaves no task of its stream behind (the server in this process, to count its tasks).

The bundle has K = 3000 cubes and its only level never exits early: one request takes about a second and a half
of steps on one CPU thread, so the client's disconnect after the first event arrives long before the last cube."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import torch
import uvicorn

from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import save_bundle
from model.config import get_config
from model.macs import cost_report
from model.video import encode_video
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import Server, ramp, serve, wait_until

CUBES = 3000


def long_bundle(path: Path) -> Path:
    """The tiny network with K = CUBES and one level that uses every cube."""
    torch.manual_seed(0)
    model = AdaFocusV3(get_config("tiny").replace(num_cubes=CUBES)).eval()
    gmacs = cost_report(model).exit_gmacs[-1]
    level = BudgetLevel("all", (0.0,) * (CUBES + 1), gmacs, 0.5)
    return save_bundle(path, model, BudgetTable("entropy", (level,), "all"), "# K = 3000 cubes, for tests\n")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_bundle(tmp_path_factory.mktemp("bundle") / "long")


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(bundle, tmp_path_factory.mktemp("disconnect"), max_active=1, max_batch=1, warmup="false")


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def multipart(video: bytes) -> tuple[bytes, str]:
    boundary = "adafocus-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="clip.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return head + video + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def first_event_then_leave(url: str, video: bytes) -> bytes:
    """POST /classify as a stream on a raw socket, read up to the end of the first progress event, close; the
    bytes read."""
    body, content_type = multipart(video)
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (
            f"POST /classify HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body)
        received = b""
        while b"\n\n" not in received.partition(b"event: progress")[2]:  # the whole first progress event
            chunk = sock.recv(4096)
            assert chunk, f"the server closed the stream early: {received!r}"
            received += chunk
    return received  # the client left after the glance


def test_a_client_that_disconnects_frees_its_slot(server: Server, tmp_path: Path) -> None:
    video = encode_video(tmp_path / "clip.mp4", ramp(12, 48, 64, seed=3), "libx264").read_bytes()
    cancelled = 'adafocus_rejected_total{reason="cancelled"}'
    before = httpx.get(f"{server.url}/metrics").text
    assert metric(before, "adafocus_active_requests") == 0.0

    received = first_event_then_leave(server.url, video)
    assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
    assert b"event: result" not in received

    def settled() -> bool:
        text = httpx.get(f"{server.url}/metrics").text
        return (
            metric(text, cancelled) == metric(before, cancelled) + 1 and metric(text, "adafocus_active_requests") == 0.0
        )

    wait_until(settled, timeout=30.0, what="the cancelled stream to free its slot")
    after = httpx.get(f"{server.url}/metrics").text
    ok = 'adafocus_requests_total{status="200"}'
    assert metric(after, ok) == metric(before, ok)  # the stream was not answered

    answer = httpx.post(f"{server.url}/classify", files={"video": video}, timeout=60)
    assert answer.status_code == 200
    assert (answer.json()["cubes_used"], answer.json()["exit_reason"]) == (CUBES, "max_cubes")
    final = httpx.get(f"{server.url}/metrics").text
    assert metric(final, ok) == metric(before, ok) + 1
    assert metric(final, cancelled) == metric(before, cancelled) + 1
    assert metric(final, "adafocus_active_requests") == 0.0


class ThreadServer:
    """uvicorn serving the app on a free port from a thread of this process (h11, as ``adafocus serve``): the test
    can count the server loop's tasks and see what its loop reports (``Task was destroyed but it is pending!``)."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, lifespan="on", http="h11")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []  # the messages the loop's exception handler got
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(str(context.get("message"))))
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True)

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def tasks(self) -> Counter[str]:
        """The server loop's pending tasks by coroutine name, after a full garbage collection."""

        async def names() -> Counter[str]:
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            return Counter(task.get_coro().__qualname__ for task in tasks)  # type: ignore[union-attr]

        gc.collect()  # a task nobody refers to any more is destroyed here, and the loop is told
        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(timeout=30)


@contextmanager
def thread_server(bundle: Path, **settings: Any) -> Iterator[ThreadServer]:
    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith("ADAFOCUS_"):
                env.delenv(key)
        config = Settings(bundle=bundle, device="cpu", decode_workers=2, torch_threads=1, **settings)
    running = ThreadServer(config)
    running.thread.start()
    try:
        wait_until(lambda: running.server.started, timeout=120, what="the server to start")
        yield running
    finally:
        running.server.should_exit = True
        running.thread.join(timeout=60)


def test_dropped_streams_leave_no_task_behind(bundle: Path, tmp_path: Path) -> None:
    video = encode_video(tmp_path / "clip.mp4", ramp(12, 48, 64, seed=3), "libx264").read_bytes()
    with thread_server(bundle, max_active=4, max_batch=4, warmup=False, drain_timeout_s=5.0) as running:
        before = running.tasks()
        for _ in range(30):
            assert first_event_then_leave(running.url, video).startswith(b"HTTP/1.1 200")

        def settled() -> bool:
            text = httpx.get(f"{running.url}/metrics").text
            cancelled = metric(text, 'adafocus_rejected_total{reason="cancelled"}')
            return cancelled == 30 and metric(text, "adafocus_active_requests") == 0.0

        wait_until(settled, timeout=60, what="the 30 dropped streams to be cancelled")
        wait_until(lambda: running.tasks() == before, timeout=10, what="the streams' tasks to end")
        assert running.loop_errors == []  # before the fix: "Task was destroyed but it is pending!" once a stream
    assert not running.thread.is_alive()
