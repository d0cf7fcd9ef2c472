"""N clips in one request (``POST /v2/models/{name}/infer``): encoded files or decoded frames -> N engine requests.

Files go to the decode pool exactly as a /classify upload does (one job each, the same limits, the request's
``sampling``). Frames, ``[N, T, H, W, 3]`` uint8 decoded elsewhere (a client with spare cores), are checked against
the decoder's limits (pixels per frame, frames per clip), sampled to the model's T with the decoder's own rule
for a constant frame rate (the first frame at or after the centre of each of T equal segments) and resized by the
decoder's one resize path (``model.video.to_rgb``: libswscale, shorter side, centre crop). The N engine requests
are submitted together and answered together, each answer made by /classify's ``answer``; the flow's deadline,
disconnect and cancellation rules are /classify's (``request_deadline``, ``within_deadline``): a client that leaves
or a deadline that passes cancels every clip still queued or running.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from fastapi import Request

from model.video import DecodeError, to_rgb
from model.video_segments import SegmentSpec
from service.classify.flow import (
    TIMELINE_GRACE_S,
    ServiceDraining,
    answer,
    request_deadline,
    wait_disconnect,
    within_deadline,
)
from service.classify.tensor_errors import TensorError
from service.classify.timeline import Timeline, TimelineForm, TimelineRequest, timeline_deadline
from service.classify.upload import Sampling
from service.decode.pool import Decoded, DecodeJob
from service.engine.types import EngineRequest, EngineResult
from service.lifecycle import ServiceState
from service.logs import current_request_id
from service.schemas import ClassifyResponse, TimelineResponse


@dataclass(frozen=True)
class Clips:
    """What one inference request asks, validated: either ``videos`` or ``frames``."""

    videos: Sequence[bytes] | None  # encoded files, one per clip
    frames: np.ndarray | None  # (N, T_in, H, W, 3) uint8
    budget: str | None = None  # a level name for these clips; None: the active budget
    explain: bool = False  # the cubes in the answers
    sampling: Sampling | None = None  # files only; None: the server's
    deadline_ms: float | None = None  # sooner than the server's request timeout (a timeline's: its timeout)
    timeline: SegmentSpec | None = None  # ``segment_s``: one file (``videos`` of one) cut into a timeline

    @property
    def count(self) -> int:
        return len(self.videos) if self.videos is not None else len(self.frames if self.frames is not None else ())


def check_count(state: ServiceState, count: int) -> None:
    """N clips fit the admission queue at once (checked before any tensor data is read)."""
    limit = state.settings.max_queue
    if not 1 <= count <= limit:
        raise TensorError("too_many_clips", f"{count} clips in one request; from 1 to {limit} (ADAFOCUS_MAX_QUEUE)")


def check_frames_shape(state: ServiceState, shape: tuple[int, ...]) -> None:
    """A frames tensor (N, T, H, W, 3) within the decoder's limits, before its data is read."""
    assert state.bundle is not None
    limits, cfg = state.settings.decode_limits(), state.bundle.config
    _, t, h, w, c = shape
    if c != 3 or h < 1 or w < 1:
        raise TensorError("tensor_shape", f"frames must be [N, T, H, W, 3] RGB with H, W >= 1, got {list(shape)}")
    if h * w > limits.max_pixels_per_frame:
        raise DecodeError("frame_too_large", f"frames are {w}x{h}; the limit is {limits.max_pixels_per_frame} pixels")
    if t > limits.max_frames:
        raise DecodeError("too_long", f"{t} frames per clip; the limit is {limits.max_frames}")
    if t < cfg.num_frames:
        raise TensorError("too_few_frames", f"{t} frames per clip; the model samples {cfg.num_frames}")


def sample_indices(count: int, num_frames: int) -> list[int]:
    """The frames the decoder takes from ``count`` frames at a constant rate: per target, the first frame at or
    after the centre of its segment (``model.video_plan.plan_clip`` with pts = frame index, frame step 1)."""
    return [min(count - 1, math.ceil((i + 0.5) * count / num_frames - 0.5)) for i in range(num_frames)]


def model_frames(frames: np.ndarray, num_frames: int, size: int) -> np.ndarray:
    """(T_in, H, W, 3) uint8 -> (T, size, size, 3): sampled as the decoder samples, resized as it resizes."""
    indices = sample_indices(len(frames), num_frames)
    if frames.shape[1:3] == (size, size):
        if indices == list(range(len(frames))) and frames.flags.c_contiguous and frames.flags.writeable:
            return frames  # already the model's clip: as it came (a view of the request body), no copy
        return frames[indices]  # (T, size, size, 3), a contiguous copy of the frames taken
    picked = frames[indices]  # (T, H, W, 3)
    scaler = VideoReformatter()  # one libswscale context for the clip, as the decoder keeps one
    return np.stack([to_rgb(av.VideoFrame.from_ndarray(f, format="rgb24"), size, scaler) for f in picked])


@dataclass(frozen=True)
class ClipAnswer:
    body: ClassifyResponse  # /classify's answer for this clip
    probabilities: tuple[float, ...]  # every class's, at the exit


@dataclass(frozen=True)
class TimelineAnswer:
    body: TimelineResponse  # /classify's timeline answer for the file
    probabilities: list[tuple[float, ...]]  # every class's, per segment answered (in the order of ``body.segments``)


class ClipsFlow:
    """One inference request of N clips; make it before the request counts as in flight (it reads ``draining``).
    ``trace``: the request's (service/tracing/), its body's end marked by the route (``uploaded``), its end too."""

    def __init__(self, state: ServiceState, request: Request, started: float) -> None:
        self.state, self.request, self.started = state, request, started
        self._draining = state.draining
        self.trace = state.tracing.begin(request.headers, request.scope, started)

    async def answer(self, clips: Clips) -> list[ClipAnswer]:
        if self._draining:
            raise ServiceDraining("the server is draining and admits no new requests")
        return await self.state.until_aborted(self._classify(clips))

    async def timeline(self, clips: Clips) -> TimelineAnswer:
        """One file's timeline (``clips.timeline``), as /classify with ``segment_s`` makes it: the same decode pass,
        fairness, deadline (ADAFOCUS_TIMELINE_TIMEOUT_S or ``deadline_ms``) and cancellation."""
        if self._draining:
            raise ServiceDraining("the server is draining and admits no new requests")
        return await self.state.until_aborted(self._timeline(clips))

    async def _timeline(self, clips: Clips) -> TimelineAnswer:
        assert self.state.bundle is not None and clips.videos is not None and clips.timeline is not None
        if clips.budget is not None:
            self.state.bundle.budgets.get(clips.budget)  # BudgetError (422) before any decoding
        deadline = timeline_deadline(self.state, self.started, clips.deadline_ms)
        form = TimelineForm(clips.timeline, clips.sampling)
        request = TimelineRequest(clips.budget, deadline, form, self.started, None, clips.explain)
        timeline = Timeline(self.state, request)
        disconnect = asyncio.ensure_future(wait_disconnect(self.request))
        try:
            work = asyncio.ensure_future(timeline.run(clips.videos[0]))
            body = await within_deadline(self.state, work, disconnect, deadline + TIMELINE_GRACE_S)
        finally:
            disconnect.cancel()
        return TimelineAnswer(body, timeline.probabilities())

    async def _classify(self, clips: Clips) -> list[ClipAnswer]:
        assert self.state.bundle is not None and self.state.metrics is not None
        deadline = request_deadline(self.state, self.started, self.request.headers.get("x-deadline-ms"))
        if clips.deadline_ms is not None:
            deadline = min(deadline, request_deadline(self.state, self.started, str(clips.deadline_ms)))
        if clips.budget is not None:
            self.state.bundle.budgets.get(clips.budget)  # BudgetError (422) before any decoding
        disconnect = asyncio.ensure_future(wait_disconnect(self.request))
        try:
            decoding = asyncio.ensure_future(self._decode(clips))
            decoded = await within_deadline(self.state, decoding, disconnect, deadline)
            self.trace.decoded_clips(decoded, "server" if clips.videos is not None else "client")
            results = await self._infer(clips, decoded, deadline, disconnect)
        finally:
            disconnect.cancel()
        self.trace.inferred_clips(results)
        total = self.state.clock() - self.started
        return [
            ClipAnswer(answer(self.state, r, d.seconds, total), r.probabilities)
            for r, d in zip(results, decoded, strict=True)
        ]

    async def _decode(self, clips: Clips) -> list[Decoded]:
        """Files: one decode job each, in the worker processes (one refused: the others are cancelled); frames:
        sampled and resized off the event loop, or, already at the model's size, sampled on it (no copy at T)."""
        assert self.state.pool is not None and self.state.bundle is not None and self.state.metrics is not None
        cfg = self.state.bundle.config
        if clips.videos is None:
            assert clips.frames is not None
            if clips.frames.shape[2:4] == (cfg.frame_size, cfg.frame_size):
                # NOTE(perf): no resize, at most a gather of T frames: here, not a worker-thread round trip
                return _resize_all(clips.frames, cfg.num_frames, cfg.frame_size)
            return await asyncio.to_thread(_resize_all, clips.frames, cfg.num_frames, cfg.frame_size)
        futures: list[asyncio.Future[Decoded]] = []
        try:
            for video in clips.videos:
                job = DecodeJob(video, cfg.num_frames, cfg.frame_size, clips.sampling)
                futures.append(asyncio.wrap_future(self.state.pool.submit(job)))
            decoded = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        for d in decoded:
            self.state.metrics.on_decode(d.seconds)
        return list(decoded)

    async def _infer(
        self, clips: Clips, decoded: list[Decoded], deadline: float, disconnect: asyncio.Future[None]
    ) -> list[EngineResult]:
        """N engine requests submitted together (one refused: those already queued are cancelled), awaited
        together; a client that leaves or a deadline that passes cancels all of them."""
        engine = self.state.engine
        assert engine is not None
        client = current_request_id() or "-"
        futures: list[Future[EngineResult]] = []
        try:
            for d in decoded:
                request = EngineRequest(
                    d.frames, clips.budget, deadline, clips.explain, client_id=client, record_steps=self.trace.recording
                )
                futures.append(engine.submit(request))
            work = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            return await within_deadline(self.state, work, disconnect, deadline)
        except BaseException:
            for f in futures:
                engine.cancel(f)  # a no-op once answered
            raise


def _resize_all(frames: np.ndarray, num_frames: int, size: int) -> list[Decoded]:
    """Each clip of (N, T_in, H, W, 3) as the model's (T, size, size, 3), timed like a decode."""
    out = []
    for clip in frames:  # (T_in, H, W, 3)
        started = time.monotonic()
        out.append(Decoded(model_frames(clip, num_frames, size), time.monotonic() - started))
    return out
