"""The anytime predictions of one /classify request: the engine's progress events, kept for ``explain`` and carried
from its runner thread to the event loop for a stream. Only the request's flow (service/classify/flow.py) holds
one; the stream's wire format is in service/http/sse.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.engine.types import Progress
from service.schemas import Segment

STREAM_MEDIA_TYPE = "text/event-stream"


def wants_stream(accept: str | None) -> bool:
    """True when the client's Accept header asks for Server-Sent Events."""
    return any(part.split(";")[0].strip().lower() == STREAM_MEDIA_TYPE for part in (accept or "").split(","))


class RequestProgress:
    """Progress events of one request: ``listener`` is the engine request's ``on_progress`` (the runner thread
    calls it); the rest runs on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.kept: list[Progress] = []  # for ``explain``: read once the engine answered
        self.arrived = asyncio.Event()  # the first relayed event arrived: the answer is a stream from now on
        self._loop = loop
        self._queue: asyncio.Queue[Progress | Segment] = asyncio.Queue()  # a timeline relays its segments

    def listener(self, keep: bool, relay: bool) -> Callable[[Progress], None] | None:
        """The ``on_progress`` callback that keeps events (``explain``) and relays them (a stream); None for
        neither, so the engine builds no events."""
        if not (keep or relay):
            return None

        def on_progress(event: Progress) -> None:  # on the engine's runner thread
            if keep:
                self.kept.append(event)
            if relay:
                self._loop.call_soon_threadsafe(self._put, event)

        return on_progress

    def relay(self, event: Segment) -> None:
        """Relay a timeline's finished segment (on the event loop)."""
        self._put(event)

    def _put(self, event: Progress | Segment) -> None:
        self._queue.put_nowait(event)
        self.arrived.set()

    @property
    def pending(self) -> bool:
        """A relayed event waits to be read."""
        return not self._queue.empty()

    async def next(self) -> Progress | Segment:
        """The next relayed event (waits for it)."""
        return await self._queue.get()
