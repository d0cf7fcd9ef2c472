"""One /classify request, in order: upload -> decode (worker process) -> engine -> answer.

Each stage is bounded by the request deadline; a client that disconnects while its video is decoded or queued
stops the work (``ClientGone``: its engine request is cancelled). The route (service/routes.py) records the
outcome; errors are mapped by service/errors.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.decode import DecodeJob
from service.engine.errors import DeadlineExceeded
from service.engine.types import EngineRequest, EngineResult
from service.lifecycle import ServiceState
from service.schemas import ClassifyResponse, Cube, Timings, TopK
from service.upload import parse_bool, read_upload

# The engine enforces the deadline itself; the HTTP wait allows this much more so the engine's answer wins.
DEADLINE_GRACE_S = 0.25


class ClientGone(Exception):
    """The client closed the connection before its answer."""


class ServiceDraining(Exception):
    """The server is draining (SIGTERM) and admits no new requests."""


async def classify(state: ServiceState, request: Request, started: float) -> ClassifyResponse:
    """Upload -> decode (worker process) -> engine -> answer; each stage bounded by the request deadline."""
    if state.draining:
        raise ServiceDraining("the server is draining and admits no new requests")
    assert state.engine is not None and state.pool is not None and state.bundle is not None
    s, cfg = state.settings, state.bundle.config
    deadline = started + s.request_timeout_s
    try:
        async with asyncio.timeout(max(0.0, deadline - state.clock())):  # a slow upload counts too
            upload = await read_upload(
                request.headers.get("content-type"), request.headers.get("content-length"), request.stream(),
                s.max_upload_bytes, s.spool_bytes,
            )
    except ClientDisconnect:
        raise ClientGone() from None
    except TimeoutError:
        raise DeadlineExceeded(f"the upload did not finish within {s.request_timeout_s:g} s") from None
    disconnect = asyncio.ensure_future(wait_disconnect(request))
    try:
        with upload.spool:
            budget = upload.fields.get("budget") or None
            explain = parse_bool(upload.fields.get("explain", ""), "explain")
            if budget is not None:
                state.engine.budget_state().levels.get(budget)  # unknown level: 422 before any decoding
            job = DecodeJob(upload.spool.source(), cfg.num_frames, cfg.frame_size)
            decoded = await _wait(state, asyncio.wrap_future(state.pool.submit(job)), disconnect, deadline)
        assert state.metrics is not None
        state.metrics.on_decode(decoded.seconds)
        engine_request = EngineRequest(decoded.frames, budget=budget, deadline=deadline, explain=explain)
        future = state.engine.submit(engine_request)
        try:
            result: EngineResult = await _wait(state, asyncio.wrap_future(future), disconnect, deadline)
        except (ClientGone, DeadlineExceeded):
            state.engine.cancel(future)
            raise
    finally:
        disconnect.cancel()
    return answer(state, result, decoded.seconds, state.clock() - started)


async def _wait(
    state: ServiceState, work: asyncio.Future[Any], disconnect: asyncio.Future[None], deadline: float
) -> Any:
    timeout = max(0.0, deadline + DEADLINE_GRACE_S - state.clock())
    done, _ = await asyncio.wait({work, disconnect}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if work in done:
        return work.result()
    work.cancel()
    if disconnect in done:
        raise ClientGone()
    raise DeadlineExceeded(f"no answer within the request timeout of {state.settings.request_timeout_s:g} s")


def answer(state: ServiceState, result: EngineResult, decode_s: float, total_s: float) -> ClassifyResponse:
    """The response body of an engine result."""
    assert state.bundle is not None
    names = state.bundle.config.class_names
    cubes = None
    if result.cubes is not None:
        cubes = [Cube(t=c.t, y=c.y, x=c.x, size=c.size, frames=c.frames, skipped=c.skipped) for c in result.cubes]
    return ClassifyResponse(
        label=names[result.class_id],
        class_id=result.class_id,
        confidence=result.confidence,
        top_k=[TopK(class_id=i, label=names[i], probability=p) for i, p in result.top_k],
        cubes_used=result.cubes_used,
        exit_step=result.exit_step,
        exit_reason=result.exit_reason,
        gmacs=result.gmacs,
        budget=result.budget,
        budget_version=result.budget_version,
        timings=Timings(queue=result.queue_seconds, decode=decode_s, compute=result.compute_seconds, total=total_s),
        cubes=cubes,
    )


async def wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (call after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
