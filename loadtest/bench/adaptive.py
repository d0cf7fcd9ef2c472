"""``adafocus bench adaptive``: overload at the fixed top budget level vs the automatic budget, in-process.

The engine runs on pre-decoded clips (the regime of a GPU server whose decoding has its own cores). First the
capacity of the most accurate level is measured (every request submitted at once: videos/s). Then one step-load
schedule (by default 0.5x -> 3x -> 0.5x of that capacity, Poisson arrivals, one seed) is played twice, each time
on a fresh engine: once at the fixed top level, once with the automatic budget (``service.engine.autobudget``) and
its latency objective. A refused submit (QueueFull) and a request that never got its glance before its deadline
count as not answered; an answer at the deadline (exit reason ``deadline``) counts as answered. Latency counts
from the intended arrival time, so a sender that falls behind cannot hide queueing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.bench.workload import Workload
from loadtest.report import latency_summary
from loadtest.schedule import Phase, schedule
from service.budget.control import BudgetControl
from service.engine.autobudget import Decision
from service.engine.config import EngineConfig
from service.engine.engine import Engine, run_offline
from service.engine.errors import DeadlineExceeded, EngineError, QueueFull
from service.engine.observer import NullObserver
from service.engine.runners.torch_runner import TorchRunner
from service.engine.types import EngineRequest, EngineResult
from service.schemas import BudgetUpdate


@dataclass(frozen=True)
class AdaptiveBenchConfig:
    phases: tuple[Phase, ...] = ((0.5, 10.0), (3.0, 30.0), (0.5, 20.0))
    slo_p99_s: float = 0.5  # the automatic budget's objective, and the bar both runs are measured against
    min_level: str | None = None  # the automatic budget's floor
    deadline_s: float = 5.0  # per request (engine deadline): answered at it when glanced, else not answered
    capacity_requests: int = 256  # requests submitted at once to measure the top level's capacity
    max_batch: int = 8
    max_active: int = 8
    max_queue: int = 256
    seed: int = 0
    device: str = "cpu"


@dataclass
class _Timeline(NullObserver):
    """An EngineObserver that keeps when the level changed (engine clock) and the controller's decisions."""

    clock: Callable[[], float]
    levels: list[tuple[float, str]] = field(default_factory=list)
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_budget(self, name: str, version: int) -> None:
        with self.lock:
            self.levels.append((self.clock(), name))

    def on_auto_budget(self, decision: Decision) -> None:
        with self.lock:
            if not self.decisions or decision.changed or decision.pinned != self.decisions[-1][1].pinned:
                self.decisions.append((self.clock(), decision))


@dataclass
class _Outcome:
    arrival: float  # intended, seconds from the run start
    done: float | None = None
    status: str = "pending"  # ok | refused | deadline_504 | error
    result: EngineResult | None = None
    label: int | None = None


def ladder_top(work: Workload) -> str:
    """The most accurate level (ties: more GMACs), the level the fixed run serves at."""
    return max(work.budgets.levels, key=lambda lvl: (lvl.expected_accuracy, lvl.expected_gmacs)).name



def measure_capacity(work: Workload, cfg: AdaptiveBenchConfig, level: str) -> float:
    """Videos/s at ``level`` with every request submitted at once (after a warm-up)."""
    engine = _engine(work, cfg, None)
    BudgetControl(engine.budget).apply(BudgetUpdate(level=level))
    reqs = [EngineRequest(frames=work.frames[i % len(work.frames)]) for i in range(cfg.capacity_requests)]
    start = time.perf_counter()
    run_offline(engine, reqs)
    elapsed = time.perf_counter() - start
    engine.shutdown()
    return cfg.capacity_requests / elapsed


def _engine(work: Workload, cfg: AdaptiveBenchConfig, observer: _Timeline | None) -> Engine:
    config = EngineConfig(max_batch=cfg.max_batch, max_active=cfg.max_active, max_queue=cfg.max_queue)
    runner = TorchRunner(work.model, cfg.device)
    engine = Engine(runner, work.model.config, work.budgets, work.costs, config, observer)
    engine.warmup()
    return engine


def play(work: Workload, cfg: AdaptiveBenchConfig, arrivals: np.ndarray, auto: bool, top: str) -> dict[str, Any]:
    """One run of the schedule: the fixed top level, or the automatic budget (starting at the top level)."""
    timeline = _Timeline(time.monotonic)
    engine = _engine(work, cfg, timeline)
    control = BudgetControl(engine.budget)
    control.apply(BudgetUpdate(level=top))
    if auto:
        control.apply(BudgetUpdate(mode="auto", p99_s=cfg.slo_p99_s, min_level=cfg.min_level))
    outcomes = [_Outcome(float(t)) for t in arrivals]
    engine.start()
    t0 = time.monotonic()
    timeline.levels.append((t0, engine.budget.current().name))
    lock = threading.Lock()

    def finish(out: _Outcome, future: Future[EngineResult]) -> None:
        with lock:
            out.done = time.monotonic() - t0
            try:
                out.result, out.status = future.result(), "ok"
            except DeadlineExceeded:
                out.status = "deadline_504"
            except EngineError:
                out.status = "error"

    futures = []
    for i, out in enumerate(outcomes):
        delay = t0 + out.arrival - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # an open-loop sender: arrivals on their own schedule, whatever the server does
        frames = work.frames[i % len(work.frames)]
        out.label = None if work.labels is None else int(work.labels[i % len(work.labels)])
        deadline = t0 + out.arrival + cfg.deadline_s
        try:
            future = engine.submit(EngineRequest(frames=frames, deadline=deadline))
        except QueueFull:
            out.status, out.done = "refused", time.monotonic() - t0
            continue
        future.add_done_callback(lambda f, o=out: finish(o, f))  # type: ignore[misc]
        futures.append(future)
    for future in futures:
        with contextlib.suppress(EngineError):
            future.result(timeout=cfg.deadline_s + 60)
    engine.shutdown()
    levels = [(t - t0, name) for t, name in timeline.levels]
    decisions = [(t - t0, d) for t, d in timeline.decisions]
    return summarise(outcomes, levels, decisions, cfg, auto)


def _level_at(levels: list[tuple[float, str]], t: float) -> str:
    current = levels[0][1]
    for when, name in levels:
        if when <= t:
            current = name
    return current


def summarise(
    outcomes: list[_Outcome],
    levels: list[tuple[float, str]],
    decisions: list[tuple[float, Decision]],
    cfg: AdaptiveBenchConfig,
    auto: bool,
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == "ok" and o.result is not None and o.done is not None]
    latencies = [o.done - o.arrival for o in ok if o.done is not None]
    labelled = [o for o in ok if o.label is not None and o.result is not None]
    correct = sum(1 for o in labelled if o.result is not None and o.result.class_id == o.label)
    end = max([o.arrival for o in outcomes] + [o.done or 0.0 for o in outcomes])
    rows = []
    for s in range(int(np.ceil(end))):
        answered = [o for o in ok if o.done is not None and s <= o.done < s + 1]
        lat = [o.done - o.arrival for o in answered if o.done is not None]
        lab = [o for o in answered if o.label is not None and o.result is not None]
        rows.append(
            {
                "t_s": s,
                "offered_per_s": sum(1 for o in outcomes if s <= o.arrival < s + 1),
                "answered_per_s": len(answered),
                "refused_per_s": sum(
                    1 for o in outcomes if o.status != "ok" and o.done is not None and s <= o.done < s + 1
                ),
                "p99_s": latency_summary(lat)["p99"],
                "accuracy": (sum(1 for o in lab if o.result is not None and o.result.class_id == o.label) / len(lab))
                if lab
                else None,
                "level": _level_at(levels, s + 1),
            }
        )
    return {
        "mode": "auto" if auto else "fixed",
        "offered": len(outcomes),
        "answered_ok": len(ok),
        "answered_ok_fraction": len(ok) / len(outcomes) if outcomes else None,
        "refused_503": sum(1 for o in outcomes if o.status == "refused"),
        "deadline_504": sum(1 for o in outcomes if o.status == "deadline_504"),
        "errors": sum(1 for o in outcomes if o.status == "error"),
        "exit_reasons": dict(Counter(o.result.exit_reason for o in ok if o.result is not None)),
        "p99_s": latency_summary(latencies)["p99"],
        "p50_s": latency_summary(latencies)["p50"],
        "slo_p99_s": cfg.slo_p99_s,
        "within_slo_fraction": (sum(1 for x in latencies if x <= cfg.slo_p99_s) / len(outcomes)) if outcomes else None,
        "accuracy": correct / len(labelled) if labelled else None,
        "levels_used": dict(Counter(o.result.budget for o in ok if o.result is not None)),
        "level_changes": [{"t_s": round(t, 3), "level": name} for t, name in levels],
        "decisions": [
            {
                "t_s": round(t, 3),
                "level": d.level,
                "arrival_rate": round(d.arrival_rate, 2),
                "service_rate": None if d.service_rate is None else round(d.service_rate, 2),
                "pinned": d.pinned,
            }
            for t, d in decisions
        ],
        "per_second": rows,
    }


def phase_summary(per_second: list[dict[str, Any]], span: dict[str, float]) -> dict[str, Any]:
    """The per-second rows of one phase, aggregated."""
    rows = [r for r in per_second if span["start_s"] <= r["t_s"] < span["end_s"]]
    offered = sum(r["offered_per_s"] for r in rows)
    answered = sum(r["answered_per_s"] for r in rows)
    p99 = [r["p99_s"] for r in rows if r["p99_s"] is not None]
    return {
        **span,
        "offered": offered,
        "answered": answered,
        "worst_second_p99_s": max(p99) if p99 else None,
        "levels": sorted({r["level"] for r in rows}),
    }


def return_to_top_s(run: dict[str, Any], top: str, since: float) -> float | None:
    """Seconds after ``since`` until the level was back at ``top`` for good (None: never)."""
    changes = [c for c in run["level_changes"] if c["t_s"] >= since]
    before = [c for c in run["level_changes"] if c["t_s"] < since]
    if before and before[-1]["level"] == top and not changes:
        return 0.0
    if not changes or changes[-1]["level"] != top:
        return None
    return float(changes[-1]["t_s"] - since)


def run_adaptive_bench(work: Workload, cfg: AdaptiveBenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    top = ladder_top(work)
    log(f"measuring the capacity of the top level {top!r} ({cfg.capacity_requests} requests at once) ...")
    capacity = measure_capacity(work, cfg, top)
    arrivals, spans = schedule(cfg.phases, capacity, cfg.seed)
    log(f"capacity {capacity:.1f} videos/s; {len(arrivals)} arrivals over {spans[-1]['end_s']:g} s per run")
    runs = {}
    for auto in (False, True):
        log(f"run: {'automatic budget' if auto else 'fixed level ' + top} ...")
        runs["auto" if auto else "fixed"] = play(work, cfg, arrivals, auto, top)
    for run in runs.values():
        run["phases"] = [phase_summary(run["per_second"], span) for span in spans]
    last = spans[-1]["start_s"]
    return {
        "model": work.source,
        "clips": work.clip_source,
        "top_level": top,
        "levels": [
            {"name": lvl.name, "expected_gmacs": lvl.expected_gmacs, "expected_accuracy": lvl.expected_accuracy}
            for lvl in work.budgets.levels
        ],
        "capacity_videos_per_s": capacity,
        "config": {
            "phases": [list(p) for p in cfg.phases],
            "slo_p99_s": cfg.slo_p99_s,
            "min_level": cfg.min_level,
            "deadline_s": cfg.deadline_s,
            "max_batch": cfg.max_batch,
            "max_active": cfg.max_active,
            "max_queue": cfg.max_queue,
            "seed": cfg.seed,
            "device": cfg.device,
        },
        "auto_return_to_top_s": return_to_top_s(runs["auto"], top, last),
        "runs": runs,
    }


def format_adaptive(result: dict[str, Any]) -> str:
    lines = [
        f"model: {result['model']}",
        f"top level {result['top_level']}: capacity {result['capacity_videos_per_s']:.1f} videos/s; "
        f"phases {result['config']['phases']} (x capacity, s); objective p99 {result['config']['slo_p99_s']:g} s",
        "",
        f"{'run':<6s} {'offered':>7s} {'ok%':>6s} {'503':>5s} {'504':>5s} {'p50 s':>7s} {'p99 s':>7s} "
        f"{'in-SLO%':>7s} {'acc':>6s}  levels used",
    ]
    for name, run in result["runs"].items():
        acc = "-" if run["accuracy"] is None else f"{100 * run['accuracy']:.1f}"
        p50 = "-" if run["p50_s"] is None else f"{run['p50_s']:.3f}"
        p99 = "-" if run["p99_s"] is None else f"{run['p99_s']:.3f}"
        lines.append(
            f"{name:<6s} {run['offered']:>7d} {100 * run['answered_ok_fraction']:>6.1f} {run['refused_503']:>5d} "
            f"{run['deadline_504']:>5d} {p50:>7s} {p99:>7s} {100 * run['within_slo_fraction']:>7.1f} {acc:>6s}  "
            f"{run['levels_used']}"
        )
    back = result["auto_return_to_top_s"]
    lines.append(
        f"auto: back at the top level {'never' if back is None else f'{back:.1f} s'} after the last phase began"
    )
    for name, run in result["runs"].items():
        lines += [
            "",
            f"per second, {name}:",
            f"{'t':>4s} {'offered':>7s} {'ok':>5s} {'refused':>7s} {'p99 s':>7s} {'acc':>6s}  level",
        ]
        for r in run["per_second"]:
            p99 = "-" if r["p99_s"] is None else f"{r['p99_s']:.3f}"
            acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.0f}"
            lines.append(
                f"{r['t_s']:>4d} {r['offered_per_s']:>7d} {r['answered_per_s']:>5d} {r['refused_per_s']:>7d} "
                f"{p99:>7s} {acc:>6s}  {r['level']}"
            )
    return "\n".join(lines)
