"""A tiny in-process HTTP server that mimics the /classify and /budget JSON shapes, with controllable latency
and errors, served by a real uvicorn on a free local port; and a small corpus of real PyAV-encoded MP4s."""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtest.encode import EncodeSpec, encode_spec, moving_frames
from loadtest.http.server_process import free_port

TOKEN = "s3cret"
LEVELS = {"low": (0.1, 1), "high": (0.3, 3)}  # name -> (GMACs/video, exit step) the fake answers with
CORPUS_SIZE = 6


@dataclass
class Behaviour:
    """What the fake server does; tests change it and ``reset`` it."""

    latency_s: float = 0.0
    reject_every: int = 0  # every n-th request gets 503 queue_full (0 = never)
    serial: bool = False  # one request at a time (a server with capacity 1 / latency_s)
    received: int = 0
    rejected: int = 0
    budget: str = "high"
    version: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def reset(self) -> None:
        self.latency_s, self.reject_every, self.serial = 0.0, 0, False
        self.received = self.rejected = 0
        self.budget, self.version = "high", 1


def create_fake_app(behaviour: Behaviour) -> FastAPI:
    app = FastAPI()
    registry = CollectorRegistry()
    steps = Histogram("adafocus_step_duration_seconds", "model call time", ["stage"], registry=registry)
    batches = Histogram("adafocus_batch_size", "samples per call", ["stage"], registry=registry)

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(generate_latest(registry).decode())

    @app.post("/classify")
    async def classify(video: UploadFile = File(...), budget: str | None = Form(None)) -> Any:
        behaviour.received += 1
        data = await video.read()
        if behaviour.reject_every and behaviour.received % behaviour.reject_every == 0:
            behaviour.rejected += 1
            return JSONResponse({"code": "queue_full", "message": "queue is full"}, status_code=503)
        if behaviour.serial:
            async with behaviour.lock:
                await asyncio.sleep(behaviour.latency_s)
        else:
            await asyncio.sleep(behaviour.latency_s)
        steps.labels("glance").observe(behaviour.latency_s)  # one batch-of-1 "model call" per answered request
        batches.labels("glance").observe(1)
        index = int(Path(video.filename or "clip_0.mp4").stem.split("_")[1])
        level = budget or behaviour.budget
        gmacs, exit_step = LEVELS[level]
        return {
            "label": f"class_{index % 3}",
            "class_id": index % 3,
            "confidence": 0.9,
            "exit_step": exit_step,
            "cubes_used": exit_step,
            "gmacs": gmacs,
            "budget": level,
            "budget_version": behaviour.version,
            "bytes": len(data),
        }

    @app.get("/budget")
    async def get_budget() -> Any:
        levels = [{"name": n, "expected_gmacs": g} for n, (g, _) in LEVELS.items()]
        return {"name": behaviour.budget, "version": behaviour.version, "levels": levels}

    @app.put("/budget")
    async def put_budget(request: Request, authorization: str | None = Header(None)) -> Any:
        if authorization != f"Bearer {TOKEN}":
            return JSONResponse({"code": "unauthorized", "message": "bad token"}, status_code=401)
        body = await request.json()
        if body.get("level") not in LEVELS:
            return JSONResponse({"code": "unknown_budget", "message": "no such level"}, status_code=422)
        behaviour.budget = body["level"]
        behaviour.version += 1
        return {"name": behaviour.budget, "version": behaviour.version}

    return app


@dataclass
class FakeServer:
    url: str
    behaviour: Behaviour


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    behaviour = Behaviour()
    port = free_port()
    config = uvicorn.Config(create_fake_app(behaviour), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.02)
    yield FakeServer(f"http://127.0.0.1:{port}", behaviour)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    fake_server.behaviour.reset()
    return fake_server


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real H.264 MP4s; labels.csv gets clip_0 wrong on purpose (the fake predicts index % 3)."""
    root = tmp_path_factory.mktemp("corpus")
    spec = EncodeSpec("h264", "libx264", "mp4", 4)
    rows = []
    for i in range(CORPUS_SIZE):
        encode_spec(root / f"clip_{i}.mp4", moving_frames(4, 32, 32, seed=i), spec)
        truth = (i + 1) % 3 if i == 0 else i % 3
        rows.append({"filename": f"clip_{i}.mp4", "label": f"class_{truth}"})
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["filename", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root
