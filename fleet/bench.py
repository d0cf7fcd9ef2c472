"""Fleet throughput for 1, 2, 4 ... replicas on one local Ray cluster, next to the ideal N x one replica.

Each replica count is deployed in turn (``serve.run``, then ``serve.delete``) and loaded through the one HTTP port
by the closed-loop load generator (loadtest/http/load.py: ``concurrency_per_replica`` x N requests in flight), after
a short warm-up. Two runners: ``simulated`` pads every model call to ``step_s`` of sleep (a stand-in accelerator:
N replicas on 2 CPU cores then scale as N devices would, unless the host-side work, decoding and HTTP, runs out of
cores first), and ``real``: the model itself on the CPU, whose replicas share the same cores. The model is an
untrained tiny bundle (loadtest/bench/runners.random_bundle), the clip the decoder self-test's, so every request does
the same work.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import serve

from fleet.config import APP_NAME, FleetConfig
from fleet.replica import fleet_app
from loadtest.bench.runners import random_bundle
from loadtest.http.corpus import load_corpus
from loadtest.http.load import LoadConfig, run_load
from loadtest.schedule import Bound
from service.decode.pool import self_test_video
from service.settings import Settings
from service.startup import listen_socket

WARMUP_REQUESTS_PER_REPLICA = 8


@dataclass(frozen=True)
class FleetBenchConfig:
    replicas: tuple[int, ...] = (1, 2, 4)
    runners: tuple[str, ...] = ("simulated", "real")
    step_s: float = 0.05  # simulated runner: wall time of every model call
    duration_s: float = 20.0  # measured phase per (runner, replica count)
    concurrency_per_replica: int = 16
    max_batch: int = 8
    max_active: int = 8
    port: int = 0  # 0: a free port


def replica_settings(bundle: Path, cfg: FleetBenchConfig) -> Settings:
    return Settings(
        bundle=bundle, device="cpu", decode_workers=1, torch_threads=1, max_batch=cfg.max_batch,
        max_active=cfg.max_active, max_queue=4 * cfg.concurrency_per_replica * max(cfg.replicas),
    )


def measure(url: str, corpus_dir: Path, replicas: int, cfg: FleetBenchConfig, out: TextIO) -> dict[str, Any]:
    """One warm-up phase, then the measured one; the measured phase's summary (loadtest/report.py)."""
    corpus = load_corpus(corpus_dir)
    concurrency = cfg.concurrency_per_replica * replicas
    warmup = Bound(requests=WARMUP_REQUESTS_PER_REPLICA * replicas)
    warm = LoadConfig(url, warmup, concurrency=concurrency, progress=False)
    asyncio.run(run_load(warm, corpus, out))
    load = LoadConfig(url, Bound(duration_s=cfg.duration_s), concurrency=concurrency, progress=False)
    phase: dict[str, Any] = asyncio.run(run_load(load, corpus, out))["phases"][0]
    return phase


def run_fleet_bench(cfg: FleetBenchConfig, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Every (runner, replica count) on one local Ray cluster; rows with throughput, latency and the ideal."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adafocus-fleet-bench-") as tmp:
        bundle = random_bundle("tiny", Path(tmp) / "tiny")
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        self_test_video(corpus, bundle.config.num_frames, bundle.config.frame_size)
        settings = replica_settings(bundle.path, cfg)
        sock = listen_socket("127.0.0.1", cfg.port)  # a free port now, released for Serve's proxy
        port = sock.getsockname()[1]
        sock.close()
        ray.init(num_cpus=4 * max(cfg.replicas), include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for runner in cfg.runners:
                single: float | None = None
                for n in cfg.replicas:
                    step = cfg.step_s if runner == "simulated" else None
                    out.write(f"fleet bench: {runner} runner, {n} replica(s)\n")
                    serve.run(fleet_app(settings, FleetConfig(replicas=n, simulated_step_s=step)), name=APP_NAME)
                    phase = measure(f"http://127.0.0.1:{port}", corpus, n, cfg, out)
                    serve.delete(APP_NAME)
                    single = phase["throughput"] if n == 1 else single
                    rows.append(row(runner, n, phase, single))
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"config": cfg.__dict__, "rows": rows}


def row(runner: str, replicas: int, phase: dict[str, Any], single: float | None) -> dict[str, Any]:
    ideal = None if single is None else single * replicas
    return {
        "runner": runner,
        "replicas": replicas,
        "throughput": phase["throughput"],
        "ideal": ideal,
        "efficiency": None if not ideal else phase["throughput"] / ideal,
        "p50_s": phase["latency_s"]["p50"],
        "p99_s": phase["latency_s"]["p99"],
        "completed": phase["completed"],
        "errors": phase["errors"],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| runner | replicas | videos/s | ideal (N x 1 replica) | of ideal | p50 (s) | p99 (s) | answered | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ideal = "-" if r["ideal"] is None else f"{r['ideal']:.1f}"
        eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f}%"
        lines.append(
            f"| {r['runner']} | {r['replicas']} | {r['throughput']:.1f} | {ideal} | {eff} | {r['p50_s']:.3f} | "
            f"{r['p99_s']:.3f} | {r['completed']} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"
