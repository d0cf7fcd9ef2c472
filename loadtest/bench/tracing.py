"""``adafocus bench tracing``: what OpenTelemetry tracing costs a real server at HTTP saturation.

Two real ``adafocus serve`` subprocesses with the same bundle, batch settings, decoder workers and threads: one with
tracing off, one exporting every request's spans over OTLP/HTTP to a collector stand-in (loadtest/http/
otlp_receiver.py, in this process: it decodes every export as a collector's receiver does). Only one is loaded at a
time: ``pairs`` off/on pairs in ABBA order (off-on, on-off, ...), so that drift on a shared machine falls on both
sides alike. Per round: answered requests/s, the server main process's CPU ms per request, p50 latency; per pair the
ratio on / off; at the end the spans the collector received per traced request (every request exports its tree).
First, in this process: the CPU that building one request's spans costs the event loop (``span_build_cost``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from loadtest.bench.e2e import E2EBenchConfig, make_clips, spread
from loadtest.bench.proc_cpu import CpuSnapshot
from loadtest.bench.workload import load_workload
from loadtest.http.hey_client import HEY_CLIENT, PYTHON_CLIENT, ClientRun, hey_path, run_hey, run_python
from loadtest.http.otlp_receiver import OtlpReceiver
from loadtest.http.server_process import ServerProcess
from loadtest.report import ratio_stats
from model.bundle import DEFAULT_BUNDLE
from service.decode.pool import Decoded
from service.engine.types import EngineResult, StepRecord
from service.tracing.setup import TracingConfig, start_tracing

SCOPE = {"type": "http", "method": "POST", "path": "/classify"}  # an ASGI scope, as the route has it
TARGET_ON_VS_OFF = 0.95  # issue 22: tracing on within 5% of tracing off
Log = Callable[[str], None]


@dataclass(frozen=True)
class TracingBenchConfig:
    server: E2EBenchConfig  # bundle, clips, concurrency, round length, batch settings, workers, threads, client
    pairs: int = 3  # off/on pairs of rounds, ABBA


class TracingServer(ServerProcess):
    """The bench's server, tracing to ``endpoint`` (None: off)."""

    def __init__(self, bundle: Path, cfg: E2EBenchConfig, level: str, log_path: Path, endpoint: str | None) -> None:
        settings: dict[str, object] = {
            "max_batch": cfg.max_batch, "max_active": cfg.max_active, "min_glance_batch": cfg.min_glance_batch,
            "decode_workers": cfg.decode_workers, "torch_threads": cfg.torch_threads, "device": "cpu", "budget": level,
        }
        if endpoint is not None:
            settings["otlp_endpoint"] = endpoint
        super().__init__(bundle, log_path, settings)


class NullExporter(SpanExporter):
    """Takes every span batch and drops it: the build cost alone."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def span_build_cost(requests: int = 2000, cubes: int = 3) -> dict[str, float]:
    """CPU µs per request of ``begin`` .. ``end`` of a request trace with ``cubes`` cube steps (the event loop's
    share of tracing), exported to a null exporter; in batches under the processor's queue size."""
    tracing = start_tracing(TracingConfig(None, "bench", 1.0, "bench"), lambda _: (500, "internal"),
                            exporter=NullExporter())
    decoded = Decoded(np.zeros((8, 4, 4, 3), np.uint8), 0.01)  # (T, H, W, 3): only its shape is read
    t0 = time.monotonic()
    steps = tuple(StepRecord("glance" if i == 0 else "focus", i, 8, t0 + i, t0 + i + 0.5, i == cubes)
                  for i in range(cubes + 1))
    result = EngineResult(
        0, 0, 1.0, [(0, 1.0)], cubes, cubes, "confident", 1.0, "b", 1, 0.1, 1.0, None, (), steps=steps
    )
    cpu = 0.0
    for _ in range(requests // 100):
        start = time.process_time()
        for _ in range(100):
            trace = tracing.begin({}, SCOPE, time.monotonic())
            trace.uploaded()
            trace.decoded(decoded)
            trace.inferred(result)
            trace.end(None)
        cpu += time.process_time() - start
        tracing.flush()
    tracing.shutdown()
    return {"cpu_us_per_request": 1e6 * cpu / (requests // 100 * 100), "spans_per_request": 7 + cubes}


def measure(server: ServerProcess, client: Callable[[str, float], ClientRun], seconds: float) -> dict[str, Any]:
    """One closed-loop round against ``server``: throughput, the main process's CPU per request, latency."""
    pid = [server.process.pid]
    before = CpuSnapshot.take(pid)
    run = client(server.url, seconds)
    cpu_s = CpuSnapshot.take(pid).since(before, pid)
    return {
        "requests_per_s": run.requests_per_s,
        "answered": run.ok,
        "errors": run.errors,
        "server_main_cpu_ms_per_request": 1000 * cpu_s / max(run.ok, 1),
        "latency_p50_s": run.latency_s.get("p50"),
    }


def run_tracing_bench(cfg: TracingBenchConfig, log: Log = lambda _: None) -> dict[str, Any]:
    s = cfg.server
    bundle = Path(s.bundle) if s.bundle else DEFAULT_BUNDLE
    work = load_workload(str(bundle), None, s.clips, s.seed)
    level = s.budget or work.budgets.default
    hey = hey_path(s.client)
    build = span_build_cost()
    log(f"building one request's spans: {build['cpu_us_per_request']:.0f} µs of CPU")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adafocus-tracing-") as tmp, OtlpReceiver() as receiver:
        root = Path(tmp)
        clips = make_clips(work, s.clips, root)

        def client(url: str, seconds: float) -> ClientRun:
            if hey is not None:
                return run_hey(hey, url, clips.bodies, s.concurrency, seconds, s.timeout_s)
            return run_python(url, root / "corpus", s.concurrency, seconds, s.timeout_s)

        traced_answers = 0
        with contextlib.ExitStack() as started:
            servers = {}
            for name, endpoint in (("off", None), ("on", receiver.url)):
                servers[name] = TracingServer(bundle, s, level, root / f"{name}.log", endpoint)
                started.callback(servers[name].stop)
            for name, server in servers.items():
                server.wait_ready()
                warm = client(server.url, s.warmup_s)  # unmeasured
                traced_answers += warm.ok if name == "on" else 0
            for i in range(cfg.pairs):
                for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    figures = measure(servers[name], client, s.duration_s)
                    traced_answers += figures["answered"] if name == "on" else 0
                    rounds.append({"pair": i, "tracing": name, **figures})
                    log(f"pair {i + 1}, tracing {name}: {figures['requests_per_s']:.1f} requests/s, "
                        f"server CPU {figures['server_main_cpu_ms_per_request']:.1f} ms/request")
        # the servers stopped: the traced one's provider exported what was left at its shutdown
        spans = receiver.span_count()
        exports, body_bytes = len(receiver.received), receiver.body_bytes
    return _result(cfg, work.model.config.name, level, hey is not None, rounds) | {
        "span_build": build,
        "collector": {"exports": exports, "spans": spans, "bytes": body_bytes, "traced_requests": traced_answers,
                      "spans_per_request": spans / max(traced_answers, 1)},
    }


def _result(cfg: TracingBenchConfig, model: str, level: str, hey: bool, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def side(name: str, key: str) -> list[float]:
        return [r[key] for r in sorted(rounds, key=lambda r: r["pair"]) if r["tracing"] == name]

    rps = ratio_stats(side("on", "requests_per_s"), side("off", "requests_per_s"))
    cpu = ratio_stats(side("on", "server_main_cpu_ms_per_request"), side("off", "server_main_cpu_ms_per_request"))
    s = cfg.server
    return {
        "model": model,
        "budget": level,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": s.torch_threads, "load_average": os.getloadavg()},
        "server": {"max_batch": s.max_batch, "max_active": s.max_active, "decode_workers": s.decode_workers},
        "client": {"name": HEY_CLIENT if hey else PYTHON_CLIENT, "concurrency": s.concurrency,
                   "duration_s": s.duration_s},
        "pairs": cfg.pairs,
        "rounds": rounds,
        "summary": {
            f"{key}_{name}": spread(side(name, key))
            for key in ("requests_per_s", "server_main_cpu_ms_per_request") for name in ("off", "on")
        },
        "ratios": {"requests_per_s_on_vs_off": rps, "server_cpu_per_request_on_vs_off": cpu},
        "target": {"requests_per_s_on_vs_off": TARGET_ON_VS_OFF, "met": rps["median"] >= TARGET_ON_VS_OFF},
    }


def _cell(stats: dict[str, Any], fmt: str) -> str:
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}-{fmt.format(stats['max'])})"


def format_tracing(result: dict[str, Any]) -> str:
    """The human table: median (min-max) over the rounds, the per-pair ratios, the collector's count."""
    s, r, c = result["summary"], result["ratios"], result["collector"]
    return "\n".join([
        f"bench tracing: model {result['model']}, budget {result['budget']}; server max_batch "
        f"{result['server']['max_batch']}, max_active {result['server']['max_active']}, "
        f"{result['server']['decode_workers']} decode workers; client {result['client']['name']}, concurrency "
        f"{result['client']['concurrency']}, {result['client']['duration_s']:g} s per round; {result['pairs']} "
        "off/on pairs (ABBA), median (min-max)",
        f"{'requests/s, tracing off':<40s} {_cell(s['requests_per_s_off'], '{:.1f}')}",
        f"{'requests/s, tracing on (OTLP/HTTP)':<40s} {_cell(s['requests_per_s_on'], '{:.1f}')}",
        f"{'  on / off (per pair)':<40s} {_cell(r['requests_per_s_on_vs_off'], '{:.3f}x')}   target >= "
        f"{TARGET_ON_VS_OFF}x: {'met' if result['target']['met'] else 'not met'}",
        f"{'server CPU ms/request, off':<40s} {_cell(s['server_main_cpu_ms_per_request_off'], '{:.2f}')}",
        f"{'server CPU ms/request, on':<40s} {_cell(s['server_main_cpu_ms_per_request_on'], '{:.2f}')}",
        f"{'  on / off (per pair)':<40s} {_cell(r['server_cpu_per_request_on_vs_off'], '{:.3f}x')}",
        f"{'span building, CPU µs per request':<40s} {result['span_build']['cpu_us_per_request']:.0f} "
        f"({result['span_build']['spans_per_request']} spans, in-process)",
        f"collector: {c['spans']} spans in {c['exports']} exports ({c['bytes']} bytes) for {c['traced_requests']} "
        f"traced requests: {c['spans_per_request']:.2f} spans per request",
    ])
