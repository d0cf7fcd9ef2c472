"""``adafocus bench engine``: the batching engine in-process on pre-decoded clips, every mode in one run.

For each budget level, the same clips go through one engine per mode (``continuous``, ``drain``, ``single``),
run side by side in this process so that machine noise hits every mode alike:
- at saturation: every request submitted at once; videos/s from the first submit to the last answer;
- at fixed Poisson arrival rates (by default fractions of the continuous saturation throughput just measured):
  latency counts from the intended arrival time, and a request that misses its deadline counts as an error and
  as a latency of at least the deadline (so an overloaded mode cannot look fast by dropping work).
Each run is repeated ``repeats`` times with the modes interleaved, and the median run is reported (the median
videos/s at saturation, the median p99 at a rate), so a burst of load from other processes hits one repeat of
one mode rather than deciding the comparison.
Reported per run: videos/s, latency p50/p90/p99/max, mean batch size per stage, GMACs/video, achieved GMACs/s,
the runner's busy fraction (seconds inside glance/focus steps over the run's wall time), accuracy when the clips
have labels; and the ratios of continuous to the other modes. Decoding is out of the measurement.
"""

from __future__ import annotations

import platform
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from loadtest.bench.breakdown import add_floors, stated_profile
from loadtest.bench.simulated import runner_info, runner_line
from loadtest.bench.workload import Workload
from loadtest.report import format_ratio, latency_summary, ratio_stats
from loadtest.schedule import Bound, poisson_arrivals
from service.budget.control import BudgetControl
from service.engine.autobudget import Decision
from service.engine.config import ENGINE_MODES, AdmissionRule, EngineConfig, EngineMode
from service.engine.engine import Engine
from service.engine.errors import EngineError
from service.engine.observer import StatsObserver
from service.engine.runners.torch_runner import Runner, TorchRunner
from service.engine.types import EngineRequest, EngineResult
from service.schemas import BudgetUpdate


@dataclass(frozen=True)
class EngineBenchConfig:
    modes: tuple[str, ...] = ENGINE_MODES  # engine modes, or ``continuous-mgN``: continuous, min_glance_batch N
    levels: tuple[str, ...] = ()  # budget levels to run; () = every level of the table
    saturation_requests: int = 256  # requests submitted at once per saturation run
    repeats: int = 1  # runs per mode and load (interleaved across modes); the median run is reported
    rates: tuple[float, ...] = ()  # absolute arrival rates (videos/s); () = rate_fractions of continuous saturation
    rate_fractions: tuple[float, ...] = (0.5, 0.8)
    rate_duration_s: float = 4.0  # arrivals per rate run: a Poisson stream this long
    deadline_s: float = 5.0  # per request in rate runs (engine deadline); late = error, latency >= deadline
    max_batch: int = 32
    max_active: int = 64
    clips: int = 64  # distinct pre-decoded clips, reused round-robin
    seed: int = 0
    device: str = "cpu"


@dataclass
class _Recorder:
    """An EngineObserver that forwards to a StatsObserver swapped in per run."""

    current: StatsObserver = field(default_factory=StatsObserver)

    def reset(self) -> StatsObserver:
        self.current = StatsObserver()
        return self.current

    def on_step(self, stage: Any, batch_size: int, seconds: float) -> None:
        self.current.on_step(stage, batch_size, seconds)

    def on_result(self, result: EngineResult) -> None:
        self.current.on_result(result)

    def on_queue(self, queue_depth: int, active: int) -> None:
        self.current.on_queue(queue_depth, active)

    def on_budget(self, name: str, version: int) -> None:
        self.current.on_budget(name, version)

    def on_reject(self, reason: str) -> None:
        self.current.on_reject(reason)

    def on_auto_budget(self, decision: Decision) -> None:
        self.current.on_auto_budget(decision)


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class _Run:
    """The futures and times of one run; done times are stamped by the engine's runner thread. A future's waiters
    can wake before its done callbacks ran, so readers wait for the stamp (``done_time``)."""

    intended: list[float] = field(default_factory=list)
    done: list[float | None] = field(default_factory=list)
    stamped: list[threading.Event] = field(default_factory=list)
    futures: list[Future[EngineResult]] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)  # ground truth per tracked request
    rejected: int = 0

    def track(self, future: Future[EngineResult], intended: float, request: EngineRequest) -> None:
        index = len(self.done)
        self.intended.append(intended)
        self.done.append(None)
        self.stamped.append(threading.Event())
        self.futures.append(future)
        self.labels.append(request.label)

        def stamp(_: Future[EngineResult]) -> None:
            self.done[index] = time.monotonic()
            self.stamped[index].set()

        future.add_done_callback(stamp)

    def done_time(self, index: int) -> float:
        """When request ``index`` finished (its future must be done)."""
        self.stamped[index].wait()
        done = self.done[index]
        assert done is not None
        return done


def _request(work: Workload, i: int, deadline: float | None) -> EngineRequest:
    n = len(work.frames)
    label = None if work.labels is None else int(work.labels[i % n])
    return EngineRequest(frames=work.frames[i % n], deadline=deadline, label=label)


def _summarize(run: _Run, stats: StatsObserver, deadline_s: float | None, started: float) -> dict[str, Any]:
    results: list[EngineResult] = []
    labels: list[int | None] = []
    latencies: list[float] = []
    failed: dict[str, int] = {}
    for i, future in enumerate(run.futures):
        exc = future.exception()
        run.stamped[i].wait()
        if exc is not None:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
            latencies.append(deadline_s if deadline_s is not None else float("nan"))
            continue
        results.append(future.result())
        labels.append(run.labels[i])
        latencies.append(run.done_time(i) - run.intended[i])
    end = max((d for d in run.done if d is not None), default=started)
    wall = max(end - started, 1e-9)
    gmacs = [r.gmacs for r in results]
    glance, focus = stats.batch_sizes("glance"), stats.batch_sizes("focus")
    judged = [r.class_id == y for r, y in zip(results, labels, strict=True) if y is not None]
    exits: dict[str, int] = {}
    for r in results:
        exits[str(r.exit_step)] = exits.get(str(r.exit_step), 0) + 1
    return {
        "submitted": len(run.futures),
        "completed": len(results),
        "failed": failed,
        "rejected": run.rejected,
        "wall_s": wall,
        "videos_per_s": len(results) / wall,
        "latency_s": latency_summary(latencies),
        "latency_lower_bound": bool(failed),  # failures counted as the deadline: true latency is higher
        "mean_batch": {
            "glance": statistics.fmean(glance) if glance else 0.0,
            "focus": statistics.fmean(focus) if focus else 0.0,
        },
        "steps": {"glance": len(glance), "focus": len(focus)},
        "device_s": {"glance": stats.busy_seconds("glance"), "focus": stats.busy_seconds("focus")},  # in calls
        "cubes": sum(r.cubes_used for r in results),
        "gmacs_per_video": statistics.fmean(gmacs) if gmacs else 0.0,
        "gmacs_per_s": sum(gmacs) / wall,
        "busy_fraction": min(1.0, stats.busy_seconds() / wall),
        "exit_steps": dict(sorted(exits.items())),
        "accuracy": statistics.fmean(judged) if judged else None,
    }


def saturation_run(engine: Engine, recorder: _Recorder, work: Workload, count: int) -> dict[str, Any]:
    """Every request submitted at once; the engine's queue holds them all."""
    stats = recorder.reset()
    run = _Run()
    started = time.monotonic()
    for i in range(count):
        request = _request(work, i, None)
        run.track(engine.submit(request), started, request)
    for future in run.futures:
        future.exception()  # wait
    return _summarize(run, stats, None, started)


def rate_run(
    engine: Engine, recorder: _Recorder, work: Workload, rate: float, cfg: EngineBenchConfig, seed: int
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``; latency from the intended arrival time; deadline misses are errors."""
    stats = recorder.reset()
    run = _Run()
    arrivals = poisson_arrivals(rate, Bound(duration_s=cfg.rate_duration_s), seed)
    started = time.monotonic()
    for i, offset in enumerate(arrivals):
        intended = started + float(offset)
        delay = intended - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        request = _request(work, i, intended + cfg.deadline_s)
        try:
            run.track(engine.submit(request), intended, request)
        except EngineError:
            run.rejected += 1
    for future in run.futures:
        future.exception()
    return _summarize(run, stats, cfg.deadline_s, started)


# ---------------------------------------------------------------------------------------------- the bench
MIN_GLANCE_SUFFIX = "-mg"  # mode label ``continuous-mg4``: continuous mode with min_glance_batch 4


AUTO_SUFFIX = "-auto"  # mode label ``continuous-auto``: continuous mode, glance batch from the measured costs
EAGER_SUFFIX = "-eager"  # ``continuous-eager``: admission "eager" (refill at the next step), not the cost rule


def mode_label(mode: EngineMode, min_glance_batch: int | None = 1) -> str:
    if min_glance_batch is None:
        return f"{mode}{AUTO_SUFFIX}"
    return mode if min_glance_batch == 1 else f"{mode}{MIN_GLANCE_SUFFIX}{min_glance_batch}"


def admission_rule(label: str) -> AdmissionRule:
    """The admission rule a mode label names: ``eager`` for ``continuous...-eager``, else the default cost rule."""
    return "eager" if label.endswith(EAGER_SUFFIX) else "cost"


def parse_mode(label: str) -> tuple[EngineMode, int | None]:
    """``continuous`` -> (continuous, 1); ``continuous-mg4`` -> (continuous, 4); ``continuous-auto`` ->
    (continuous, None: automatic); any of them with ``-eager`` appended: the same, admitted eagerly
    (``admission_rule``); ValueError for anything else."""
    if label.startswith("continuous") and label.endswith(EAGER_SUFFIX):
        label = label.removesuffix(EAGER_SUFFIX)
    if label == f"continuous{AUTO_SUFFIX}":
        return "continuous", None
    name, sep, min_glance = label.partition(MIN_GLANCE_SUFFIX)
    for mode in ENGINE_MODES:
        if name == mode and not sep:
            return mode, 1
        if name == mode == "continuous" and min_glance.isdigit() and int(min_glance) >= 1:
            return mode, int(min_glance)
    raise ValueError(
        f"unknown bench mode {label!r}: one of {ENGINE_MODES}, "
        f"continuous{MIN_GLANCE_SUFFIX}N or continuous{AUTO_SUFFIX}, continuous labels optionally with {EAGER_SUFFIX}"
    )


def _engines(work: Workload, cfg: EngineBenchConfig, runner: Runner) -> dict[str, tuple[Engine, _Recorder]]:
    queue = max(cfg.saturation_requests, 4096)
    engines = {}
    for label in cfg.modes:
        mode, min_glance = parse_mode(label)
        recorder = _Recorder()
        config = EngineConfig(
            mode=mode,
            max_batch=cfg.max_batch,
            max_active=cfg.max_active,
            max_queue=queue,
            min_glance_batch=min_glance,
            admission=admission_rule(label),
        )
        engine = Engine(runner, work.model.config, work.budgets, work.costs, config, recorder)
        engine.start()
        engine.warmup()
        engines[label] = (engine, recorder)
    return engines


def _ratio_pairs(modes: Sequence[str]) -> list[tuple[str, str]]:
    """(continuous label, other label) for every continuous variant against every mode not already paired."""
    bases = [m for m in modes if parse_mode(m)[0] == "continuous"]
    return [(b, m) for i, b in enumerate(bases) for m in modes if m != b and m not in bases[:i]]


def _ratios(runs: Sequence[dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    pairs = _ratio_pairs(modes)
    if not pairs:
        return {}
    sat = {r["mode"]: r["repeats_videos_per_s"] for r in runs if r["offered_rate"] is None}
    out: dict[str, Any] = {"saturation_videos_per_s": {}, "p99_at_rate": {}}
    for base, mode in pairs:
        out["saturation_videos_per_s"][f"{base}/{mode}"] = ratio_stats(sat[base], sat[mode])
    for rate in sorted({r["offered_rate"] for r in runs if r["offered_rate"] is not None}):
        at = {r["mode"]: r["repeats_p99_s"] for r in runs if r["offered_rate"] == rate}
        out["p99_at_rate"][f"{rate:.4g}"] = {f"{mode}/{base}": ratio_stats(at[mode], at[base]) for base, mode in pairs}
    return out


def run_level(
    engines: dict[str, tuple[Engine, _Recorder]],
    work: Workload,
    cfg: EngineBenchConfig,
    level: str,
    log: Any,
) -> dict[str, Any]:
    for engine, _ in engines.values():
        BudgetControl(engine.budget).apply(BudgetUpdate(level=level))
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in engines}
    for engine, recorder in engines.values():  # unmeasured: first calls at new batch sizes are slow (oneDNN set-up)
        saturation_run(engine, recorder, work, min(cfg.saturation_requests, 4 * cfg.max_batch))
    for rep in range(cfg.repeats):
        for mode, (engine, recorder) in engines.items():
            samples[mode].append(saturation_run(engine, recorder, work, cfg.saturation_requests))
            log(f"{level:>10s} {mode:>14s} saturation #{rep + 1}: {samples[mode][-1]['videos_per_s']:.1f} videos/s")
    runs = []
    for mode, reps in samples.items():
        best = sorted(reps, key=lambda r: r["videos_per_s"])[len(reps) // 2]  # the median run
        runs.append(
            best | {"mode": mode, "offered_rate": None, "repeats_videos_per_s": [r["videos_per_s"] for r in reps]}
        )
    base = next((r["videos_per_s"] for r in runs if r["mode"] == "continuous"), runs[0]["videos_per_s"])
    rates = cfg.rates or tuple(round(f * base, 2) for f in cfg.rate_fractions)
    for j, rate in enumerate(rates):
        at_rate: dict[str, list[dict[str, Any]]] = {m: [] for m in engines}
        for rep in range(cfg.repeats):  # modes interleaved, same arrival schedule per repeat
            for mode, (engine, recorder) in engines.items():
                run = rate_run(engine, recorder, work, rate, cfg, cfg.seed + 1000 * j + rep)
                at_rate[mode].append(run)
                p99, served = run["latency_s"]["p99"] * 1e3, run["videos_per_s"]
                log(f"{level:>10s} {mode:>14s} rate {rate:.1f}/s #{rep + 1}: p99 {p99:.0f} ms, {served:.1f} videos/s")
        for mode, reps in at_rate.items():
            median = sorted(reps, key=lambda r: r["latency_s"]["p99"])[len(reps) // 2]  # the median-p99 run
            p99s = [r["latency_s"]["p99"] for r in reps]
            p50s = [r["latency_s"]["p50"] for r in reps]
            runs.append(median | {"mode": mode, "offered_rate": rate, "repeats_p99_s": p99s, "repeats_p50_s": p50s})
    return {"budget": level, "runs": runs, "ratios": _ratios(runs, list(engines))}


def run_engine_bench(
    work: Workload, cfg: EngineBenchConfig, log: Any = lambda _: None, runner: Runner | None = None
) -> dict[str, Any]:
    """Every mode of ``cfg`` on ``work``, over ``runner`` (default: eager PyTorch on ``cfg.device``)."""
    names = list(cfg.levels) or [lvl.name for lvl in work.budgets.levels]
    runner = runner or TorchRunner(work.model, cfg.device)  # one model, one runner: the engines run one at a time
    engines = _engines(work, cfg, runner)
    try:
        levels = [run_level(engines, work, cfg, name, log) for name in names]
        levels = add_floors(levels, stated_profile(runner), cfg.max_batch)
    finally:
        for engine, _ in engines.values():
            engine.shutdown(drain=True, timeout=30)
    return {
        "model": work.model.config.name,
        "source": work.source,
        "clips": work.clip_source,
        "device": device_name(cfg.device),
        "runner": runner_info(runner),
        "torch_threads": torch.get_num_threads(),
        "engine": {"max_batch": cfg.max_batch, "max_active": cfg.max_active},
        "settings": {
            "saturation_requests": cfg.saturation_requests,
            "repeats": cfg.repeats,
            "rate_duration_s": cfg.rate_duration_s,
            "deadline_s": cfg.deadline_s,
        },
        "modes": list(cfg.modes),
        "levels": levels,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {threading.active_count()} threads alive)"


# ---------------------------------------------------------------------------------------------- text
def format_engine(result: dict[str, Any]) -> str:
    lines = [
        f"model {result['model']}: {result['source']}",
        f"clips: {result['clips']}; device {result['device']}; torch threads {result['torch_threads']}; "
        f"allocator {result.get('allocator', 'default')}",
        runner_line(result.get("runner", {})),
        f"{'budget':<10s} {'mode':<14s} {'load':>10s} {'videos/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'glance b':>8s} {'focus b':>8s} {'GMACs/v':>8s} {'GMACs/s':>8s} {'busy':>5s} {'err':>4s}",
    ]
    for level in result["levels"]:
        for r in level["runs"]:
            load = "saturate" if r["offered_rate"] is None else f"{r['offered_rate']:.1f}/s"
            lat = r["latency_s"]
            err = sum(r["failed"].values()) + r["rejected"]
            mark = ">" if r["latency_lower_bound"] else " "
            lines.append(
                f"{level['budget']:<10s} {r['mode']:<14s} {load:>10s} {r['videos_per_s']:>9.1f} "
                f"{lat['p50'] * 1e3:>8.1f} {mark}{lat['p99'] * 1e3:>7.1f} {r['mean_batch']['glance']:>8.1f} "
                f"{r['mean_batch']['focus']:>8.1f} {r['gmacs_per_video']:>8.4f} {r['gmacs_per_s']:>8.2f} "
                f"{r['busy_fraction']:>5.2f} {err:>4d}"
            )
        ratios = level["ratios"]
        if ratios:
            sat = ", ".join(f"{k} {format_ratio(v)}" for k, v in ratios["saturation_videos_per_s"].items())
            lines.append(f"{'':<10s} saturation throughput: {sat}")
            for rate, vals in ratios["p99_at_rate"].items():
                lines.append(
                    f"{'':<10s} p99 at {rate}/s: " + ", ".join(f"{k} {format_ratio(v)}" for k, v in vals.items())
                )
    return "\n".join(lines)


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    """``median (min-max)`` of the interleaved repeats."""
    ordered = sorted(v * scale for v in values)
    return f"{statistics.median(ordered):.{digits}f} ({ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f})"


def repeats_markdown(result: dict[str, Any]) -> str:
    """Per level and mode: saturation videos/s and, at each offered load, p50 and p99 ms, as the median of the
    interleaved repeats with their min-max; then the mode ratios (median of per-repeat ratios, min-max)."""
    lines = [f"{runner_line(result.get('runner', {}))}; {result['settings']['repeats']} interleaved repeats", ""]
    lines += ["| budget | mode | saturation videos/s | offered load | p50 ms | p99 ms |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: |"]
    for level in result["levels"]:
        sat = {r["mode"]: r for r in level["runs"] if r["offered_rate"] is None}
        for r in level["runs"]:
            if r["offered_rate"] is None:
                continue
            load = f"{r['offered_rate']:.1f}/s"
            p50, p99 = _spread(r["repeats_p50_s"], 1e3), _spread(r["repeats_p99_s"], 1e3)
            lines.append(
                f"| {level['budget']} | {r['mode']} | {_spread(sat[r['mode']]['repeats_videos_per_s'], digits=1)} | "
                f"{load} | {p50} | {p99} |"
            )
    lines += ["", "| budget | saturation | p99 at each offered load |", "| --- | --- | --- |"]
    for level in result["levels"]:
        ratios = level["ratios"]
        if not ratios:
            continue
        sat_text = "; ".join(f"{k} {format_ratio(v)}" for k, v in ratios["saturation_videos_per_s"].items())
        rate_text = "; ".join(
            f"{rate}/s: " + ", ".join(f"{k} {format_ratio(v)}" for k, v in vals.items())
            for rate, vals in ratios["p99_at_rate"].items()
        )
        lines.append(f"| {level['budget']} | {sat_text} | {rate_text} |")
    return "\n".join(lines)
