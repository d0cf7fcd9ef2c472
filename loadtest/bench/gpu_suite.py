"""``python -m loadtest.bench.gpu_suite``: the accelerator benchmark in one command (scripts/gpu-bench.sh runs it).

Three parts, in one process, on one model with random weights (``paper-mn2-r50`` by default: speed does not depend
on the weights; its budget levels come from entropy quantiles, ``loadtest.bench.workload.quantile_budgets``):
1. **runner variants** (``TorchOptions``: fp32 eager, bf16 autocast, + channels_last, + CUDA graphs per batch
   bucket): median ms of one glance and one focus call at each batch size, the achieved TFLOP/s (2 x the multiply-adds
   ``model.macs`` counts) and the focus step's fraction of the device's dense bf16 peak;
2. **ONNX Runtime vs torch** at the same batch sizes (CUDA execution provider when the installed ONNX Runtime has
   it; otherwise the providers it has are reported and it runs where it can);
3. **the engine** over the fastest variant (chosen once, from part 1): continuous vs drain at each ``max_batch``
   (saturation videos/s, p99 at 0.8x of continuous saturation, interleaved repeats) and single (one video at a
   time) once at saturation: continuous/drain and continuous/single ratios with their repeats.
A time limit guards the whole run: a part that would start past it is skipped and named in ``skipped``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import model_specs
from exporters.onnx_export import export_to_cache
from exporters.onnx_runner import OnnxRunner, OrtOptions
from loadtest.bench.engine import EngineBenchConfig, device_name, run_engine_bench
from loadtest.bench.workload import Workload, load_workload
from loadtest.cli_args import ints, log_line
from loadtest.report import format_ratio, ratio_stats
from service.engine.runners.selection import stage_ms, torch_runner
from service.engine.runners.torch_runner import Runner, TorchOptions

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; first substring match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

DEFAULT_VARIANTS = (
    TorchOptions(),
    TorchOptions(precision="bf16"),
    TorchOptions(precision="bf16", channels_last=True),
    TorchOptions(precision="bf16", channels_last=True, cuda_graphs=True),
)


@dataclass(frozen=True)
class GpuSuiteConfig:
    config: str = "paper-mn2-r50"
    device: str = "cuda"
    batches: tuple[int, ...] = (32, 64, 128)
    variants: tuple[TorchOptions, ...] = DEFAULT_VARIANTS
    stage_repeats: int = 10
    engine_repeats: int = 3
    level: str = "balanced"  # budget level of the engine runs
    rate_fraction: float = 0.8  # p99 measured at this fraction of continuous saturation
    rate_duration_s: float = 3.0
    single_requests: int = 64
    clips: int = 64
    seed: int = 0
    onnx: bool = True
    time_limit_s: float = 420.0
    peak_tflops: float | None = None  # None = from PEAK_BF16_TFLOPS by the device's name


@dataclass
class _Clock:
    limit_s: float
    started: float = field(default_factory=time.monotonic)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self, part: str) -> bool:
        if self.elapsed() < self.limit_s:
            return True
        self.skipped.append({"part": part, "reason": f"time limit {self.limit_s:.0f} s reached"})
        return False


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def _tflops(gmacs_per_sample: float, batch: int, ms: float) -> float:
    return 2 * gmacs_per_sample * batch / ms if ms > 0 else 0.0  # GMACs/ms = TMACs/s; 2 FLOPs per MAC


# ------------------------------------------------------------------------------------------- 1: variants
def _build(work: Workload, options: TorchOptions, cfg: GpuSuiteConfig) -> Runner:
    """Each variant on its own copy of the weights (channels_last rewrites them in place)."""
    return torch_runner(copy.deepcopy(work.model), cfg.device, options, max(cfg.batches))


def _stage_row(
    name: str, runner: Runner, work: Workload, batch: int, repeats: int, peak: float | None
) -> dict[str, Any]:
    glance, focus = stage_ms(runner, work.model, batch, repeats)
    focus_tflops = _tflops(work.costs.focus_step_gmacs, batch, focus)
    return {
        "variant": name,
        "batch": batch,
        "glance_ms": glance,
        "focus_ms": focus,
        "glance_tflops": _tflops(work.costs.glance_gmacs, batch, glance),
        "focus_tflops": focus_tflops,
        "focus_peak_fraction": focus_tflops / peak if peak else None,
    }


def run_variants(
    work: Workload, cfg: GpuSuiteConfig, clock: _Clock, peak: float | None, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Runner]]:
    rows: list[dict[str, Any]] = []
    runners: dict[str, Runner] = {}
    for options in cfg.variants:
        if options.cuda_graphs and torch.device(cfg.device).type != "cuda":
            clock.skipped.append({"part": f"variant {options.label}", "reason": "CUDA graphs need a CUDA device"})
            continue
        if not clock.allows(f"variant {options.label}"):
            continue
        started = time.monotonic()
        runners[options.label] = runner = _build(work, options, cfg)
        log(f"variant {options.label}: built in {time.monotonic() - started:.1f} s")
        for batch in cfg.batches:
            rows.append(_stage_row(options.label, runner, work, batch, cfg.stage_repeats, peak))
            log(f"  batch {batch}: glance {rows[-1]['glance_ms']:.2f} ms, focus {rows[-1]['focus_ms']:.2f} ms")
    return rows, runners


def fastest(rows: list[dict[str, Any]], batch: int) -> str:
    """The variant with the smallest glance + focus time at ``batch``."""
    at = [r for r in rows if r["batch"] == batch]
    return min(at, key=lambda r: r["glance_ms"] + r["focus_ms"])["variant"]


# ------------------------------------------------------------------------------------------- 2: ONNX
def run_onnx(work: Workload, cfg: GpuSuiteConfig, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="adafocus-gpu-suite-") as tmp:
        started = time.monotonic()
        export_dir, _ = export_to_cache(work.model, Path(tmp))
        log(f"ONNX export in {time.monotonic() - started:.1f} s")
        runner = OnnxRunner(export_dir, cfg.device, OrtOptions(), expected=model_specs(work.model))
        rows = []
        for batch in cfg.batches:
            glance, focus = stage_ms(runner, work.model, batch, cfg.stage_repeats)
            rows.append({"batch": batch, "glance_ms": glance, "focus_ms": focus})
            log(f"  onnx batch {batch}: glance {glance:.2f} ms, focus {focus:.2f} ms")
        return {"providers": list(runner.providers), "device": str(runner.device), "rows": rows}


# ------------------------------------------------------------------------------------------- 3: engine
def _engine_cfg(cfg: GpuSuiteConfig, batch: int, modes: tuple[str, ...]) -> EngineBenchConfig:
    single = modes == ("single",)
    return EngineBenchConfig(
        modes=modes,
        levels=(cfg.level,),
        saturation_requests=cfg.single_requests if single else 4 * batch,
        repeats=cfg.engine_repeats,
        rate_fractions=() if single else (cfg.rate_fraction,),
        rate_duration_s=cfg.rate_duration_s,
        max_batch=batch,
        max_active=2 * batch,
        clips=cfg.clips,
        seed=cfg.seed,
        device=cfg.device,
    )


def _saturation(level: dict[str, Any], mode: str) -> dict[str, Any]:
    return next(r for r in level["runs"] if r["mode"] == mode and r["offered_rate"] is None)


def run_engines(
    work: Workload, runner: Runner, cfg: GpuSuiteConfig, clock: _Clock, log: Callable[[str], None]
) -> dict[str, Any]:
    single: dict[str, Any] | None = None
    if clock.allows("engine single"):
        level = run_engine_bench(work, _engine_cfg(cfg, 1, ("single",)), log, runner)["levels"][0]
        single = _saturation(level, "single")
    rows = []
    for batch in cfg.batches:
        if not clock.allows(f"engine max_batch {batch}"):
            continue
        level = run_engine_bench(work, _engine_cfg(cfg, batch, ("continuous", "drain")), log, runner)["levels"][0]
        cont, drain = _saturation(level, "continuous"), _saturation(level, "drain")
        at_rate = {r["mode"]: r for r in level["runs"] if r["offered_rate"] is not None}
        row: dict[str, Any] = {
            "max_batch": batch,
            "continuous_videos_per_s": cont["videos_per_s"],
            "drain_videos_per_s": drain["videos_per_s"],
            "continuous_over_drain": level["ratios"]["saturation_videos_per_s"]["continuous/drain"],
            "p99_s_at_rate": {m: r["latency_s"]["p99"] for m, r in at_rate.items()},
            "offered_rate": next((r["offered_rate"] for r in at_rate.values()), None),
            "mean_batch": {"continuous": cont["mean_batch"], "drain": drain["mean_batch"]},
            "busy_fraction": {"continuous": cont["busy_fraction"], "drain": drain["busy_fraction"]},
        }
        if single is not None:
            row["continuous_over_single"] = ratio_stats(cont["repeats_videos_per_s"], single["repeats_videos_per_s"])
        rows.append(row)
    return {"single_videos_per_s": single["videos_per_s"] if single else None, "rows": rows}


# ------------------------------------------------------------------------------------------- the suite
def run_suite(cfg: GpuSuiteConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    clock = _Clock(cfg.time_limit_s)
    device = torch.device(cfg.device)
    name = device_name(cfg.device)
    peak = cfg.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    work = load_workload(None, cfg.config, cfg.clips, cfg.seed, cfg.device)
    log(f"{name}: {work.source}")
    rows, runners = run_variants(work, cfg, clock, peak, log)
    best = fastest(rows, max(cfg.batches)) if rows else None
    onnx: dict[str, Any] | None = None
    if cfg.onnx and clock.allows("onnx"):
        onnx = run_onnx(work, cfg, log)
    engine = run_engines(work, runners[best], cfg, clock, log) if best else None
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "model": cfg.config,
        "source": work.source,
        "glance_gmacs": work.costs.glance_gmacs,
        "focus_step_gmacs": work.costs.focus_step_gmacs,
        "peak_bf16_tflops": peak,
        "stages": rows,
        "fastest_variant": best,
        "onnx": onnx,
        "engine": engine,
        "engine_level": cfg.level,
        "skipped": clock.skipped,
        "elapsed_s": clock.elapsed(),
    }


# ------------------------------------------------------------------------------------------- text
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Device: {result['device']}; torch {result['torch']}, CUDA {result['cuda']}; model {result['model']} "
        f"(glance {result['glance_gmacs']:.4g} GMACs, one focus step {result['focus_step_gmacs']:.4g} GMACs); "
        f"bf16 peak {result['peak_bf16_tflops'] or 'unknown'} TFLOP/s.",
        "",
        "| variant | batch | glance ms | focus ms | glance TFLOP/s | focus TFLOP/s | focus / bf16 peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["stages"]:
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['glance_ms']:.2f} | {r['focus_ms']:.2f} | {r['glance_tflops']:.3g} "
            f"| {r['focus_tflops']:.3g} | {_pct(r['focus_peak_fraction'])} |"
        )
    if result["onnx"]:
        onnx = result["onnx"]
        torch_rows = {r["batch"]: r for r in result["stages"] if r["variant"] == "fp32"}
        lines += ["", f"ONNX Runtime ({', '.join(onnx['providers'])}) on {onnx['device']} vs torch fp32 eager:", ""]
        lines += [
            "| batch | onnx glance ms | onnx focus ms | torch glance ms | torch focus ms |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in onnx["rows"]:
            t = torch_rows.get(r["batch"], {})
            lines.append(
                f"| {r['batch']} | {r['glance_ms']:.2f} | {r['focus_ms']:.2f} | {t.get('glance_ms', float('nan')):.2f} "
                f"| {t.get('focus_ms', float('nan')):.2f} |"
            )
    if result["engine"]:
        engine = result["engine"]
        single = engine["single_videos_per_s"]
        lines += [
            "",
            f"Engine over `{result['fastest_variant']}`, level `{result['engine_level']}`; single (one video at a "
            f"time): {single:.1f} videos/s." if single else f"Engine over `{result['fastest_variant']}`.",
            "",
            "| max_batch | continuous videos/s | drain videos/s | continuous / drain | continuous / single "
            "| p99 continuous | p99 drain | at |",
            "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
        ]
        for r in engine["rows"]:
            p99 = r["p99_s_at_rate"]
            single_ratio = format_ratio(r["continuous_over_single"]) if "continuous_over_single" in r else "n/a"
            lines.append(
                f"| {r['max_batch']} | {r['continuous_videos_per_s']:.1f} | {r['drain_videos_per_s']:.1f} "
                f"| {format_ratio(r['continuous_over_drain'])} | {single_ratio} "
                f"| {1e3 * p99.get('continuous', float('nan')):.0f} ms | {1e3 * p99.get('drain', float('nan')):.0f} ms "
                f"| {r['offered_rate'] or 0:.0f}/s |"
            )
    for s in result["skipped"]:
        lines.append(f"\nSkipped {s['part']}: {s['reason']}.")
    lines.append(f"\nWhole run: {result['elapsed_s']:.0f} s.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[GpuSuiteConfig, Path | None]:
    """The suite's configuration and the JSON output path (``--out``) from the command line."""
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.gpu_suite", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="paper-mn2-r50", help="named config (random weights)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=ints, default=(32, 64, 128), help="batch sizes / engine max_batch values")
    p.add_argument("--no-cuda-graphs", action="store_true", help="leave the CUDA-graph variant out")
    p.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out")
    p.add_argument("--repeats", type=int, default=3, help="interleaved engine repeats (default 3)")
    p.add_argument("--stage-repeats", type=int, default=10, help="timed calls per stage and batch (default 10)")
    p.add_argument("--level", default="balanced", help="budget level of the engine runs")
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds after which parts are skipped")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    p.add_argument("--quick", action="store_true", help="a smoke run (short engine runs, few repeats)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    variants = tuple(v for v in DEFAULT_VARIANTS if not (args.no_cuda_graphs and v.cuda_graphs))
    cfg = GpuSuiteConfig(
        config=args.config,
        device=args.device,
        batches=args.batches,
        variants=variants,
        stage_repeats=2 if args.quick else args.stage_repeats,
        engine_repeats=max(3, args.repeats),
        level=args.level,
        rate_duration_s=0.5 if args.quick else 3.0,
        single_requests=8 if args.quick else 64,
        clips=8 if args.quick else 64,
        onnx=not args.no_onnx,
        time_limit_s=args.time_limit,
        peak_tflops=args.peak_tflops,
    )
    return cfg, args.out


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run_suite(cfg, log_line)
    if out is not None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.write(format_markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
