"""The FastAPI application: ``create_app(settings)`` and the service state its lifespan builds and tears down.

Start-up (in the lifespan, off the event loop): load the bundle, build the runner and the engine, warm up,
start the decoder pool and self-test it on a video encoded right then, run that clip through the engine: only
then is the server ready. Shutdown: stop admitting (``/readyz`` fails), finish in-flight requests, stop the
engine and the decoders.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect

from model.bundle import Bundle
from model.cost import cost_report
from service.decode import DecodeJob, DecodePool, read_upload, self_test_video
from service.engine.engine import Engine
from service.engine.errors import DeadlineExceeded, EngineDraining
from service.engine.types import EngineRequest, EngineResult
from service.errors import BadUpload
from service.metrics import Metrics
from service.schemas import ClassifyResponse, Cube, Timings, TopK
from service.settings import Settings

log = logging.getLogger(__name__)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
# The engine enforces the deadline itself; the HTTP wait allows this much more so the engine's answer wins.
DEADLINE_GRACE_S = 0.25


class ClientGone(Exception):
    """The client closed the connection before its answer."""


@dataclass
class ServiceState:
    """Everything the routes use; built by ``start`` (blocking), torn down by ``stop``."""

    settings: Settings
    bundle: Bundle | None = None
    engine: Engine | None = None
    pool: DecodePool | None = None
    metrics: Metrics | None = None
    checks: dict[str, bool] = field(
        default_factory=lambda: {"model_loaded": False, "warmed_up": False, "decoder_self_test": False}
    )
    draining: bool = False
    inflight: int = 0  # /classify requests between their first byte and their answer

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        s = self.settings
        if s.torch_threads is not None:
            import torch

            torch.set_num_threads(s.torch_threads)
        device = s.resolved_device()
        from service.engine.backends import create_runner, load_model_source

        source = load_model_source(s.bundle, device)  # a bundle, or an ONNX export directory with its bundle
        self.bundle = bundle = source.bundle
        self.checks["model_loaded"] = True
        log.info("loaded bundle %s (%s, sha256 %s) on %s", bundle.path, bundle.config.name, bundle.sha256[:12], device)
        self.metrics = Metrics(bundle.config.num_cubes + 1)
        runner = create_runner(
            bundle.model, s.backend, device, bundle=bundle, export_dir=source.export_dir, max_batch=s.max_batch
        )
        self.engine = Engine(
            runner, bundle.config, bundle.budgets, cost_report(bundle.model), s.engine_config(), self.metrics
        )
        self.engine.start()
        if s.warmup:
            self.engine.warmup()
        self.checks["warmed_up"] = True
        self.pool = DecodePool(
            s.decode_workers, s.decode_limits(), max_pending=s.decode_queue, on_restart=self.metrics.on_decoder_restart
        )
        self.pool.start()
        self._self_test()
        self.checks["decoder_self_test"] = True
        self.metrics.ready.set(1)
        log.info("ready: %s runner, %s mode, %d decoder workers", runner.name, s.mode, s.decode_workers)

    def _self_test(self) -> None:
        """Encode a tiny video now, decode it in the pool, classify it: the whole path works."""
        assert self.bundle is not None and self.pool is not None and self.engine is not None
        cfg = self.bundle.config
        with tempfile.TemporaryDirectory(prefix="adafocus-selftest-") as tmp:
            path = self_test_video(Path(tmp), cfg.num_frames, cfg.frame_size)
            decoded = self.pool.submit(DecodeJob(str(path), cfg.num_frames, cfg.frame_size)).result(timeout=120)
        expected = (cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
        if decoded.frames.shape != expected:
            raise RuntimeError(f"decoder self-test: got {decoded.frames.shape}, expected {expected}")
        self.engine.submit(EngineRequest(decoded.frames)).result(timeout=120)

    def stop(self) -> None:
        self.draining = True
        if self.metrics is not None:
            self.metrics.ready.set(0)
        if self.engine is not None:
            self.engine.shutdown(drain=True, timeout=self.settings.drain_timeout_s)
        if self.pool is not None:
            self.pool.shutdown()
        log.info("stopped")

    def begin_drain(self) -> None:
        """SIGTERM: refuse new work and fail readiness; in-flight requests carry on."""
        if not self.draining:
            log.info("draining: %d request(s) in flight", self.inflight)
        self.draining = True
        if self.metrics is not None:
            self.metrics.ready.set(0)

    def readiness(self) -> dict[str, bool]:
        engine_ok = self.engine is not None and self.engine.started and not self.engine.draining
        return {**self.checks, "engine_running": engine_ok, "not_draining": not self.draining}

    # ------------------------------------------------------------------------------------------ classify
    async def classify(self, request: Request, started: float) -> ClassifyResponse:
        """Upload -> decode (worker process) -> engine -> answer; each stage bounded by the request deadline."""
        if self.draining:
            if self.metrics is not None:
                self.metrics.on_reject("draining")
            raise EngineDraining("the server is draining and admits no new requests")
        assert self.engine is not None and self.pool is not None and self.bundle is not None
        s, cfg = self.settings, self.bundle.config
        deadline = started + s.request_timeout_s
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # a slow upload counts too
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
                    self.engine.budget_state().levels.get(budget)  # unknown level: 422 before any decoding
                job = DecodeJob(upload.spool.source(), cfg.num_frames, cfg.frame_size)
                decoded = await self._wait(asyncio.wrap_future(self.pool.submit(job)), disconnect, deadline)
            assert self.metrics is not None
            self.metrics.on_decode(decoded.seconds)
            engine_request = EngineRequest(decoded.frames, budget=budget, deadline=deadline, explain=explain)
            future = self.engine.submit(engine_request)
            try:
                result: EngineResult = await self._wait(asyncio.wrap_future(future), disconnect, deadline)
            except (ClientGone, DeadlineExceeded):
                self.engine.cancel(future)
                raise
        finally:
            disconnect.cancel()
        return self._response(result, decoded.seconds, time.monotonic() - started)

    async def _wait(self, work: asyncio.Future[Any], disconnect: asyncio.Future[None], deadline: float) -> Any:
        timeout = max(0.0, deadline + DEADLINE_GRACE_S - time.monotonic())
        done, _ = await asyncio.wait({work, disconnect}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        if disconnect in done:
            raise ClientGone()
        raise DeadlineExceeded(f"no answer within the request timeout of {self.settings.request_timeout_s:g} s")

    def _response(self, result: EngineResult, decode_s: float, total_s: float) -> ClassifyResponse:
        assert self.bundle is not None
        names = self.bundle.config.class_names
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
            timings=Timings(
                queue=result.queue_seconds, decode=decode_s, compute=result.compute_seconds, total=total_s
            ),
            cubes=cubes,
        )


def parse_bool(value: str, name: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadUpload(f"form field {name!r} must be true or false, got {value!r}")


async def wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (call after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; the model loads in its lifespan, not here."""
    from service.errors import install_handlers
    from service.routes import router

    state = ServiceState(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(state.start)
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    app = FastAPI(
        title="AdaFocusV3 video classification",
        version="0.1.0",
        description="Early-exit video recognition with continuous batching. Errors are JSON `{code, message}`.",
        lifespan=lifespan,
    )
    app.state.service = state
    install_handlers(app, state.settings.retry_after_s)
    app.include_router(router)
    return app
