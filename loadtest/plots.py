"""PNG plots of load-test and benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODES_CAPTION = (
    "continuous: refill freed slots at every step; continuous-mgN: admit waiting videos only when N slots are free; "
    "continuous-auto: N from the measured glance cost; drain: the next batch after the whole batch exited; "
    "single: batch size 1"
)


def _by_budget(phases: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for phase in phases:
        groups[phase.get("budget_level") or "active"].append(phase)
    return dict(groups)


def plot_load_vs_offered(result: dict[str, Any], out: Path, title: str = "") -> Path | None:
    """Latency (p50, p99) and throughput against offered rate, one line per budget level (open-loop sweeps)."""
    groups = {
        k: sorted((p for p in v if p.get("offered_rate")), key=lambda p: p["offered_rate"])
        for k, v in _by_budget(result["phases"]).items()
    }
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4))
    for name, phases in groups.items():
        rates = [p["offered_rate"] for p in phases]
        for q, style in (("p50", "-o"), ("p99", "--s")):
            values = [p["latency_s"][q] * 1e3 if p["latency_s"][q] is not None else float("nan") for p in phases]
            ax_lat.plot(rates, values, style, label=f"{name} {q}")
        ax_thr.plot(rates, [p["throughput"] for p in phases], "-o", label=name)
    top = max(p["offered_rate"] for v in groups.values() for p in v)
    ax_thr.plot([0, top], [0, top], ":", color="grey", label="offered = served")
    ax_lat.set(xlabel="offered load (videos/s)", ylabel="latency (ms)", yscale="log", title="latency vs load")
    ax_thr.set(xlabel="offered load (videos/s)", ylabel="throughput (videos/s)", title="throughput vs load")
    for ax in (ax_lat, ax_thr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats (no cheaper-or-equal point as accurate or more), by cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def plot_accuracy_vs_gmacs(result: dict[str, Any], out: Path, title: str = "") -> Path | None:
    """Accuracy against compute per video (GMACs), one point per budget level, with the Pareto frontier; the
    throughput of each level is in its label (on a shared CPU it is too noisy to be an axis)."""
    points = []
    for name, phases in _by_budget(result["phases"]).items():
        best = max(phases, key=lambda p: p["throughput"])
        if best.get("accuracy") is not None and best.get("gmacs_per_video") is not None:
            points.append((name, best["gmacs_per_video"], best["accuracy"], best["throughput"]))
    if len(points) < 2:  # one level is not a trade-off curve
        return None
    points.sort(key=lambda p: p[1])
    front = pareto_front([(g, a) for _, g, a, _ in points])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([g for g, _ in front], [100 * a for _, a in front], "-", color="C0", label="Pareto frontier")
    on_front = set(front)
    for name, gmacs, acc, thr in points:
        filled = (gmacs, acc) in on_front
        ax.plot(gmacs, 100 * acc, "o", color="C0", markerfacecolor="C0" if filled else "white")
        ax.annotate(f"{name}, {thr:.0f}/s", (gmacs, 100 * acc), textcoords="offset points", xytext=(5, -10),
                    fontsize=7)
    ax.set(xlabel="compute per video (GMACs, mean)", ylabel="accuracy (%)", title="accuracy vs compute per budget")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.text(0.01, 0.01, "hollow: a level another level beats (as accurate for less compute); "
             "label: level, videos/s served", fontsize=7, color="grey")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_engine_modes(result: dict[str, Any], out: Path, title: str = "") -> Path | None:
    """Engine benchmark: p99 latency vs offered rate per mode (one panel per budget level) and saturation
    throughput per mode and level."""
    levels = result.get("levels", [])
    if not levels:
        return None
    panels = len(levels) + 1
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for spare in axes[panels:]:
        spare.set_visible(False)
    modes = result.get("modes", [])
    for ax, level in zip(axes[: len(levels)], levels, strict=True):
        for mode in modes:
            runs = sorted(
                (r for r in level["runs"] if r["mode"] == mode and r["offered_rate"] is not None),
                key=lambda r: r["offered_rate"],
            )
            if runs:
                ax.plot(
                    [r["offered_rate"] for r in runs], [r["latency_s"]["p99"] * 1e3 for r in runs], "-o", label=mode
                )
        ax.set(xlabel="offered load (videos/s)", ylabel="p99 latency (ms)", yscale="log", title=level["budget"])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")  # latencies rise to the right: the upper left stays clear
    ax = axes[len(levels)]
    width = 0.8 / max(len(modes), 1)
    for i, mode in enumerate(modes):
        values = [
            next((r["videos_per_s"] for r in lvl["runs"] if r["mode"] == mode and r["offered_rate"] is None), 0.0)
            for lvl in levels
        ]
        ax.bar([j + i * width for j in range(len(levels))], values, width, label=mode)
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(levels))], [lvl["budget"] for lvl in levels])
    ax.set(ylabel="videos/s at saturation", title="saturation throughput")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(3, len(modes)))  # below bars
    fig.text(0.01, 0.01, MODES_CAPTION, fontsize=7, color="grey", wrap=True)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_adaptive(result: dict[str, Any], out: Path) -> Path:
    """``bench adaptive``: offered and answered rate, p99 and the budget level on one time axis, one column per
    run (fixed top level, automatic budget)."""
    runs = result["runs"]
    names = [lvl["name"] for lvl in sorted(result["levels"], key=lambda lvl: (lvl["expected_accuracy"],
                                                                              lvl["expected_gmacs"]))]
    fig, axes = plt.subplots(3, len(runs), figsize=(6 * len(runs), 8), sharex=True, squeeze=False)
    slo = result["config"]["slo_p99_s"]
    for col, (name, run) in enumerate(runs.items()):
        rows = run["per_second"]
        t = [r["t_s"] for r in rows]
        ax_rate, ax_p99, ax_level = axes[0][col], axes[1][col], axes[2][col]
        ax_rate.plot(t, [r["offered_per_s"] for r in rows], label="offered")
        ax_rate.plot(t, [r["answered_per_s"] for r in rows], label="answered (200)")
        ax_rate.set_ylabel("videos/s")
        ax_rate.set_title(f"{name}: {100 * run['answered_ok_fraction']:.1f}% answered, p99 {run['p99_s'] or 0:.2f} s")
        ax_rate.legend(loc="upper right")
        ax_p99.plot(t, [r["p99_s"] for r in rows], color="tab:red")
        ax_p99.axhline(slo, color="grey", linestyle="--", label=f"objective {slo:g} s")
        ax_p99.set_yscale("log")
        ax_p99.set_ylabel("p99 of answers (s)")
        ax_p99.legend(loc="upper right")
        ax_level.step(t, [names.index(r["level"]) if r["level"] in names else -1 for r in rows], where="post")
        ax_level.set_yticks(range(len(names)), names)
        ax_level.set_ylabel("budget level")
        ax_level.set_xlabel("time (s)")
    fig.suptitle(f"step load (x capacity of {result['top_level']}: {result['capacity_videos_per_s']:.1f} videos/s)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
