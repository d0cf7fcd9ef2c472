"""One /classify request, in order: upload -> form fields -> decode (worker process) -> engine -> answer.

``ClassifyFlow`` owns the request from its first byte to its answer: the deadline, the decode job, the engine
request, its progress events, the answer (with ``explain``, ``frames`` and the replica's name) and, once the first
progress event arrives, the stream of events that ends with the answer. Each stage is bounded by the request
deadline; a client that disconnects while its video is decoded or queued stops the work (``ClientGone``: its
engine request is cancelled). The route (service/http/routes.py) counts the request in flight and records its
outcome; errors are mapped by service/http/errors.py, the stream's wire format is service/http/sse.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.requests import ClientDisconnect

from model.video import Source
from service.classify.explain import frame_images, steps_from_progress
from service.classify.progress import RequestProgress, wants_stream
from service.classify.result_cache import ResultCache, ResultKey, cached_answer
from service.classify.timeline import Timeline, TimelineRequest, timeline_deadline, timeline_form, wants_timeline
from service.classify.upload import BadUpload, Sampling, Upload, parse_bool, parse_sampling, read_upload
from service.decode.pool import Decoded, DecodeJob
from service.engine.errors import DeadlineExceeded
from service.engine.types import EngineRequest, EngineResult, Progress
from service.lifecycle import ServiceState
from service.logs import current_request_id
from service.schemas import ClassifyResponse, Cube, DecodeInfo, Segment, TimelineResponse, Timings, TopK

T = TypeVar("T")

# The engine enforces the deadline itself; the HTTP wait allows this much more so the engine's answer wins.
DEADLINE_GRACE_S = 0.25

BOOLEAN_FIELDS = ("explain", "frames", "stream")  # false when absent

# A streamed answer: the progress events as the engine makes them, then the answer; the request's error, if it
# fails after the first event, raises from the iteration.
ProgressStream = AsyncGenerator[Progress | Segment | ClassifyResponse | TimelineResponse, None]
TIMELINE_GRACE_S = 1.0  # a timeline answers at its deadline with the segments so far; the HTTP wait allows more


class ClientGone(Exception):
    """The client closed the connection before its answer."""


class ServiceDraining(Exception):
    """The server is draining (SIGTERM) and admits no new requests."""


@dataclass(frozen=True)
class ClassifyForm:
    """The form fields besides ``video``, validated before any decoding."""

    budget: str | None  # a level name for this request only; None: the active budget
    explain: bool  # the prediction after each exit (``steps``) and the cubes in the answer
    frames: bool  # the frames the model saw in the answer
    stream: bool  # Server-Sent Events (the form field ``stream``, or ``Accept: text/event-stream``)
    deadline: float  # on the service clock: the sooner of the server's, the header's and the field's
    sampling: Sampling | None = None  # `exact` or `fast` for this request; None: the server's sampling


class ClassifyFlow:
    """One /classify request from upload to answer (``answer``); make it before the request counts as in flight."""

    def __init__(self, state: ServiceState, request: Request, started: float) -> None:
        self.state, self.request, self.started = state, request, started
        # read before the route counts this request in flight: a request the drain waits for is never refused later
        self._draining = state.draining
        self._accepts_stream = wants_stream(request.headers.get("accept"))
        self._progress = RequestProgress(asyncio.get_running_loop())
        self._engine_future: Future[EngineResult] | None = None  # to cancel when a streaming client leaves
        self._results: ResultCache | None = getattr(request.app.state, "results", None)  # service/app.py's
        self._trace = state.tracing.begin(request.headers, request.scope, started)

    async def answer(self) -> ClassifyResponse | TimelineResponse | ProgressStream:
        """The answer, or, once the first progress event arrives before it, the stream of events that ends with
        it. An error before the first event raises here (the route answers it as ordinary JSON); shutdown's
        ``abort_inflight`` ends the request either way (``ShutdownAborted``)."""
        if self._draining:
            self._trace.end(refused := ServiceDraining("the server is draining and admits no new requests"))
            raise refused
        work = asyncio.ensure_future(self.state.until_aborted(self._classify()))
        work.add_done_callback(lambda done: self._trace.end(outcome(done)))
        first = asyncio.ensure_future(self._progress.arrived.wait())
        try:
            await asyncio.wait({work, first}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            first.cancel()
        if work.done() and not self._progress.pending:
            return work.result()  # no event yet (not streamed, or it failed first): an ordinary answer
        return self._stream(work)

    async def _stream(self, work: asyncio.Future[ClassifyResponse | TimelineResponse]) -> ProgressStream:
        """The relayed progress events as they come, then ``work``'s answer (its error raises). Closing it early
        (the client left) cancels the work and frees the engine slot at the next step."""
        event: asyncio.Future[Progress | Segment] | None = None  # the getter of the next event, while one is awaited
        try:
            while self._progress.pending or not work.done():
                event = asyncio.ensure_future(self._progress.next())
                waiting: set[asyncio.Future[Any]] = {event, work}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if event.done():
                    yield event.result()
                event.cancel()  # a no-op once it has its event
            yield work.result()
        finally:
            # a client that left while an event was awaited (the response's task cancelled): the getter would
            # otherwise stay pending on the queue until it is garbage, "Task was destroyed but it is pending!"
            if event is not None:
                event.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work  # its own clean-up (the upload spool) runs first
            if self._engine_future is not None and self.state.engine is not None:
                self.state.engine.cancel(self._engine_future)  # no-op once answered

    async def _classify(self) -> ClassifyResponse | TimelineResponse:
        """Upload -> form fields -> decode (worker process) -> engine -> answer, each bounded by the deadline."""
        assert self.state.pool is not None and self.state.metrics is not None and self.state.bundle is not None
        deadline = request_deadline(self.state, self.started, self.request.headers.get("x-deadline-ms"))
        upload = await self._read_upload(deadline)
        self._trace.uploaded()
        disconnect = asyncio.ensure_future(wait_disconnect(self.request))
        try:
            with upload.spool:
                form = self._form(upload.fields, deadline)
                if wants_timeline(upload.fields):  # ``segment_s``: service/classify/timeline.py
                    return await self._timeline(upload, form, disconnect)
                key = self._cache_key(form, upload.spool.content_sha256)
                hit = None if key is None or self._results is None else self._results.get(key)
                if hit is not None:
                    return cached_answer(hit, current_request_id() or "-", self.state.replica,
                                         self.state.clock() - self.started)
                source = upload.spool.source()
                decoded = await decode_upload(self.state, source, form.sampling, form.deadline, disconnect)
            self.state.metrics.on_decode(decoded.seconds, decoded.backend, decoded.sampling)
            self._trace.decoded(decoded)
            result = await self._infer(form, decoded, disconnect)
        finally:
            disconnect.cancel()
        self._trace.inferred(result)
        body = await self._answer(form, decoded, result)
        if key is not None and self._results is not None:  # under the version the thresholds were really bound to
            self._results.put(dataclasses.replace(key, budget_version=result.budget_version), body)
        return body

    def _cache_key(self, form: ClassifyForm, content_sha256: str) -> ResultKey | None:
        """The result cache's key of this request; None when the cache is off or the answer is streamed (a stream
        is the engine's progress as it runs)."""
        if self._results is None or not self._results.enabled or form.stream:
            return None
        assert self.state.bundle is not None and self.state.engine is not None
        return ResultKey(
            content_sha256, self.state.bundle.sha256, form.budget, self.state.engine.budget.current().version,
            form.sampling or self.state.settings.decode_sampling, form.explain, form.frames,
        )

    async def _timeline(self, upload: Upload, form: ClassifyForm, disconnect: asyncio.Future[None]) -> TimelineResponse:
        """The video as a timeline of segments; the client leaving cancels it (its decode and engine requests)."""
        fields, relay = upload.fields, self._progress.relay if form.stream else None
        deadline = timeline_deadline(self.state, self.started, fields.get("deadline_ms"))
        timeline = timeline_form(self.state, fields, form.sampling, form.frames)
        request = TimelineRequest(form.budget, deadline, timeline, self.started, relay, form.explain)
        work = asyncio.ensure_future(Timeline(self.state, request).run(upload.spool.source()))
        return await within_deadline(self.state, work, disconnect, deadline + TIMELINE_GRACE_S)

    async def _read_upload(self, deadline: float) -> Upload:
        """The multipart body, streamed into its spool; a slow upload counts against the deadline too."""
        s, headers = self.state.settings, self.request.headers
        try:
            async with asyncio.timeout(max(0.0, deadline - self.state.clock())):
                return await read_upload(
                    headers.get("content-type"), headers.get("content-length"), self.request.stream(),
                    s.max_upload_bytes, s.spool_bytes, s.max_form_fields,
                )
        except ClientDisconnect:
            raise ClientGone() from None
        except TimeoutError:
            raise DeadlineExceeded(f"the upload did not finish within {s.request_timeout_s:g} s") from None

    def _form(self, fields: Mapping[str, str], deadline: float) -> ClassifyForm:
        """The form fields, validated in this order (the first bad one answers 422); an unknown budget level is
        refused before any decoding."""
        budget = fields.get("budget") or None
        explain, frames, stream = (name in fields and parse_bool(fields[name], name) for name in BOOLEAN_FIELDS)
        stream = stream or self._accepts_stream
        if "deadline_ms" in fields:
            deadline = min(deadline, request_deadline(self.state, self.started, fields["deadline_ms"]))
        sampling = parse_sampling(fields.get("sampling"))  # the one rule: a timeline's too (service/classify/upload.py)
        if budget is not None:
            assert self.state.bundle is not None
            self.state.bundle.budgets.get(budget)  # the engine's levels: BudgetError (422) for an unknown one
        return ClassifyForm(budget, explain, frames, stream, deadline, sampling)

    async def _infer(self, form: ClassifyForm, decoded: Decoded, disconnect: asyncio.Future[None]) -> EngineResult:
        """The engine's result; its progress events kept for ``explain`` and relayed for a stream."""
        engine = self.state.engine
        assert engine is not None
        request = EngineRequest(
            decoded.frames,
            budget=form.budget,
            deadline=form.deadline,
            explain=form.explain,
            on_progress=self._progress.listener(keep=form.explain, relay=form.stream),
            client_id=current_request_id() or "-",
            record_steps=self._trace.recording,
        )
        self._engine_future = future = engine.submit(request)
        try:
            result: EngineResult = await within_deadline(
                self.state, asyncio.wrap_future(future), disconnect, form.deadline
            )
        except (ClientGone, DeadlineExceeded):
            engine.cancel(future)
            raise
        return result

    async def _answer(self, form: ClassifyForm, decoded: Decoded, result: EngineResult) -> ClassifyResponse:
        """The response body: the result, with ``steps`` under the thresholds the engine bound for this request
        (``result.thresholds``: a budget swapped meanwhile does not change them) and the frames when asked."""
        assert self.state.bundle is not None
        body = answer(self.state, result, decoded.seconds, self.state.clock() - self.started)
        body.decode = DecodeInfo(sampling=decoded.sampling, max_offset_s=decoded.max_offset_s, backend=decoded.backend)
        if form.explain:
            labels = self.state.bundle.config.class_names
            body.steps = steps_from_progress(self._progress.kept, result.exit_step, labels, result.thresholds)
        if form.frames:
            body.frames = await asyncio.to_thread(frame_images, decoded.frames)
        return body


async def decode_upload(
    state: ServiceState, source: Source, sampling: Sampling | None, deadline: float,
    disconnect: asyncio.Future[None],
) -> Decoded:
    """The decode step of a request: ``source`` decoded in the pool with ``sampling`` (None: the server's), within
    ``deadline`` (``ClientGone`` when ``disconnect`` comes first); shared by every route that classifies an upload."""
    assert state.pool is not None and state.bundle is not None
    cfg = state.bundle.config
    job = DecodeJob(source, cfg.num_frames, cfg.frame_size, sampling=sampling)
    decoded: Decoded = await within_deadline(state, asyncio.wrap_future(state.pool.submit(job)), disconnect, deadline)
    return decoded


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


async def within_deadline(
    state: ServiceState, work: asyncio.Future[T], disconnect: asyncio.Future[None], deadline: float
) -> T:
    """``work``'s result, unless the client disconnects first (``ClientGone``) or the deadline plus
    ``DEADLINE_GRACE_S`` passes (``DeadlineExceeded``): then ``work`` is cancelled."""
    timeout = max(0.0, deadline + DEADLINE_GRACE_S - state.clock())
    waiting: set[asyncio.Future[Any]] = {work, disconnect}
    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if work in done:
        return work.result()
    work.cancel()
    if disconnect in done:
        raise ClientGone()
    raise DeadlineExceeded(f"no answer within the request timeout of {state.settings.request_timeout_s:g} s")


def answer(state: ServiceState, result: EngineResult, decode_s: float, total_s: float) -> ClassifyResponse:
    """The response body of an engine result, named by this replica."""
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
        replica=state.replica,
    )


def outcome(work: asyncio.Future[Any]) -> BaseException | None:
    """How the request's work ended, for its trace: None (answered), its error, or ``ClientGone`` when cancelled."""
    return ClientGone() if work.cancelled() else work.exception()


async def wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (call after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
