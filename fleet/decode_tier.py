"""The fleet's decode tier (``serve-ray --decode-replicas N``): a CPU-only Ray Serve deployment that decodes uploads
for the model replicas, so that a model replica (one GPU) never decodes.

A model replica still takes the HTTP request (every route, limit and error of the server stays in its one FastAPI
app) and reads the upload; its decode step (``decode_upload``, the OIP ``video`` input) goes to ``TierDecoder``
instead of its own worker processes: the upload's bytes, as a ``DecodeJob``, through a deployment handle to a
``DecodeReplica``, whose ``DecodePool`` (the server's own decoder processes, built by ``decode_pool`` from the same
settings: sampling modes, resize path, limits and error codes) decodes it; the frames come back through the handle
and go to the replica's engine. A decode replica takes as many uploads as its pool queues (``ADAFOCUS_DECODE_QUEUE``),
and Serve autoscales the tier on the uploads its replicas hold (fleet/config.py).

A decode replica that dies (its actor killed, its node lost) fails only the requests it held, and those are sent once
more, to another decode replica (Serve's router drops the dead one): decoding is idempotent (the same bytes give the
same frames) and the upload was not at fault (a file that crashes FFmpeg kills a decoder process inside the replica,
``DecoderCrashed``, never the replica), so the retry costs one decode and the client gets its answer. Only once:
a request whose retry dies too answers 503 ``queue_full`` with Retry-After, so that no single upload can take down
more than two replicas. Each retry counts in ``adafocus_decoder_restarts_total{reason="decode_replica_lost"}`` (the
model replica's). A decode replica's own decoder restarts and the uploads it holds are its ``metric_families``,
which the fleet's GET /metrics gathers from every decode replica (``RayPeers``, fleet/replica.py), labelled
``tier="decode"``.
Timelines (``segment_s``), one long decode pass that streams segments, are not decoded by the tier: 422
``timeline_unavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from model.video_segments import SegmentError
from service.decode.pool import DecodeBusy, Decoded, DecodeJob, DecodePool, self_test_video
from service.decode.timeline import TimelineDone, TimelineSink
from service.lifecycle import decode_pool
from service.metrics import DecoderMetrics, Metrics, labelled
from service.settings import Settings

log = logging.getLogger(__name__)
TIER_LABEL = "decode"  # the ``tier`` label of a decode replica's series in the fleet's GET /metrics
LOST_REASON = "decode_replica_lost"  # adafocus_decoder_restarts_total's reason for a retried decode
SELF_TEST_FRAMES, SELF_TEST_SIZE = 4, 32


PoolFactory = Callable[[Settings, Callable[[str], None]], DecodePool]  # (settings, on_restart) -> a pool not started


class DecodeReplica:
    """The decode tier's deployment class: the server's decoder processes, answering ``decode`` calls, and its own
    metrics (``metric_families``: decoder restarts and uploads held, labelled ``replica`` and ``tier="decode"``),
    which every model replica's GET /metrics gathers. ``name``: Serve's replica id unless given; ``make_pool``:
    service.lifecycle.decode_pool unless given."""

    def __init__(self, settings: Settings, name: str | None = None, make_pool: PoolFactory = decode_pool) -> None:
        self.name = name if name is not None else serve.get_replica_context().replica_id.unique_id
        self.metrics = DecoderMetrics()
        self.pool: DecodePool = make_pool(settings, self.metrics.on_decoder_restart)
        self.pool.start()
        with tempfile.TemporaryDirectory(prefix="adafocus-decode-selftest-") as tmp:
            path = self_test_video(Path(tmp), SELF_TEST_FRAMES, SELF_TEST_SIZE)
            clip = self.pool.submit(DecodeJob(str(path), SELF_TEST_FRAMES, SELF_TEST_SIZE)).result(timeout=120)
        if clip.frames.shape != (SELF_TEST_FRAMES, SELF_TEST_SIZE, SELF_TEST_SIZE, 3):
            raise RuntimeError(f"decode replica self-test: got frames of shape {clip.frames.shape}")

    async def decode(self, job: DecodeJob) -> Decoded:
        """One upload's frames (``DecodeError``, ``DecoderCrashed``, ``DecodeBusy`` raise to the caller)."""
        return await asyncio.wrap_future(self.pool.submit(job))

    async def metric_families(self) -> list[Metric]:
        """This decode replica's metrics, the queue read now (picklable: a model replica renders them)."""
        self.metrics.decode_pending.set(self.pool.pending)
        return labelled(self.metrics.registry, self.name, tier=TIER_LABEL)

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown()


def _unwrapped(exc: RayTaskError) -> BaseException:
    """The decode replica's own exception (DecodeError ...) rather than Ray's wrapper."""
    cause = exc.cause
    return cause if isinstance(cause, BaseException) else exc


class TierDecoder:
    """A model replica's decoder (``FrameDecoder``): every job to the decode tier through ``handle``, from a thread
    per job in flight (at most ``max_pending``, the replica's ``ADAFOCUS_DECODE_QUEUE``; beyond it 503, as the
    pool's)."""

    def __init__(
        self, handle: DeploymentHandle[Any], max_pending: int, timeout_s: float, on_lost: Callable[[str], None]
    ) -> None:
        self.handle, self.max_pending, self.timeout_s, self.on_lost = handle, max_pending, timeout_s, on_lost
        self._threads = concurrent.futures.ThreadPoolExecutor(max_pending, thread_name_prefix="adafocus-decode-tier")
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        pass  # the tier's replicas are Serve's; the replica's self-test (service/lifecycle.py) goes through them

    def submit(self, job: DecodeJob) -> concurrent.futures.Future[Decoded]:
        if not isinstance(job.source, bytes):  # a large upload spooled to this replica's disk: the tier gets bytes
            job = DecodeJob(Path(job.source).read_bytes(), job.num_frames, job.size, job.sampling)
        with self._lock:
            if self._pending >= self.max_pending:
                raise DecodeBusy(f"{self._pending} uploads are waiting for the decode tier; retry later")
            self._pending += 1
        future = self._threads.submit(self._decode, job)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: concurrent.futures.Future[Decoded]) -> None:
        with self._lock:
            self._pending -= 1

    def _decode(self, job: DecodeJob) -> Decoded:
        """The tier's answer; a decode replica lost under the job: once more, on another."""
        try:
            return self._once(job)
        except RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            self.on_lost(LOST_REASON)
            log.warning("a decode replica was lost under an upload; sending it to another: %s", exc)
        try:
            return self._once(job)
        except RayActorError as exc:
            self.on_lost(LOST_REASON)
            raise DecodeBusy("the decode replicas holding this upload were lost twice; retry later") from exc

    def _once(self, job: DecodeJob) -> Decoded:
        try:
            decoded: Decoded = self.handle.decode.remote(job).result(timeout_s=self.timeout_s)
        except RayTaskError as exc:  # the decode replica's own error: DecodeError, DecoderCrashed, DecodeBusy
            raise _unwrapped(exc) from None
        return decoded

    def submit_timeline(self, job: DecodeJob, sink: TimelineSink) -> concurrent.futures.Future[TimelineDone]:
        raise SegmentError(
            "timeline_unavailable",
            "this fleet decodes in its decode tier, which takes single clips; send `segment_s` (a timeline) to a "
            "fleet without --decode-replicas or to a plain server",
        )

    @property
    def pending(self) -> int:
        return self._pending

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def tier_decoder(handle: DeploymentHandle[Any]) -> Callable[[Settings, Metrics], TierDecoder]:
    """``create_app``'s ``decoders``: a model replica's ``TierDecoder`` over ``handle``."""

    def build(settings: Settings, metrics: Metrics) -> TierDecoder:
        timeout = settings.request_timeout_s + settings.max_decode_s  # the request's deadline answers sooner
        return TierDecoder(handle, settings.decode_queue, timeout, metrics.on_decoder_restart)

    return build
