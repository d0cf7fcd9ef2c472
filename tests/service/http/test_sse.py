"""A client that disconnects from an anytime stream frees its engine slot at the next step (real server).

The bundle has K = 3000 cubes and its only level never exits early: one request takes about a second and a half
of steps on one CPU thread, so the client's disconnect after the first event arrives long before the last cube."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch

from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import save_bundle
from model.config import get_config
from model.macs import cost_report
from model.video import encode_video
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = long_bundle(tmp_path_factory.mktemp("bundle") / "long")
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


def test_a_client_that_disconnects_frees_its_slot(server: Server, tmp_path: Path) -> None:
    video = encode_video(tmp_path / "clip.mp4", ramp(12, 48, 64, seed=3), "libx264").read_bytes()
    cancelled = 'adafocus_rejected_total{reason="cancelled"}'
    before = httpx.get(f"{server.url}/metrics").text
    assert metric(before, "adafocus_active_requests") == 0.0

    body, content_type = multipart(video)
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        f"POST /classify HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    received = b""
    while b"\n\n" not in received.partition(b"event: progress")[2]:  # the whole first progress event
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the stream early: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
    assert b"event: result" not in received
    sock.close()  # the client leaves after the glance

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
