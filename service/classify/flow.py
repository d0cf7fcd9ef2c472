"""One /classify request, in order: upload -> decode (worker process) -> engine -> answer.

Each stage is bounded by the request deadline; a client that disconnects while its video is decoded or queued
stops the work (``ClientGone``: its engine request is cancelled). The route (service/http/routes.py) records the
outcome; errors are mapped by service/http/errors.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from service.classify.explain import frame_images, steps_from_progress
from service.classify.progress import EventSink
from service.classify.upload import BadUpload, parse_bool, read_upload
from service.decode.pool import DecodeJob
from service.engine.errors import DeadlineExceeded
from service.engine.types import EngineRequest, EngineResult, Progress
from service.lifecycle import ServiceState
from service.logs import current_request_id
from service.schemas import ClassifyResponse, Cube, Timings, TopK

# The engine enforces the deadline itself; the HTTP wait allows this much more so the engine's answer wins.
DEADLINE_GRACE_S = 0.25


class ClientGone(Exception):
    """The client closed the connection before its answer."""


class ServiceDraining(Exception):
    """The server is draining (SIGTERM) and admits no new requests."""


def request_deadline(state: ServiceState, started: float, deadline_ms: str | None) -> float:
    """The request's deadline: ``deadline_ms`` (form field or X-Deadline-Ms header) when shorter than the server's
    ADAFOCUS_REQUEST_TIMEOUT_S, else the server's."""
    timeout = state.settings.request_timeout_s
    if deadline_ms:
        try:
            asked = float(deadline_ms) / 1000
        except ValueError:
            raise BadUpload(f"deadline_ms must be a number of milliseconds, got {deadline_ms[:32]!r}") from None
        if not (math.isfinite(asked) and asked > 0):
            raise BadUpload(f"deadline_ms must be a positive number of milliseconds, got {deadline_ms[:32]!r}")
        timeout = min(timeout, asked)
    return started + timeout


async def classify(
    state: ServiceState, request: Request, started: float, sink: EventSink | None = None
) -> ClassifyResponse:
    """Upload -> decode (worker process) -> engine -> answer; each stage bounded by the request deadline. With a
    ``sink`` that wants a stream (Accept header, or the form field ``stream``), progress events go to it."""
    assert state.engine is not None and state.pool is not None and state.bundle is not None
    s, cfg = state.settings, state.bundle.config
    deadline = request_deadline(state, started, request.headers.get("x-deadline-ms"))
    try:
        async with asyncio.timeout(max(0.0, deadline - state.clock())):  # a slow upload counts too
            upload = await read_upload(
                request.headers.get("content-type"), request.headers.get("content-length"), request.stream(),
                s.max_upload_bytes, s.spool_bytes, s.max_form_fields,
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
            want_frames = parse_bool(upload.fields.get("frames", ""), "frames")
            if sink is not None and parse_bool(upload.fields.get("stream", ""), "stream"):
                sink.wanted = True
            if "deadline_ms" in upload.fields:
                deadline = min(deadline, request_deadline(state, started, upload.fields["deadline_ms"]))
            if budget is not None:
                state.engine.budget_state().levels.get(budget)  # unknown level: 422 before any decoding
            job = DecodeJob(upload.spool.source(), cfg.num_frames, cfg.frame_size)
            decoded = await _wait(state, asyncio.wrap_future(state.pool.submit(job)), disconnect, deadline)
        assert state.metrics is not None
        state.metrics.on_decode(decoded.seconds)
        progress: list[Progress] = []  # the engine's per-step predictions, for ``explain`` (appended on its thread)
        stream_to = sink.push if sink is not None and sink.wanted else None

        def on_progress(event: Progress) -> None:
            if explain:
                progress.append(event)
            if stream_to is not None:
                stream_to(event)

        engine_request = EngineRequest(
            decoded.frames,
            budget=budget,
            deadline=deadline,
            explain=explain,
            on_progress=on_progress if explain or stream_to is not None else None,
        )
        future = state.engine.submit(engine_request)
        if sink is not None:
            sink.future = future
        try:
            result: EngineResult = await _wait(state, asyncio.wrap_future(future), disconnect, deadline)
        except (ClientGone, DeadlineExceeded):
            state.engine.cancel(future)
            raise
    finally:
        disconnect.cancel()
    body = answer(state, result, decoded.seconds, state.clock() - started)
    if explain:
        budget_now = state.engine.budget_state()
        thresholds: tuple[float, ...] | None = None
        if result.budget != "custom":
            thresholds = budget_now.levels.get(result.budget).thresholds
        elif budget_now.version == result.budget_version:
            thresholds = budget_now.thresholds
        body.steps = steps_from_progress(progress, result.exit_step, state.bundle.config.class_names, thresholds)
    if want_frames:
        body.frames = await asyncio.to_thread(frame_images, decoded.frames)
    return body


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
        request_id=current_request_id() or "-",
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
