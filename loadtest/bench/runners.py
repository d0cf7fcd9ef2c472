"""``adafocus bench-runners``: the PyTorch runner vs the ONNX Runtime runner, measured in one run on the same inputs.

Two parts, each interleaving the runners so that drift on a shared machine hits both alike:
1. per-stage latency: median ms of one glance call and one focus call (mixed step indices) at several batch sizes;
2. the engine at saturation: every clip submitted at once to a continuous-batching ``Engine`` over each runner;
   videos/s, the median duration of a glance batch and of a focus batch, and whether both runners gave every
   clip the same label and exit step.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from exporters.manifest import model_specs
from exporters.onnx_export import export_bundle
from exporters.onnx_runner import OnnxRunner, OrtOptions
from exporters.validate import load_clips
from model.adafocus import AdaFocusV3, FocusState
from model.bundle import Bundle
from model.config import get_config
from model.exits import quantile_thresholds
from model.macs import cost_report
from model.testing import exit_budgets, reference_exits, spread_exit_model, untrained_bundle
from service.budget.control import BudgetControl
from service.engine.config import EngineConfig
from service.engine.engine import Engine, run_offline
from service.engine.observer import StatsObserver
from service.engine.runners.selection import ModelSource, load_model_source, probe_inputs
from service.engine.runners.torch_runner import Runner, TorchRunner
from service.engine.types import EngineRequest, EngineResult
from service.schemas import BudgetUpdate


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 4, 8, 16, 32)
    repeats: int = 7
    videos: int = 128
    max_batch: int = 32
    rounds: int = 2
    budget: str | None = None  # level for the engine runs; None = the bundle's default
    threads: int = 2  # torch intra-op threads and ONNX Runtime intra-op threads


def _timed_ms(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def stage_latency(runners: list[Runner], model: AdaFocusV3, cfg: BenchConfig) -> list[dict[str, Any]]:
    """Per batch size and runner: median ms of a glance call and of a focus call."""
    rows = []
    for b in cfg.batches:
        frames, cubes = probe_inputs(model, b, torch.device("cpu"))
        with torch.inference_mode():
            base = runners[0].glance(frames).state
            state = FocusState(base.global_feats, base.pooled, torch.arange(b) % model.config.num_cubes)
            times: dict[str, dict[str, list[float]]] = {r.name: {"glance": [], "focus": []} for r in runners}
            for runner in runners:  # warm-up at this shape
                runner.glance(frames)
                runner.focus(cubes, state)
            for _ in range(cfg.repeats):
                for runner in runners:
                    times[runner.name]["glance"].append(_timed_ms(lambda r=runner, x=frames: r.glance(x)))
                    times[runner.name]["focus"].append(_timed_ms(lambda r=runner, x=cubes, s=state: r.focus(x, s)))
        for runner in runners:
            rows.append(
                {
                    "runner": runner.name,
                    "batch": b,
                    "glance_ms": statistics.median(times[runner.name]["glance"]),
                    "focus_ms": statistics.median(times[runner.name]["focus"]),
                }
            )
    return rows


def engine_run(
    runner: Runner, bundle: Bundle, requests: list[EngineRequest], cfg: BenchConfig
) -> tuple[dict[str, Any], list[EngineResult]]:
    """All ``requests`` through a fresh continuous engine at once; throughput and step figures."""
    observer = StatsObserver()
    config = EngineConfig(mode="continuous", max_batch=cfg.max_batch, max_active=2 * cfg.max_batch)
    engine = Engine(runner, bundle.config, bundle.budgets, cost_report(bundle.model), config, observer)
    if cfg.budget is not None:
        BudgetControl(engine.budget).apply(BudgetUpdate(level=cfg.budget))
    engine.warmup()
    observer.steps.clear()
    start, cpu_start = time.perf_counter(), time.process_time()
    results = run_offline(engine, requests)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    engine.shutdown()
    figures: dict[str, Any] = {"runner": runner.name, "videos": len(requests), "seconds": wall}
    figures["videos_per_s"] = len(requests) / wall
    # CPU seconds of this process (all threads) per video: less sensitive than wall time to other load
    figures["cpu_ms_per_video"] = cpu / len(requests) * 1e3
    for stage in ("glance", "focus"):
        steps = [(b, s) for st, b, s in observer.steps if st == stage]
        figures[f"{stage}_steps"] = len(steps)
        figures[f"{stage}_median_ms"] = statistics.median(s for _, s in steps) * 1e3 if steps else 0.0
        figures[f"{stage}_mean_batch"] = statistics.mean(b for b, _ in steps) if steps else 0.0
    figures["mean_exit_step"] = statistics.mean(r.exit_step for r in results)
    figures["gmacs_per_video"] = statistics.mean(r.gmacs for r in results)
    return figures, results


def engine_throughput(runners: list[Runner], bundle: Bundle, cfg: BenchConfig) -> dict[str, Any]:
    clips, source = load_clips(bundle.config, cfg.videos, seed=0, benchmark=bundle.benchmark)  # (N, 3, T, H, W)
    frames = [np.ascontiguousarray(c.permute(1, 2, 3, 0).numpy()) for c in clips]  # each (T, H, W, 3)
    runs: list[dict[str, Any]] = []
    decisions: dict[str, list[tuple[int, int]]] = {}
    for _ in range(cfg.rounds):
        for runner in runners:
            figures, results = engine_run(runner, bundle, [EngineRequest(f) for f in frames], cfg)
            runs.append(figures)
            decisions[runner.name] = [(r.class_id, r.exit_step) for r in results]
    names = [r.name for r in runners]
    same = sum(a == b for a, b in zip(decisions[names[0]], decisions[names[1]], strict=True))
    summary = {}
    for name in names:
        mine = [r for r in runs if r["runner"] == name]
        summary[name] = {
            key: statistics.median(r[key] for r in mine)
            for key in (
                "videos_per_s",
                "cpu_ms_per_video",
                "glance_median_ms",
                "focus_median_ms",
                "glance_mean_batch",
                "focus_mean_batch",
            )
        }
        summary[name]["mean_exit_step"] = mine[-1]["mean_exit_step"]
        summary[name]["gmacs_per_video"] = mine[-1]["gmacs_per_video"]
    return {
        "clip_source": source,
        "runs": runs,
        "summary": summary,
        "identical_decisions": same,
        "videos": cfg.videos,
    }


def random_bundle(config_name: str, path: Path, clips: int = 32) -> Bundle:
    """An untrained bundle of a named config whose exits spread like a trained one's (for timing only).

    ``model.testing.spread_exit_model``; threshold sets at the median (``fast``) and the 20% quantile (``mid``) of
    each exit's entropy, and ``full`` (no exit).
    """
    config = get_config(config_name)
    model = spread_exit_model(config, seed=0)
    frames, _ = load_clips(config, clips, seed=1)  # (N, 3, T, H, W)
    scores = reference_exits(model, frames).scores  # (N, K + 1)
    budgets = exit_budgets(quantile_thresholds(scores, 0.5, "lower"), quantile_thresholds(scores, 0.2, "lower"))
    card = f"# untrained {config_name} bundle for runner benchmarks (random weights)\n"
    return untrained_bundle(path, model, budgets, card)


def run_bench(
    bundle_path: str | None, export_dir: str | None, cfg: BenchConfig, config_name: str | None = None
) -> dict[str, Any]:
    """``config_name`` benchmarks an untrained bundle of that config instead of ``bundle_path``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(bundle_path, export_dir, cfg, config_name)
    finally:
        torch.set_num_threads(threads)


def _run_bench(
    bundle_path: str | None, export_dir: str | None, cfg: BenchConfig, config_name: str | None
) -> dict[str, Any]:
    load_start = os.getloadavg()[0]  # the machine is shared: report how busy it was
    with tempfile.TemporaryDirectory(prefix="adafocus-bench-onnx-") as tmp:
        if config_name is not None:
            source = ModelSource(random_bundle(config_name, Path(tmp) / "bundle"), None)
        else:
            source = load_model_source(bundle_path)
        bundle = source.bundle
        export = Path(export_dir) if export_dir else source.export_dir
        if export is None:
            export = Path(tmp) / "onnx"
            export_bundle(bundle, export, parity_clips=4)
        runners: list[Runner] = [
            TorchRunner(bundle.model, "cpu"),
            OnnxRunner(
                export, "cpu", OrtOptions(intra_op_threads=cfg.threads), bundle.sha256, model_specs(bundle.model)
            ),
        ]
        stages = stage_latency(runners, bundle.model, cfg)
        engine = engine_throughput(runners, bundle, cfg)
    return {
        "command": "adafocus " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "bundle": {
            "path": str(bundle.path) if config_name is None else f"untrained {config_name} (--config)",
            "sha256": bundle.sha256,
            "config": bundle.config.name,
        },
        "budget": cfg.budget or bundle.budgets.default,
        "config": asdict(cfg),
        "stages": stages,
        "engine": engine,
    }


def format_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"`{results['command']}` ({results['date_utc']} UTC, {results['machine']}, torch "
        f"{results['versions']['torch']}, onnxruntime {results['versions']['onnxruntime']}, "
        f"{results['config']['threads']} threads each; bundle `{results['bundle']['config']}` "
        f"{results['bundle']['sha256'][:12]}, budget `{results['budget']}`; 1-minute load average "
        f"{results['load_average_1m']['start']:.1f} at the start, {results['load_average_1m']['end']:.1f} at the end)",
        "",
        "Per-stage latency, median ms per call (focus batches mix step indices):",
        "",
        "| batch | glance torch | glance onnx | speed-up | focus torch | focus onnx | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["runner"], r["batch"]): r for r in results["stages"]}
    for b in results["config"]["batches"]:
        t, o = by[("torch", b)], by[("onnx", b)]
        lines.append(
            f"| {b} | {t['glance_ms']:.2f} | {o['glance_ms']:.2f} | {t['glance_ms'] / o['glance_ms']:.2f}x "
            f"| {t['focus_ms']:.2f} | {o['focus_ms']:.2f} | {t['focus_ms'] / o['focus_ms']:.2f}x |"
        )
    eng = results["engine"]
    lines += [
        "",
        f"Engine at saturation (continuous, max_batch {results['config']['max_batch']}, {eng['videos']} clips "
        f"submitted at once, median of {results['config']['rounds']} interleaved rounds; clips: {eng['clip_source']}):",
        "",
        "| runner | videos/s | CPU ms/video | glance step ms (median) | focus step ms (median) "
        "| mean glance batch | mean focus batch | mean exit step | GMACs/video |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in eng["summary"].items():
        lines.append(
            f"| {name} | {s['videos_per_s']:.1f} | {s['cpu_ms_per_video']:.2f} | {s['glance_median_ms']:.2f} "
            f"| {s['focus_median_ms']:.2f} "
            f"| {s['glance_mean_batch']:.1f} | {s['focus_mean_batch']:.1f} | {s['mean_exit_step']:.2f} "
            f"| {s['gmacs_per_video']:.4f} |"
        )
    lines += ["", f"Identical label and exit step on {eng['identical_decisions']}/{eng['videos']} clips.", ""]
    return "\n".join(lines)
