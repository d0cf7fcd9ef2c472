"""``POST /classify`` as a stream of anytime predictions (``Accept: text/event-stream`` or the form field
``stream=true``): one ``progress`` event after the glance and after each cube, then one ``result`` event with the
usual answer (or one ``error`` event with the usual error body). Until the first event the request is an ordinary
one: an error before it (413, 415, 422, 503 ...) is the ordinary JSON answer with its status. A client that stops
reading and disconnects cancels its engine request: its slot is free at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from service.classify.progress import STREAM_MEDIA_TYPE, EventSink, progress_body, sse
from service.http.errors import to_api_error
from service.lifecycle import ServiceState
from service.schemas import ClassifyResponse


async def respond(
    state: ServiceState, work: Awaitable[ClassifyResponse], sink: EventSink, on_end: Callable[[int], None]
) -> ClassifyResponse | StreamingResponse:
    """The answer of ``work``, or, once its first progress event arrives, a stream of them and then the answer.
    ``on_end(status)`` is called when a stream ends (200, or the error event's status)."""
    task = asyncio.ensure_future(work)
    started = asyncio.ensure_future(sink.started.wait())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        if not started.done():
            started.cancel()
    if task.done() and sink.queue.empty():
        return task.result()  # no event yet (not streamed, or it failed first): an ordinary answer
    return StreamingResponse(
        _events(state, task, sink, on_end),
        media_type=STREAM_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(
    state: ServiceState, task: asyncio.Future[ClassifyResponse], sink: EventSink, on_end: Callable[[int], None]
) -> AsyncIterator[bytes]:
    assert state.bundle is not None
    labels = state.bundle.config.class_names
    status = 499  # the client left before the end
    try:
        while True:
            if sink.queue.empty() and task.done():
                break
            getter = asyncio.ensure_future(sink.queue.get())
            waiting: set[asyncio.Future[Any]] = {getter, task}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield sse("progress", progress_body(getter.result(), labels))
            else:
                getter.cancel()
        try:
            answer = task.result()
        except Exception as exc:
            error = to_api_error(exc, state.settings.retry_after_s)
            status = error.status
            yield sse("error", {"status": error.status, "code": error.code, "message": error.message})
            return
        status = 200
        yield sse("result", answer.model_dump(exclude_none=True))
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if sink.future is not None and state.engine is not None:
            state.engine.cancel(sink.future)  # no-op once answered; frees the slot of a client that left
        on_end(status)
