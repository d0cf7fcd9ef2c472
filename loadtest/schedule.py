"""Arrival schedules and run bounds, shared by the HTTP load generator and the in-process engine benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# NOTE: a run is always bounded. Without --duration or --requests it lasts DEFAULT_DURATION_S, and no phase
# ever sends more than HARD_MAX_REQUESTS or runs longer than HARD_MAX_DURATION_S, whatever the flags say.
DEFAULT_DURATION_S = 30.0
HARD_MAX_REQUESTS = 100_000
HARD_MAX_DURATION_S = 3600.0


@dataclass(frozen=True)
class Bound:
    """When a phase stops sending: after ``duration_s`` seconds or ``requests`` requests, whichever is first."""

    duration_s: float | None = None
    requests: int | None = None

    def __post_init__(self) -> None:
        if self.duration_s is not None and not 0 < self.duration_s <= HARD_MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {HARD_MAX_DURATION_S:g}] seconds, got {self.duration_s}")
        if self.requests is not None and not 0 < self.requests <= HARD_MAX_REQUESTS:
            raise ValueError(f"requests must be in [1, {HARD_MAX_REQUESTS}], got {self.requests}")

    @classmethod
    def of(cls, duration_s: float | None, requests: int | None) -> Bound:
        if duration_s is None and requests is None:
            return cls(duration_s=DEFAULT_DURATION_S)
        return cls(duration_s=duration_s, requests=requests)

    @property
    def max_requests(self) -> int:
        return self.requests if self.requests is not None else HARD_MAX_REQUESTS

    @property
    def max_duration_s(self) -> float:
        return self.duration_s if self.duration_s is not None else HARD_MAX_DURATION_S

    def describe(self) -> str:
        parts = []
        if self.duration_s is not None:
            parts.append(f"{self.duration_s:g}s")
        if self.requests is not None:
            parts.append(f"{self.requests} requests")
        return " or ".join(parts)


def poisson_arrivals(rate: float, bound: Bound, seed: int = 0) -> np.ndarray:
    """Intended send times (seconds from the phase start) of a Poisson process of ``rate`` per second.

    Exponential inter-arrival gaps with mean 1 / rate, cut at the bound's duration and request count.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = np.random.default_rng(seed)
    # enough gaps to pass the duration with overwhelming probability, never more than the request cap
    expected = rate * bound.max_duration_s
    n = int(min(bound.max_requests, expected + 10 * np.sqrt(expected) + 10))
    times = np.cumsum(rng.exponential(1.0 / rate, size=n))  # (n,)
    return times[times < bound.max_duration_s]


Phase = tuple[float, float]  # (multiple of a capacity in videos/s, seconds): one phase of a step load


def schedule(phases: Sequence[Phase], capacity: float, seed: int) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Arrival times (s from start) of the step profile, and the phases with their absolute rates and bounds."""
    times, spans, start = [], [], 0.0
    for k, (factor, seconds) in enumerate(phases):
        rate = factor * capacity
        arrivals = poisson_arrivals(rate, Bound(duration_s=seconds), seed + k)
        times.append(arrivals + start)
        spans.append({"factor": factor, "rate": rate, "start_s": start, "end_s": start + seconds})
        start += seconds
    return np.concatenate(times), spans
