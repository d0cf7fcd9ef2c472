"""Anytime predictions of one /classify request: the engine's progress events, carried from its runner thread to
the event loop (``EventSink``), and their Server-Sent Events form (``sse``). The streamed response itself is in
service/http/sse.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from service.engine.types import EngineResult, Progress

STREAM_MEDIA_TYPE = "text/event-stream"


def wants_stream(accept: str | None) -> bool:
    """True when the client's Accept header asks for Server-Sent Events."""
    return any(part.split(";")[0].strip().lower() == STREAM_MEDIA_TYPE for part in (accept or "").split(","))


class EventSink:
    """Progress events of one request, pushed from the engine thread, read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wanted: bool) -> None:
        self.loop = loop
        self.wanted = wanted  # Accept: text/event-stream, or the form field stream=true (set by the pipeline)
        self.queue: asyncio.Queue[Progress] = asyncio.Queue()
        self.started = asyncio.Event()  # the first event arrived: the answer is a stream from now on
        self.future: Future[EngineResult] | None = None  # the engine request, to cancel when the client leaves

    def push(self, event: Progress) -> None:
        """Called on the engine's runner thread."""
        self.loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Progress) -> None:
        self.queue.put_nowait(event)
        self.started.set()


def progress_body(event: Progress, labels: Sequence[str]) -> dict[str, Any]:
    cube = event.cube
    return {
        "exit": event.exit_index,
        "class_id": event.class_id,
        "label": labels[event.class_id],
        "confidence": event.confidence,
        "entropy": event.score,
        "cube": None
        if cube is None
        else {"t": cube.t, "y": cube.y, "x": cube.x, "size": cube.size, "frames": cube.frames},
        "gmacs": event.gmacs,
        "final": event.final,
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event: its name and one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
