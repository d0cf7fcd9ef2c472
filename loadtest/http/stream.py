"""One ``POST /classify`` as an anytime stream (``Accept: text/event-stream``) for the load generator: the time of
the first event (the prediction after the glance) and the final ``result`` (or ``error``) event's body. An error
before the first event is an ordinary JSON answer, returned as such."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from service.client import classify_request

EVENT_STREAM = "text/event-stream"


async def post_streamed(
    client: httpx.AsyncClient, video: tuple[str, bytes, str], budget: str | None, on_first_event: Callable[[], None]
) -> tuple[int, Any]:
    """(status, body): the ``result`` event's answer with status 200, the ``error`` event's body with its
    status, or the ordinary JSON answer when the server did not stream. ``on_first_event`` is called once, when
    the first event's data line arrives."""
    request = classify_request(video, budget, False, False, None)
    request["headers"]["Accept"] = EVENT_STREAM
    async with client.stream("POST", "/classify", **request) as response:
        if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
            await response.aread()
            try:
                return response.status_code, response.json()
            except ValueError:
                return response.status_code, None
        name, first = "", True
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                if first:
                    on_first_event()
                    first = False
                if name == "result":
                    return 200, json.loads(line[len("data:") :])
                if name == "error":
                    body = json.loads(line[len("data:") :])
                    return int(body.get("status", 599)), body
        return 599, {"code": "stream_ended", "message": "the stream ended without a result event"}
