"""Markdown tables of benchmark and load-test results (``--markdown``), pasted into docs/benchmarks.md as is."""

from __future__ import annotations

from typing import Any

from loadtest.report import format_ratio


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---:" if i else "---" for i in range(len(header))]
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _ms(value: float | None, lower_bound: bool = False) -> str:
    if value is None:
        return "-"
    return f"{'≥ ' if lower_bound else ''}{value * 1e3:.0f}"


def engine_markdown(result: dict[str, Any]) -> str:
    """Per-run table and a per-level ratio summary of ``adafocus bench engine``."""
    rows = []
    for level in result["levels"]:
        for r in level["runs"]:
            load = "saturation" if r["offered_rate"] is None else f"{r['offered_rate']:.1f}/s"
            lat, low = r["latency_s"], r["latency_lower_bound"]
            errors = sum(r["failed"].values()) + r["rejected"]
            rows.append(
                [
                    level["budget"],
                    r["mode"],
                    load,
                    f"{r['videos_per_s']:.1f}",
                    _ms(lat["p50"], low),
                    _ms(lat["p99"], low),
                    f"{r['mean_batch']['glance']:.1f}",
                    f"{r['mean_batch']['focus']:.1f}",
                    f"{r['gmacs_per_video']:.4f}",
                    f"{r['gmacs_per_s']:.2f}",
                    f"{r['busy_fraction']:.2f}",
                    str(errors),
                ]
            )
    runs = _table(
        [
            "budget",
            "mode",
            "offered load",
            "videos/s",
            "p50 ms",
            "p99 ms",
            "glance batch",
            "focus batch",
            "GMACs/video",
            "GMACs/s",
            "runner busy",
            "errors",
        ],
        rows,
    )
    return runs + "\n\n" + engine_ratio_markdown(result)


def engine_ratio_markdown(result: dict[str, Any]) -> str:
    """One row per budget level: saturation throughput ratios and p99 ratios at each offered rate."""
    rows = []
    for level in result["levels"]:
        ratios = level["ratios"]
        if not ratios:
            continue
        sat = ratios["saturation_videos_per_s"]
        p99 = "; ".join(
            f"{rate}/s: " + ", ".join(f"{k} {format_ratio(v)}" for k, v in vals.items())
            for rate, vals in ratios["p99_at_rate"].items()
        )
        throughput = "; ".join(f"{k} {format_ratio(v)}" for k, v in sat.items())
        rows.append([level["budget"], throughput, p99])
    header = [
        "budget",
        "throughput ratio at saturation: median (min-max of interleaved repeats)",
        "p99 ratio at offered load",
    ]
    return _table(header, rows)


def decode_markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            fmt["format"],
            f"{fmt['file_bytes'] / 1024:.0f}",
            str(run["workers"]),
            f"{run['clips_per_s']:.1f}",
            f"{run['ms_per_clip_median']:.0f}",
            f"{run['speedup_vs_1']:.2f}x",
        ]
        for fmt in result["formats"]
        for run in fmt["runs"]
    ]
    return _table(["format", "file KiB", "workers", "clips/s", "ms/clip (median)", "speed-up vs 1"], rows)


def loadtest_markdown(result: dict[str, Any]) -> str:
    """One row per phase; with ``--stream``, also the time to the first event (p50, p99) next to the answer's."""
    streamed = any("stream" in p for p in result["phases"])
    rows = []
    for p in result["phases"]:
        lat = p["latency_s"]
        server = p.get("server") or {}
        busy = server.get("runner_busy_fraction")
        batch = server.get("mean_batch") or {}
        acc = "-" if p["accuracy"] is None else f"{p['accuracy']:.3f}"
        gmacs = "-" if p["gmacs_per_video"] is None else f"{p['gmacs_per_video']:.4f}"
        rows.append(
            [
                p["phase"],
                str(p["sent"]),
                str(p["completed"]),
                str(p["errors"]),
                f"{p['throughput']:.1f}",
                _ms(lat["p50"]),
                _ms(lat["p90"]),
                _ms(lat["p99"]),
                _ms(lat["max"]),
                gmacs,
                acc,
                "-" if busy is None else f"{busy:.2f}",
                "-" if batch.get("glance") is None else f"{batch['glance']:.1f}",
                "-" if batch.get("focus") is None else f"{batch['focus']:.1f}",
            ]
        )
        if streamed:
            first = (p.get("stream") or {}).get("first_event_s") or {}
            rows[-1] += [_ms(first.get("p50")), _ms(first.get("p99"))]
    header = [
        "phase",
        "sent",
        "ok",
        "errors",
        "videos/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "GMACs/video",
        "accuracy",
        "runner busy",
        "glance batch",
        "focus batch",
    ]
    if streamed:
        header += ["first event p50 ms", "first event p99 ms"]
    return _table(header, rows)
