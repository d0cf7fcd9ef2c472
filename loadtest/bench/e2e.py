"""``adafocus bench e2e``: a real server at saturation, next to the limits it is made of, in one run.

One run starts a real ``adafocus serve`` (a subprocess: uvicorn, the decoder pool, the engine; the shipped bundle
by default, CPU-sized batches) and, in each of ``repeats`` interleaved rounds, measures:
- **HTTP**: a light closed-loop client (``hey`` when installed, else the repo's own load generator) keeps
  ``concurrency`` requests in flight for ``duration_s``: answered requests/s, latency, the runner's busy fraction
  (``adafocus_step_duration_seconds`` over the phase), and the CPU split of the phase from /proc: the server's main
  process (of which the model steps), its decoder workers, the client, and everything else on the machine;
- **in-process engine**: the same bundle, batch settings and clips (decoded once, so the model sees the pixels the
  server sees) through ``loadtest.bench.engine`` at saturation, decoding out of the loop;
- **decode pool**: the server's ``DecodePool`` with the same worker count on the same files (in memory, as an
  upload arrives): clips/s and the workers' CPU per clip; and PyAV's bare decode of the same frames (one thread,
  no conversion, in a spawned process like a worker) in CPU ms per clip.
Ratios per round: HTTP / in-process, and decode-pool CPU per clip / bare decode CPU per clip; each reported as the
median and min-max of the rounds. With ``frames`` each round also sends the clips as uploads and as client-decoded
frames through the OIP route (loadtest/bench/frames_http.py): server videos/s and server CPU per video, both ways.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.bench.decode import bare_decode_cpu_ms, measure_pool
from loadtest.bench.engine import EngineBenchConfig, mode_label, run_engine_bench
from loadtest.bench.frames_http import format_summary, frame_bodies, upload_bodies, uploads_vs_frames
from loadtest.bench.frames_http import summary as frames_summary
from loadtest.bench.proc_cpu import CpuSnapshot, children, command_line
from loadtest.bench.workload import Workload, load_workload
from loadtest.http.hey_client import (
    HEY_CLIENT,
    PYTHON_CLIENT,
    ClientRun,
    HeyHung,
    hey_path,
    multipart_body,
    run_hey,
    run_python,
)
from loadtest.http.server_metrics import parse_metrics, phase_figures
from loadtest.http.server_process import ServerProcess
from loadtest.report import ratio_stats
from model.bundle import DEFAULT_BUNDLE
from model.data.synth import write_mp4
from model.video import DecodeLimits, decode_clip
from service.decode.pool import DecodePool
from service.engine.runners.torch_runner import TorchRunner

TARGET_HTTP_VS_IN_PROCESS = 0.6  # HTTP >= 0.6x the in-process saturation: HTTP, uploads and decoding may cost 40%
TARGET_DECODE_VS_BARE = 1.3  # decode-pool CPU per clip <= 1.3x PyAV's bare decode: what the pool's overhead may add
BARE_REPEATS = 5  # bare decodes per clip and round; their median is reported
Log = Callable[[str], None]


@dataclass(frozen=True)
class E2EBenchConfig:
    bundle: str | None = None  # bundle directory; None = the shipped one
    clips: int = 4  # distinct clips (one client process each with hey)
    concurrency: int = 16  # requests in flight (closed loop)
    duration_s: float = 10.0  # HTTP phase per round
    warmup_s: float = 3.0  # unmeasured HTTP load after start-up
    repeats: int = 3  # interleaved rounds
    max_batch: int = 8
    max_active: int = 8
    min_glance_batch: str = "1"  # the server's ADAFOCUS_MIN_GLANCE_BATCH: an integer or "auto"
    decode_workers: int = 2
    torch_threads: int = 1  # server and in-process engine
    budget: str | None = None  # budget level; None = the bundle's default
    engine_requests: int = 256  # requests per in-process saturation run
    decode_clips: int = 64  # decodes per decode-pool measurement
    client: str = "auto"  # auto (hey when installed) | hey | python
    timeout_s: float = 30.0  # per request
    seed: int = 0
    frames: bool = False  # also uploads vs client-decoded frames (OIP binary tensors) each round
    frames_corpus: str | None = None  # files for that comparison (clip_* of a directory); None: the bench's clips
    frames_per_request: int = 1  # clips in one frames request ([N, T, H, W, 3])


# ---------------------------------------------------------------------------------------------- the server
class BenchServer(ServerProcess):
    """The bench's ``adafocus serve`` (``loadtest.http.server_process``): batch settings, decoder workers, threads
    and budget level from the bench's config alone; its processes and metrics, as the phases read them."""

    def __init__(self, bundle: Path, cfg: E2EBenchConfig, level: str, log_path: Path) -> None:
        settings = {
            "max_batch": cfg.max_batch, "max_active": cfg.max_active, "min_glance_batch": cfg.min_glance_batch,
            "decode_workers": cfg.decode_workers, "torch_threads": cfg.torch_threads, "device": "cpu", "budget": level,
        }
        super().__init__(bundle, log_path, settings)

    def processes(self) -> dict[str, list[int]]:
        """The server's main process, its decoder workers, and its other children (multiprocessing's tracker)."""
        kids = children(self.process.pid)
        workers = [pid for pid in kids if "spawn_main" in command_line(pid)]
        return {"main": [self.process.pid], "workers": workers, "others": [p for p in kids if p not in workers]}

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/metrics", timeout=10.0)
        response.raise_for_status()
        return parse_metrics(response.text)


# ---------------------------------------------------------------------------------------------- phases
@dataclass(frozen=True)
class Clips:
    """The bench's clips: encoded files, their multipart bodies, and the frames the decoder makes of them."""

    files: list[Path]
    bodies: list[Path]  # multipart/form-data bodies for hey
    frames: np.ndarray  # (N, T, S, S, 3) uint8, decoded from ``files`` by the project's decoder
    num_frames: int
    size: int


def make_clips(work: Workload, count: int, root: Path) -> Clips:
    """The workload's first ``count`` clips as H.264 MP4 files (``adafocus synth``'s encoder) and bodies."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    files, bodies = [], []
    for i, frames in enumerate(work.frames[:count]):  # (T, S, S, 3) uint8 each
        path = corpus / f"clip_{i:03d}.mp4"
        write_mp4(path, frames)
        body = root / f"body_{i:03d}.bin"
        body.write_bytes(multipart_body(path.read_bytes(), path.name))
        files.append(path)
        bodies.append(body)
    cfg = work.model.config
    decoded = np.stack([decode_clip(str(f), cfg.num_frames, cfg.frame_size) for f in files])  # (N, T, S, S, 3)
    return Clips(files, bodies, decoded, cfg.num_frames, cfg.frame_size)


def http_phase(server: BenchServer, client: Callable[[], ClientRun]) -> dict[str, Any]:
    """One closed-loop phase against the server, with its CPU split and the runner's busy fraction."""
    procs = server.processes()
    watched = [pid for group in procs.values() for pid in group]
    metrics_before, cpu_before = server.metrics(), CpuSnapshot.take(watched)
    run = client()
    cpu_after, metrics_after = CpuSnapshot.take(watched), server.metrics()
    figures = phase_figures(metrics_before, metrics_after, run.wall_s) or {}
    split = {
        "server_main_s": cpu_after.since(cpu_before, procs["main"]),
        "decode_workers_s": cpu_after.since(cpu_before, procs["workers"]),
        "server_other_children_s": cpu_after.since(cpu_before, procs["others"]),
        "client_s": run.cpu_s,
        "machine_busy_s": cpu_after.machine - cpu_before.machine,
    }
    ours = split["server_main_s"] + split["decode_workers_s"] + split["server_other_children_s"] + split["client_s"]
    split["other_processes_s"] = split["machine_busy_s"] - ours  # other work on the machine (a shared machine)
    answered = max(run.ok, 1)
    return {
        "requests_per_s": run.requests_per_s,
        "answered": run.ok,
        "errors": run.errors,
        "wall_s": run.wall_s,
        "latency_s": run.latency_s,
        "runner_busy_fraction": figures.get("runner_busy_fraction"),  # wall time inside model steps / phase
        "mean_batch": figures.get("mean_batch"),
        "decode_workers": len(procs["workers"]),
        "cpu_s": split,
        "cpu_ms_per_request": {
            "server_main": 1e3 * split["server_main_s"] / answered,
            "decode_workers": 1e3 * split["decode_workers_s"] / answered,
            "client": 1e3 * split["client_s"] / answered,
        },
    }


def engine_phase(work: Workload, runner: TorchRunner, cfg: E2EBenchConfig, level: str) -> dict[str, Any]:
    """The in-process engine at saturation on the same clips and batch settings as the server."""
    glance = None if cfg.min_glance_batch == "auto" else int(cfg.min_glance_batch)
    bench = EngineBenchConfig(
        modes=(mode_label("continuous", glance),), levels=(level,), saturation_requests=cfg.engine_requests,
        repeats=1, rates=(), rate_fractions=(), max_batch=cfg.max_batch, max_active=cfg.max_active, seed=cfg.seed,
    )
    (run,) = run_engine_bench(work, bench, runner=runner)["levels"][0]["runs"]
    return {
        "videos_per_s": run["videos_per_s"],
        "runner_busy_fraction": run["busy_fraction"],
        "mean_batch": run["mean_batch"],
        "mode": run["mode"],
    }


def decode_phase(
    pool: DecodePool, bare: ProcessPoolExecutor, sources: list[bytes], clips: Clips, count: int
) -> dict[str, Any]:
    """The decoder pool on the clips (in memory, as uploads), and PyAV's bare decode of the same frames in a process
    started like a decoder worker (spawned: its allocator and imports, not this benchmark's)."""
    pooled = measure_pool(pool, sources, count, clips.num_frames, clips.size)
    times = sorted(bare.map(bare_decode_cpu_ms, [data for data in sources for _ in range(BARE_REPEATS)]))
    return {**pooled, "bare_decode_cpu_ms_per_clip": times[len(times) // 2]}


# ---------------------------------------------------------------------------------------------- the run
def spread(values: list[float]) -> dict[str, Any]:
    """Median and min-max of per-round values (``ratio_stats`` over ones: one rule for the median)."""
    return ratio_stats(values, [1.0] * len(values))


def run_e2e_bench(cfg: E2EBenchConfig, log: Log = lambda _: None) -> dict[str, Any]:
    bundle = Path(cfg.bundle) if cfg.bundle else DEFAULT_BUNDLE
    work = load_workload(str(bundle), None, cfg.clips, cfg.seed)
    level = cfg.budget or work.budgets.default
    hey = hey_path(cfg.client)
    with tempfile.TemporaryDirectory(prefix="adafocus-e2e-") as tmp:
        root = Path(tmp)
        clips = make_clips(work, cfg.clips, root)
        labels = None if work.labels is None else work.labels[: cfg.clips]
        work = dataclasses.replace(work, frames=clips.frames, labels=labels)
        sources = [f.read_bytes() for f in clips.files]

        hey_hung: list[str] = []

        def client(seconds: float) -> ClientRun:
            if hey is not None:
                try:
                    return run_hey(hey, server.url, clips.bodies, cfg.concurrency, seconds, cfg.timeout_s)
                except HeyHung as exc:  # this round with the Python client instead; the result says so
                    log(f"{exc}: this round uses the Python client")
                    hey_hung.append(str(exc))
            return run_python(server.url, root / "corpus", cfg.concurrency, seconds, cfg.timeout_s)

        rounds: list[dict[str, Any]] = []
        with contextlib.ExitStack() as started:  # stops what was started (only that), in reverse, whatever fails
            server = BenchServer(bundle, cfg, level, root / "server.log")
            started.callback(server.stop)
            pool = DecodePool(cfg.decode_workers, DecodeLimits(), max_pending=cfg.decode_clips + cfg.decode_workers)
            started.callback(pool.shutdown)
            runner = TorchRunner(work.model, "cpu")
            bare = started.enter_context(ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")))
            server.wait_ready()
            pool.start()
            measure_pool(pool, sources, 2 * cfg.decode_workers, clips.num_frames, clips.size)  # warm, unmeasured
            list(bare.map(bare_decode_cpu_ms, sources))  # the bare decoder's first calls, unmeasured
            client(cfg.warmup_s)
            compare = _frames_bodies(cfg, bundle, clips) if cfg.frames else None
            for i in range(cfg.repeats):
                http = http_phase(server, lambda: client(cfg.duration_s))
                log(f"round {i + 1}: HTTP {http['requests_per_s']:.1f} requests/s")
                engine = engine_phase(work, runner, cfg, level)
                log(f"round {i + 1}: in-process engine {engine['videos_per_s']:.1f} videos/s")
                decode = decode_phase(pool, bare, sources, clips, cfg.decode_clips)
                log(f"round {i + 1}: decode pool {decode['clips_per_s']:.1f} clips/s")
                rounds.append({"http": http, "engine": engine, "decode": decode})
                if compare is not None:
                    rounds[-1]["frames"] = uploads_vs_frames(
                        lambda run: http_phase(server, run), server.url, *compare, cfg.concurrency, cfg.duration_s,
                        cfg.timeout_s,
                    )
                    log(f"round {i + 1}: uploads vs frames {rounds[-1]['frames']['uploads']['videos_per_s']:.1f} vs "
                        f"{rounds[-1]['frames']['frames']['videos_per_s']:.1f} videos/s")
    return _result(cfg, work, level, hey is not None, rounds) | {"hey_hung": hey_hung}


def _frames_bodies(cfg: E2EBenchConfig, bundle: Path, clips: Clips) -> tuple[list[Any], list[Any]]:
    """The comparison's request bodies: uploads and client-decoded frames of the same files."""
    files = clips.files
    if cfg.frames_corpus is not None:
        files = sorted(p for p in Path(cfg.frames_corpus).iterdir() if p.name.startswith("clip_"))[: cfg.clips]
    return upload_bodies(files), frame_bodies(files, bundle.name, clips.num_frames, clips.size, cfg.frames_per_request)


CPU_PARTS = ("server_main", "decode_workers", "server_other_children", "client", "other_processes")


def _share(cpu_s: dict[str, float], key: str) -> float:
    return cpu_s[f"{key}_s"] / max(cpu_s["machine_busy_s"], 1e-9)


def _result(cfg: E2EBenchConfig, work: Workload, level: str, hey: bool, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    http = [r["http"]["requests_per_s"] for r in rounds]
    engine = [r["engine"]["videos_per_s"] for r in rounds]
    pool_cpu = [r["decode"]["cpu_ms_per_clip"] for r in rounds]
    bare = [r["decode"]["bare_decode_cpu_ms_per_clip"] for r in rounds]
    busy = [r["http"]["runner_busy_fraction"] or 0.0 for r in rounds]
    shares = {key: spread([_share(r["http"]["cpu_s"], key) for r in rounds]) for key in CPU_PARTS}
    ratios = {"http_vs_in_process": ratio_stats(http, engine), "decode_pool_cpu_vs_bare": ratio_stats(pool_cpu, bare)}
    return {
        "model": work.model.config.name,
        "source": work.source,
        "budget": level,
        "clips": {"count": cfg.clips, "num_frames": work.model.config.num_frames, "size": work.model.config.frame_size,
                  "encoding": "H.264 MP4 (libx264 CRF 12, yuv420p), as adafocus synth writes"},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": cfg.torch_threads, "load_average": os.getloadavg()},
        "server": {"max_batch": cfg.max_batch, "max_active": cfg.max_active, "min_glance_batch": cfg.min_glance_batch,
                   "decode_workers": cfg.decode_workers},
        "client": {"name": HEY_CLIENT if hey else PYTHON_CLIENT, "concurrency": cfg.concurrency,
                   "duration_s": cfg.duration_s},
        "repeats": cfg.repeats,
        "rounds": rounds,
        "summary": {
            "http_requests_per_s": spread(http),
            "in_process_videos_per_s": spread(engine),
            "decode_pool_clips_per_s": spread([r["decode"]["clips_per_s"] for r in rounds]),
            "decode_pool_cpu_ms_per_clip": spread(pool_cpu),
            "bare_decode_cpu_ms_per_clip": spread(bare),
            "runner_busy_fraction": spread(busy),
            "cpu_share_of_machine_busy": shares,
            "cpu_ms_per_request": {
                key: spread([r["http"]["cpu_ms_per_request"][key] for r in rounds])
                for key in ("server_main", "decode_workers", "client")
            },
        },
        "ratios": ratios,
        "uploads_vs_frames": frames_summary(rounds, spread, ratio_stats)
        | ({"corpus": cfg.frames_corpus or "the bench's clips", "clips_per_request": cfg.frames_per_request}
           if cfg.frames else {}),
        "targets": {
            "http_vs_in_process": {"target": TARGET_HTTP_VS_IN_PROCESS,
                                   "met": ratios["http_vs_in_process"]["median"] >= TARGET_HTTP_VS_IN_PROCESS},
            "decode_pool_cpu_vs_bare": {"target": TARGET_DECODE_VS_BARE,
                                        "met": ratios["decode_pool_cpu_vs_bare"]["median"] <= TARGET_DECODE_VS_BARE},
        },
    }


def _cell(stats: dict[str, Any], fmt: str = "{:.1f}") -> str:
    if len(stats["repeats"]) < 2:
        return fmt.format(stats["median"])
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}-{fmt.format(stats['max'])})"


def format_e2e(result: dict[str, Any]) -> str:
    """The human table: one line per measurement, median (min-max) over the rounds."""
    s, r = result["summary"], result["ratios"]
    srv = result["server"]
    lines = [
        f"bench e2e: model {result['model']} ({result['source']}), budget {result['budget']}, "
        f"{result['clips']['count']} clips of {result['clips']['num_frames']} x {result['clips']['size']} px",
        f"server: max_batch {srv['max_batch']}, max_active {srv['max_active']}, min_glance_batch "
        f"{srv['min_glance_batch']}, {srv['decode_workers']} decode workers; client: {result['client']['name']}, "
        f"concurrency {result['client']['concurrency']}, {result['client']['duration_s']:g} s per round; "
        f"{result['repeats']} interleaved rounds, median (min-max)",
        f"{'HTTP requests/s':<44s} {_cell(s['http_requests_per_s'])}",
        f"{'in-process engine videos/s (saturation)':<44s} {_cell(s['in_process_videos_per_s'])}",
        f"{'  HTTP / in-process':<44s} {_cell(r['http_vs_in_process'], '{:.2f}x')}   target >= "
        f"{TARGET_HTTP_VS_IN_PROCESS}x: {'met' if result['targets']['http_vs_in_process']['met'] else 'not met'}",
        f"{'decode pool clips/s':<44s} {_cell(s['decode_pool_clips_per_s'])}",
        f"{'decode pool CPU ms per clip':<44s} {_cell(s['decode_pool_cpu_ms_per_clip'], '{:.2f}')}",
        f"{'PyAV bare decode CPU ms per clip':<44s} {_cell(s['bare_decode_cpu_ms_per_clip'], '{:.2f}')}",
        f"{'  decode pool / bare decode':<44s} {_cell(r['decode_pool_cpu_vs_bare'], '{:.2f}x')}   target <= "
        f"{TARGET_DECODE_VS_BARE}x: {'met' if result['targets']['decode_pool_cpu_vs_bare']['met'] else 'not met'}",
        f"{'runner busy at HTTP saturation (wall)':<44s} {_cell(s['runner_busy_fraction'], '{:.2f}')}",
        "CPU ms per answered request: " + ", ".join(
            f"{name} {_cell(s['cpu_ms_per_request'][name], '{:.1f}')}"
            for name in ("server_main", "decode_workers", "client")
        ),
        "CPU split of the machine's busy time during the HTTP phases:",
    ]
    names = {
        "server_main": "server main process (HTTP, engine, model)",
        "decode_workers": "decode workers",
        "server_other_children": "server's other children",
        "client": "client",
        "other_processes": "other processes",
    }
    for key, label in names.items():
        lines.append(f"  {label:<42s} {_cell(s['cpu_share_of_machine_busy'][key], '{:.0%}')}")
    lines += format_summary(result.get("uploads_vs_frames", {}), _cell)
    return "\n".join(lines)
