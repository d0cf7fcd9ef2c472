"""Fleet throughput for 1, 2, 4 ... replicas on one local Ray cluster, next to the ideal N x one replica.

Each replica count is deployed in turn (``serve.run``, then ``serve.delete``) and loaded through the one HTTP port
by the closed-loop load generator (loadtest/http/load.py: ``concurrency_per_replica`` x N requests in flight), after
a short warm-up. Two runners: ``simulated`` pads every model call to ``step_s`` of sleep (a stand-in accelerator:
N replicas on 2 CPU cores then scale as N devices would, unless the host-side work, decoding and HTTP, runs out of
cores first), and ``real``: the model itself on the CPU, whose replicas share the same cores. The model is an
untrained tiny bundle (loadtest/bench/runners.random_bundle), the clip the decoder self-test's, so every request does
the same work.

``run_tier_bench`` (``bench-fleet --decode-tier D``): the same model replicas (simulated accelerator) with and
without the decode tier, side by side in one run, on benchmark clips (the procedural benchmark at the ``default``
model's input, 16 frames of 112 px, H.264) whose decoding is real CPU work: each model replica's busy fraction
(the accelerator's time, ``adafocus_step_duration_seconds``, over the measured phase's wall time) and the fleet's
videos/s. Without the tier each model replica decodes in its one decoder process (``decode_workers``); with it, D
CPU-only decode replicas of one decoder process each do.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from fleet.config import APP_NAME, FleetConfig
from fleet.replica import fleet_app
from loadtest.bench.proc_cpu import children, command_line, process_seconds
from loadtest.bench.runners import random_bundle
from loadtest.bench.workload import make_clips
from loadtest.http.corpus import load_corpus
from loadtest.http.load import LoadConfig, run_load
from loadtest.schedule import Bound
from model.config import get_config
from model.data.synth import write_mp4
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


@dataclass(frozen=True)
class TierBenchConfig:
    replicas: int = 1  # model replicas, each a simulated accelerator
    decode_replicas: int = 2  # the tiered layout's decode replicas (one decoder process each)
    step_s: float = 0.02  # every model call's wall time
    duration_s: float = 20.0
    concurrency: int = 32  # closed-loop requests in flight (past saturation: queues on both tiers)
    clips: int = 8  # distinct benchmark clips
    max_batch: int = 8
    port: int = 0


def benchmark_corpus(directory: Path, count: int) -> None:
    """``count`` benchmark clips (the ``default`` model's input: 16 frames of 112 px) as H.264 MP4 files."""
    frames, _, _ = make_clips(get_config("default"), count, seed=0)  # (N, T, H, W, 3)
    for i, clip in enumerate(frames):
        write_mp4(directory / f"clip_{i:03d}.mp4", clip)


SUMMED = ("adafocus_step_duration_seconds_sum", "adafocus_batch_size_sum", "adafocus_batch_size_count")


def model_totals(url: str) -> dict[str, float]:
    """Every model replica's accelerator time and samples per model call so far, summed (``SUMMED``; the fleet's
    GET /metrics holds each replica's series)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals = dict.fromkeys(SUMMED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


# the fleet's processes by role, from their command lines (Ray names its actor processes ``ray::<class>...``)
ROLES = {"model": "ray::ServeReplica:adafocus:AdaFocusReplica", "decode": "ray::ServeReplica:adafocus:AdaFocusDecoder",
         "proxy": "ray::ProxyActor"}


def _with_children(pid: int) -> Iterator[int]:
    yield pid
    for child in children(pid):  # a replica's decoder processes
        yield from _with_children(child)


def fleet_cpu() -> dict[int, tuple[str, float]]:
    """Each fleet process's (role, CPU seconds so far), the decoder processes counted with their replica's role."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        line = command_line(int(entry.name))
        role = next((r for r, prefix in ROLES.items() if line.startswith(prefix)), None)
        if role is not None:
            found |= {pid: (role, process_seconds(pid)) for pid in _with_children(int(entry.name))}
    return found


def cpu_per_video(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  videos: int) -> dict[str, float]:
    """CPU ms per answered video by role, over the processes alive at both snapshots."""
    totals = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        if pid in before:
            totals[role] += seconds - before[pid][1]
    return {role: 1000 * seconds / max(1, videos) for role, seconds in totals.items()}


def tier_phase(url: str, corpus_dir: Path, cfg: TierBenchConfig, out: TextIO) -> dict[str, Any]:
    """Warm-up, then the measured phase between two reads of the model replicas' totals: throughput, busy fraction
    (accelerator seconds over wall seconds, per replica) and the mean samples per model call."""
    corpus = load_corpus(corpus_dir)
    warm = LoadConfig(url, Bound(requests=4 * cfg.concurrency), concurrency=cfg.concurrency, progress=False)
    asyncio.run(run_load(warm, corpus, out))
    before, cpu, started = model_totals(url), fleet_cpu(), time.monotonic()
    load = LoadConfig(url, Bound(duration_s=cfg.duration_s), concurrency=cfg.concurrency, progress=False)
    phase: dict[str, Any] = asyncio.run(run_load(load, corpus, out))["phases"][0]
    after, wall = model_totals(url), time.monotonic() - started
    cpu_ms = cpu_per_video(cpu, fleet_cpu(), phase["completed"])
    busy, samples, calls = (after[k] - before[k] for k in SUMMED)
    return {**phase, "busy": busy / (wall * cfg.replicas), "batch": samples / calls if calls else 0.0,
            "cpu_ms": cpu_ms}


def run_tier_bench(cfg: TierBenchConfig, out: TextIO = sys.stderr) -> dict[str, Any]:
    """The model replicas without, then with, the decode tier, on one local Ray cluster; one row per layout."""
    bench = FleetBenchConfig(replicas=(cfg.replicas,), max_batch=cfg.max_batch, max_active=cfg.max_batch,
                             concurrency_per_replica=cfg.concurrency)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adafocus-tier-bench-") as tmp:
        bundle = random_bundle("tiny", Path(tmp) / "tiny")
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        benchmark_corpus(corpus, cfg.clips)
        settings = replica_settings(bundle.path, bench)
        sock = listen_socket("127.0.0.1", cfg.port)
        port = sock.getsockname()[1]
        sock.close()
        ray.init(num_cpus=2 * (cfg.replicas + cfg.decode_replicas), include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for decode_replicas in (0, cfg.decode_replicas):
                out.write(f"tier bench: {cfg.replicas} model replica(s), {decode_replicas} decode replica(s)\n")
                fleet = FleetConfig(replicas=cfg.replicas, simulated_step_s=cfg.step_s, decode_replicas=decode_replicas)
                serve.run(fleet_app(settings, fleet), name=APP_NAME)
                phase = tier_phase(f"http://127.0.0.1:{port}", corpus, cfg, out)
                serve.delete(APP_NAME)
                rows.append(tier_row(decode_replicas, phase))
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"config": cfg.__dict__, "rows": rows}


def tier_row(decode_replicas: int, phase: dict[str, Any]) -> dict[str, Any]:
    keys = ("throughput", "busy", "batch", "cpu_ms", "completed", "errors")
    return {"decode_replicas": decode_replicas, **{k: phase[k] for k in keys},
            "p50_s": phase["latency_s"]["p50"], "p99_s": phase["latency_s"]["p99"]}


def tier_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"| layout ({cfg['replicas']} model replica(s), {cfg['step_s'] * 1000:g} ms per model call) | videos/s | "
        "model-replica busy | samples per model call | CPU ms per video: model replicas / decode tier / proxy | "
        "p50 (s) | p99 (s) | answered | errors |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        n = r["decode_replicas"]
        layout = f"decode tier of {n} replica(s)" if n else "each model replica decodes (1 decoder process)"
        cpu = " / ".join(f"{r['cpu_ms'][role]:.1f}" for role in ROLES)
        lines.append(
            f"| {layout} | {r['throughput']:.1f} | {r['busy']:.2f} | {r['batch']:.2f} | {cpu} | {r['p50_s']:.3f} | "
            f"{r['p99_s']:.3f} | {r['completed']} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"
