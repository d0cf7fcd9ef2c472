"""The service's life: ``ServiceState.start`` builds everything the routes use, ``stop`` tears it down.

Start-up (called by the app's lifespan, off the event loop): load the bundle, build the runner and the engine,
warm up, start the decoder pool and self-test it on a video encoded right then, run that clip through the engine:
only then is the server ready. Shutdown: stop admitting (``/readyz`` fails), finish in-flight requests, stop the
engine and the decoders. SIGTERM first calls ``begin_drain`` (service/commands.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
from prometheus_client.metrics_core import Metric

from model.bundle import Bundle
from model.macs import cost_report
from service.budget.control import BudgetControl
from service.budget.store import BudgetStore, FileBudget, LocalBudget
from service.decode.backend import choose_decoder
from service.decode.pool import DecodeJob, DecodePool, FrameDecoder, self_test_video
from service.engine.engine import Engine
from service.engine.runners.selection import create_runner, load_model_source
from service.engine.runners.torch_runner import Runner, TorchOptions
from service.engine.types import BudgetState, EngineRequest
from service.metrics import Metrics, labelled
from service.schemas import ReplicaBudget
from service.settings import Settings
from service.tracing.setup import Tracing, start_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)
T = TypeVar("T")


class ShutdownAborted(Exception):
    """The drain timeout passed with this request still in flight: it is answered now, before the server stops."""


class Peers(Protocol):
    """The replicas of a fleet, this one included (fleet/replica.py over Ray); a single server has none."""

    def budgets(self) -> list[ReplicaBudget]:
        """Every live replica's budget, for GET /budget ([]: none answered; the route lists this replica's)."""
        ...

    def metrics(self) -> bytes:
        """Every live replica's metrics, each series labelled with its ``replica``, for GET /metrics (b"": none
        answered; the route renders this replica's own)."""
        ...


def store_for(settings: Settings) -> BudgetStore:
    """The budget file's store when ``ADAFOCUS_BUDGET_FILE`` is set, else the in-memory one."""
    initial = settings.startup_budget()
    if settings.budget_file is None:
        return LocalBudget(initial)
    return FileBudget(settings.budget_file, initial, settings.budget_poll_s)


def decode_pool(settings: Settings, on_restart: Callable[[str], None] | None = None) -> DecodePool:
    """The server's decoder worker processes, as the settings say (not started); a fleet's decode replicas too."""
    decoder = choose_decoder(settings.decoder)  # ADAFOCUS_DECODER=nvdec where NVDEC cannot run stops the start here
    log.info("decoder: %s (%s)", decoder.backend, decoder.reason)
    return DecodePool(
        settings.decode_workers, settings.decode_limits(), max_pending=settings.decode_queue, job_fn=decoder.job_fn,
        on_restart=on_restart,
    )


@dataclass
class ServiceState:
    """Everything the routes use; built by ``start`` (blocking), torn down by ``stop``."""

    settings: Settings
    bundle: Bundle | None = None
    engine: Engine | None = None
    control: BudgetControl | None = None  # every budget change of the engine (validation, versions, swaps)
    pool: FrameDecoder | None = None  # the decoder worker processes (``decode_pool``), or a fleet's decode tier
    metrics: Metrics | None = None
    checks: dict[str, bool] = field(
        default_factory=lambda: {"model_loaded": False, "warmed_up": False, "decoder_self_test": False}
    )
    draining: bool = False
    inflight: int = 0  # /classify requests between their first byte and their answer
    clock: Callable[[], float] = time.monotonic  # request deadlines and timings; shared with the engine
    budget: BudgetStore | None = None  # None: built from the settings at start-up (store_for); the fleet gives its own
    peers: Peers | None = None  # the fleet's replicas; None: a single server
    wrap_runner: Callable[[Runner], Runner] | None = None  # wraps the runner once built (a benchmark's fake device)
    # builds the decoder instead of ``decode_pool``: a fleet replica's decode tier (fleet/decode_tier.py)
    decoders: Callable[[Settings, Metrics], FrameDecoder] | None = None
    replica: str = ""  # this server's name in every answer; "": the settings' (ADAFOCUS_REPLICA_NAME or the host)
    tracing: Tracing = field(default_factory=Tracing.off)  # chosen at start-up from the settings (service/tracing/)
    # a request error's (HTTP status, stable code) for its trace: the app's error table (service/http/errors.py)
    describe_error: Callable[[BaseException], tuple[int, str]] = lambda _: (500, "internal")
    span_exporter: SpanExporter | None = None  # tests: spans go here (the SDK's in-memory exporter), not over OTLP
    # one future per request in ``until_aborted``, set by ``abort_inflight`` (event-loop side only)
    _aborts: set[asyncio.Future[None]] = field(default_factory=set)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        s = self.settings
        if s.torch_threads is not None:
            torch.set_num_threads(s.torch_threads)
        device = s.resolved_device()
        source = load_model_source(s.bundle, device)  # a bundle, or an ONNX export directory with its bundle
        self.bundle = bundle = source.bundle
        self.checks["model_loaded"] = True
        log.info("loaded bundle %s (%s, sha256 %s) on %s", bundle.path, bundle.config.name, bundle.sha256[:12], device)
        self.metrics = Metrics(bundle.config.num_cubes + 1)
        runner = create_runner(
            bundle.model, s.backend, device, bundle=bundle, export_dir=source.export_dir, max_batch=s.max_batch,
            torch_options=TorchOptions(precision=s.precision, channels_last=s.channels_last, cuda_graphs=s.cuda_graphs),
        )
        if self.wrap_runner is not None:
            runner = self.wrap_runner(runner)
        self.engine = Engine(
            runner, bundle.config, bundle.budgets, cost_report(bundle.model), s.engine_config(), self.metrics,
            clock=self.clock,
        )
        self.replica = self.replica or s.replica()
        tracing = s.tracing_config(self.replica)
        self.tracing = start_tracing(tracing, self.describe_error, self.clock, self.span_exporter)
        self.control = BudgetControl(self.engine.budget, s.slo_p99_s, on_apply=self._on_budget)
        self.budget = self.budget or store_for(s)
        # an unknown ADAFOCUS_BUDGET or ADAFOCUS_MIN_LEVEL, or a bad budget file, stops the start-up here
        budget = self.budget.start(self.control)
        log.info("budget %s, version %d", budget.name, budget.version)
        self.engine.start()
        if s.warmup:
            self.engine.warmup()
        self.checks["warmed_up"] = True
        self.pool = decode_pool(s, self.metrics.on_decoder_restart) if self.decoders is None else (
            self.decoders(s, self.metrics)
        )
        self.pool.start()
        self._self_test()  # through the decode tier too: a replica is ready only once its decoders answer
        self.checks["decoder_self_test"] = True
        self.metrics.ready.set(1)
        workers = "a decode tier" if self.decoders is not None else f"{s.decode_workers} decoder workers"
        log.info("ready: %s runner, %s mode, %s", runner.name, s.mode, workers)

    def _on_budget(self, state: BudgetState) -> None:
        if self.metrics is not None:
            self.metrics.budget_setting_version.set(state.setting_version)

    def render_metrics(self) -> bytes:
        """This server's metrics (the exposition), the gauges read now."""
        if self.metrics is None:
            return b""
        self._read_gauges()
        return self.metrics.render()

    def metric_families(self) -> list[Metric]:
        """This server's metrics, the gauges read now, every series labelled ``replica`` (a fleet gathers them)."""
        if self.metrics is None:
            return []
        self._read_gauges()
        return labelled(self.metrics.registry, self.replica)

    def _read_gauges(self) -> None:
        assert self.metrics is not None
        if self.engine is not None:
            self.metrics.on_queue(self.engine.queue_depth, self.engine.active_count)
        if self.pool is not None:
            self.metrics.decode_pending.set(self.pool.pending)

    def own_budget(self) -> ReplicaBudget:
        assert self.engine is not None
        state = self.engine.budget.current()
        return ReplicaBudget(
            replica=self.replica, name=state.name, version=state.version, setting_version=state.setting_version
        )

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
        self.engine.submit(EngineRequest(decoded.frames, observed=False)).result(timeout=120)  # not in the metrics

    def stop(self) -> None:
        self.draining = True
        if self.metrics is not None:
            self.metrics.ready.set(0)
        if self.budget is not None:
            self.budget.stop()
        if self.engine is not None:
            self.engine.shutdown(drain=True, timeout=self.settings.drain_timeout_s)
        if self.pool is not None:
            self.pool.shutdown()
        self.tracing.shutdown()  # the last spans exported
        log.info("stopped")

    def begin_drain(self) -> None:
        """SIGTERM: refuse new work and fail readiness; in-flight requests carry on."""
        if not self.draining:
            log.info("draining: %d request(s) in flight", self.inflight)
        self.draining = True
        if self.metrics is not None:
            self.metrics.ready.set(0)

    async def until_aborted(self, work: Awaitable[T]) -> T:
        """``work``'s result, unless ``abort_inflight`` comes first: then ``work`` is cancelled and this raises
        ``ShutdownAborted``, so that the client still gets a JSON answer rather than the server's cancellation."""
        loop = asyncio.get_running_loop()
        task, abort = asyncio.ensure_future(work), loop.create_future()
        self._aborts.add(abort)
        try:
            await asyncio.wait({task, abort}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._aborts.discard(abort)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # its own clean-up (the upload spool, the engine request) runs before the answer
        raise ShutdownAborted("the server shut down before this request finished; retry on another replica")

    def abort_inflight(self) -> int:
        """Drain timeout passed: answer every request still in ``until_aborted`` at once (call on the event loop);
        returns how many."""
        aborts = [f for f in self._aborts if not f.done()]
        for abort in aborts:
            abort.set_result(None)
        return len(aborts)

    def readiness(self) -> dict[str, bool]:
        engine_ok = self.engine is not None and self.engine.started and not self.engine.draining
        return {**self.checks, "engine_running": engine_ok, "not_draining": not self.draining}
