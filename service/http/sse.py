"""``POST /classify`` as a stream of anytime predictions (``Accept: text/event-stream`` or the form field
``stream=true``), in the Server-Sent Events wire format: one ``progress`` event after the glance and after each
cube, then one ``result`` event with the usual answer (or one ``error`` event with the usual error body). The
request's flow (service/classify/flow.py) decides when an answer becomes a stream (its first progress event) and
makes the events; this module only writes them. A client that stops reading and disconnects closes the flow's
stream, which cancels its engine request: its slot is free at the next step.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import StreamingResponse

from service.classify.flow import ProgressStream
from service.classify.progress import STREAM_MEDIA_TYPE
from service.engine.types import Progress
from service.http.errors import to_api_error
from service.lifecycle import ServiceState
from service.schemas import ClassifyResponse, Segment, TimelineResponse


def respond(state: ServiceState, events: ProgressStream, on_end: Callable[[int], None]) -> StreamingResponse:
    """The streamed answer of ``events``; ``on_end(status)`` is called when the stream ends: 200, the error
    event's status, or 499 when the client left first."""
    return StreamingResponse(
        _encode(state, events, on_end),
        media_type=STREAM_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _encode(state: ServiceState, events: ProgressStream, on_end: Callable[[int], None]) -> AsyncIterator[bytes]:
    assert state.bundle is not None
    labels = state.bundle.config.class_names
    status = 499  # the client left before the end
    try:
        async for event in events:
            if isinstance(event, ClassifyResponse | TimelineResponse):
                status = 200
                yield sse("result", event.model_dump(exclude_none=True))
            elif isinstance(event, Segment):  # a timeline's segment, as soon as it finished (any order)
                yield sse("segment", event.model_dump(exclude_none=True))
            else:
                yield sse("progress", progress_body(event, labels))
    except Exception as exc:  # the request failed after its first event
        error = to_api_error(exc, state.settings.retry_after_s)
        status = error.status
        yield sse("error", {"status": error.status, "code": error.code, "message": error.message})
    finally:
        await events.aclose()  # a client that left: the flow cancels its work and its engine request
        on_end(status)


def progress_body(event: Progress, labels: Sequence[str]) -> dict[str, Any]:
    """The ``progress`` event's data."""
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
