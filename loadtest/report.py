"""Per-request samples and their summary: throughput, latency percentiles, errors, compute, exits, accuracy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class Sample:
    """One request: times are event-loop seconds (monotonic); latency counts from the intended send time."""

    intended: float  # when the schedule wanted it sent (open loop) or when it was sent (closed loop)
    done: float | None = None  # answer or failure time; None while in flight
    status: int | None = None  # HTTP status; None for transport errors
    code: str | None = None  # error ``code`` from the JSON body, or the transport error kind
    class_id: int | None = None
    label: str | None = None
    gmacs: float | None = None
    exit_step: int | None = None
    budget: str | None = None
    correct: bool | None = None  # None when the corpus has no ground truth for this item
    first_event: float | None = None  # streamed requests: when the first event arrived

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.intended

    @property
    def first_event_latency(self) -> float | None:
        return None if self.first_event is None else self.first_event - self.intended


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in seconds (None when there are no samples)."""
    if not latencies:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(latencies, dtype=np.float64)
    out: dict[str, float | None] = {f"p{q}": float(np.percentile(arr, q)) for q in PERCENTILES}
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    return out


def _histogram(values: Iterable[int | str | None]) -> dict[str, int]:
    counts = Counter(str(v) for v in values if v is not None)
    return dict(sorted(counts.items(), key=lambda kv: (len(kv[0]), kv[0])))


def summarize(samples: Sequence[Sample], started: float, not_sent: int = 0) -> dict[str, Any]:
    """The JSON result of one phase. ``started`` is the phase's time zero; ``not_sent`` counts arrivals the
    client dropped (its in-flight cap), which are reported as errors of status ``client``."""
    finished = [s for s in samples if s.done is not None]
    ok = [s for s in finished if s.ok]
    failed = [s for s in finished if not s.ok]
    end = max((s.done for s in finished if s.done is not None), default=started)
    elapsed = max(end - started, 1e-9)
    errors_by_status = _histogram("transport" if s.status is None else s.status for s in failed)
    errors_by_code = _histogram(s.code or "unknown" for s in failed)
    if not_sent:
        errors_by_status["client"] = not_sent
        errors_by_code["max_inflight"] = not_sent
    gmacs = [s.gmacs for s in ok if s.gmacs is not None]
    judged = [s.correct for s in ok if s.correct is not None]
    result: dict[str, Any] = {
        "sent": len(samples),
        "completed": len(ok),
        "errors": len(failed) + not_sent,
        "unanswered": len(samples) - len(finished),
        "elapsed_s": elapsed,
        "throughput": len(ok) / elapsed,
        "latency_s": latency_summary([s.latency for s in ok if s.latency is not None]),
        "errors_by_status": errors_by_status,
        "errors_by_code": errors_by_code,
        "gmacs_per_video": float(np.mean(gmacs)) if gmacs else None,
        "exit_step_histogram": _histogram(s.exit_step for s in ok),
        "budgets": _histogram(s.budget for s in ok),
        "accuracy": float(np.mean(judged)) if judged else None,
        "labelled": len(judged),
    }
    first = [s.first_event_latency for s in ok if s.first_event_latency is not None]
    if first:  # streamed: time to the first event vs to the final answer, over the answered requests
        result["stream"] = {
            "first_event_s": latency_summary(first),
            "result_s": latency_summary([s.latency for s in ok if s.latency is not None]),
            "streamed": len(first),
        }
    return result


def format_phase(result: dict[str, Any]) -> str:
    """One human-readable line per phase."""
    lat = result["latency_s"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.0f}"

    acc = "-" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
    gm = "-" if result["gmacs_per_video"] is None else f"{result['gmacs_per_video']:.4f}"
    errors = ", ".join(f"{k} x{v}" for k, v in result["errors_by_code"].items())
    stream = result.get("stream")
    first = ""
    if stream is not None:
        fe = stream["first_event_s"]
        first = f"  first event p50 {ms(fe['p50'])} p99 {ms(fe['p99'])} ms"
    return (
        f"{result['phase']:<28s} sent {result['sent']:>6d} ok {result['completed']:>6d} err {result['errors']:>5d}  "
        f"{result['throughput']:8.2f}/s  p50 {ms(lat['p50'])} p90 {ms(lat['p90'])} p99 {ms(lat['p99'])} "
        f"max {ms(lat['max'])} ms  GMACs {gm}  acc {acc}{first}" + (f"  errors: {errors}" if errors else "")
    )


def ratio_stats(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """A ratio over interleaved repeats: repeat i of one mode against repeat i of the other (the two ran back to
    back), with the median and the min-max of those per-repeat ratios."""
    per_repeat = sorted(a / b for a, b in zip(numerators, denominators, strict=True) if b > 0)
    if not per_repeat:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "repeats": []}
    mid = len(per_repeat) // 2
    median = per_repeat[mid] if len(per_repeat) % 2 else (per_repeat[mid - 1] + per_repeat[mid]) / 2
    return {"median": median, "min": per_repeat[0], "max": per_repeat[-1], "repeats": per_repeat}


def format_ratio(stats: dict[str, Any]) -> str:
    """``1.23x (1.10-1.31x, 3 repeats)``."""
    n = len(stats["repeats"])
    if n < 2:
        return f"{stats['median']:.2f}x (1 repeat)"
    return f"{stats['median']:.2f}x ({stats['min']:.2f}-{stats['max']:.2f}x, {n} repeats)"
