"""Step costs by batch size, and the rule that turns them into the glance admission batch (no torch, no numpy).

The scheduler stays pure: it gets a ``StepCosts`` snapshot (seconds of one glance call and one focus call at each
batch size 1..cap) as an input to ``plan``. The engine measures it at warm-up and refines it online
(``StepCostTable``, an exponential moving average per stage and batch size).

The admission rule (``knee_batch``): a glance batch costs less per video the larger it is, but waiting for a larger
batch delays the requests in the queue and leaves slots idle. The scheduler waits for ``knee_batch`` free slots:
the smallest batch whose cost per video is within ``tolerance`` of the best cost per video any batch up to the cap
reaches. Beyond it, waiting gains less than ``tolerance`` per video; below it, admitting at once would pay more.
The oldest waiting request's wait stays bounded by ``max_glance_wait_steps`` steps (the scheduler's own count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.engine.config import Stage

DEFAULT_TOLERANCE = 0.10  # accept a glance batch whose cost per video is within 10% of the best
EWMA_WEIGHT = 0.2  # weight of a new measurement in the online estimate


@dataclass(frozen=True)
class StepCosts:
    """Seconds of one model call with b samples, b = 1..len, per stage."""

    glance: tuple[float, ...]
    focus: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("glance", "focus"):
            values = getattr(self, name)
            if not values or any(not v > 0 for v in values):
                raise ValueError(f"{name} costs must be a non-empty list of positive seconds, got {values}")


def knee_batch(per_call: Sequence[float], tolerance: float = DEFAULT_TOLERANCE) -> int:
    """The smallest batch size b whose seconds per sample, per_call[b-1] / b, is within ``tolerance`` of the best
    seconds per sample over every size in ``per_call``."""
    per_sample = [s / b for b, s in enumerate(per_call, start=1)]
    best = min(per_sample)
    return next(b for b, c in enumerate(per_sample, start=1) if c <= best * (1 + tolerance))


class StepCostTable:
    """Online estimate of the step costs at batch sizes 1..cap (the engine's, one thread)."""

    def __init__(self, cap: int, weight: float = EWMA_WEIGHT) -> None:
        self.cap, self.weight = cap, weight
        self._seconds: dict[Stage, list[float | None]] = {"glance": [None] * cap, "focus": [None] * cap}

    def record(self, stage: Stage, batch: int, seconds: float) -> None:
        if not 1 <= batch <= self.cap or seconds <= 0:
            return
        row = self._seconds[stage]
        old = row[batch - 1]
        row[batch - 1] = seconds if old is None else (1 - self.weight) * old + self.weight * seconds

    def snapshot(self) -> StepCosts | None:
        """The table with unmeasured sizes filled in (linear between measured ones, per-sample cost held constant
        beyond them); None until both stages have a measurement."""
        filled = {stage: _fill(row) for stage, row in self._seconds.items()}
        if filled["glance"] is None or filled["focus"] is None:
            return None
        return StepCosts(filled["glance"], filled["focus"])


def _fill(row: list[float | None]) -> tuple[float, ...] | None:
    """One pass over the sizes (the engine calls this every step): linear between measured sizes, the nearest
    measured size's cost per sample beyond them."""
    known = [(b, s) for b, s in enumerate(row, start=1) if s is not None]
    if not known:
        return None
    out = []
    j = 0  # known[j] is the first measured size >= b, or the last one
    for b in range(1, len(row) + 1):
        while j < len(known) - 1 and known[j][0] < b:
            j += 1
        b1, s1 = known[j]
        if b1 == b:
            out.append(s1)
        elif b1 > b and j > 0:
            b0, s0 = known[j - 1]
            out.append(s0 + (s1 - s0) * (b - b0) / (b1 - b0))
        else:  # before the first or after the last measured size
            out.append(s1 * b / b1)
    return tuple(out)


def fewest_seconds(per_call: Sequence[float], samples: int) -> float:
    """The least time any schedule needs for ``samples`` samples of one stage, in calls of 1..len(per_call)
    samples each costing ``per_call[b - 1]`` (exact for any curve: the cheapest split of ``samples`` into calls)."""
    best = [0.0] + [float("inf")] * samples  # best[s]: the cheapest s samples
    for s in range(1, samples + 1):
        best[s] = min(per_call[b - 1] + best[s - b] for b in range(1, min(s, len(per_call)) + 1))
    return best[samples]


def schedule_floor(costs: StepCosts, videos: int, cubes: int) -> float:
    """Device seconds below which no schedule can serve ``videos`` glances and ``cubes`` focus samples: each
    stage in its cheapest calls. Exits do not depend on the schedule (a request's exit depends only on its own
    cubes), so this bounds every mode on the same requests; it ignores that a request's cubes run one per step
    and that at most ``max_active`` requests hold slots, so no schedule need reach it."""
    return fewest_seconds(costs.glance, videos) + fewest_seconds(costs.focus, cubes)
