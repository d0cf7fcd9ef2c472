"""The automatic budget: a pure controller that keeps a latency objective by choosing the budget level (no torch,
no numpy, no clock of its own; the engine feeds it at step boundaries, tests feed it by hand).

Inputs, all measured online by the engine:
- arrivals: every submit, refused ones included (the demand, not what was let in), counted over ``window_s``;
- the backlog: requests waiting for admission, which must drain within the objective (``queue / slo_p99_s`` more
  videos per second);
- what a video costs at each level: seconds per video of one glance and of one cube at a full batch (the engine's
  step-cost table), times the measured ratio of a step's wall time to its model calls, times the cubes a video
  of that level really ran (the mean of its recent answers; before any answer, the calibration split's expected
  GMACs/video converted to cubes).
The service rate of a level is the inverse of that cost: videos per second with the runner always busy.

The rule: the *ladder* is the named levels ordered by expected accuracy (ties: more GMACs ranks higher), cut at the
floor ``min_level``. A level keeps up while demand <= ``headroom`` x its service rate. When the current level stops
keeping up, the controller steps down at once to the most accurate level that does (the floor if none does). It
steps up only to a level that keeps up with the larger margin ``up_headroom``, and only once that has held for
``up_hold_s`` (hysteresis: Poisson bursts do not make it flap). At the floor with demand above what the floor keeps
up with, it is *pinned*: then, and only then, the engine refuses arrivals beyond the queue the floor can serve
within the objective (``queue_limit``: 503 queue_full).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BUDGET_MODES = ("manual", "auto")


class LevelSpec(Protocol):
    """What the controller reads of a budget level (``model.budgets.BudgetLevel`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def expected_gmacs(self) -> float: ...

    @property
    def expected_accuracy(self) -> float: ...


@dataclass(frozen=True, kw_only=True)
class AutoBudgetConfig:
    slo_p99_s: float  # the latency objective (seconds, p99 of submit -> answer)
    min_level: str | None = None  # the floor: never a level ranked below it; None = the least accurate level
    window_s: float = 2.0  # arrival rate: arrivals over this sliding window
    headroom: float = 0.85  # a level keeps up while demand <= headroom x its service rate
    up_headroom: float = 0.65  # step up only to a level with demand <= up_headroom x its service rate ...
    up_hold_s: float = 3.0  # ... continuously for this long
    cubes_weight: float = 0.05  # weight of one answer in a level's running mean of cubes per video

    def __post_init__(self) -> None:
        if not self.slo_p99_s > 0:
            raise ValueError(f"slo_p99_s must be > 0, got {self.slo_p99_s}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if not 0 < self.up_headroom <= self.headroom <= 1:
            raise ValueError(
                f"need 0 < up_headroom <= headroom <= 1, got up_headroom={self.up_headroom}, headroom={self.headroom}"
            )
        if self.up_hold_s < 0:
            raise ValueError(f"up_hold_s must be >= 0, got {self.up_hold_s}")
        if not 0 < self.cubes_weight <= 1:
            raise ValueError(f"cubes_weight must be in (0, 1], got {self.cubes_weight}")


@dataclass(frozen=True)
class VideoCosts:
    """Seconds per video at a full batch, measured by the engine."""

    glance_s: float  # one glance
    cube_s: float  # one cube through the local network
    overhead: float = 1.0  # step wall time / seconds inside model calls (>= 1: the loop's own work)

    def __post_init__(self) -> None:
        if not (self.glance_s > 0 and self.cube_s >= 0 and self.overhead >= 1):
            raise ValueError(f"bad video costs {self}")


@dataclass(frozen=True)
class Decision:
    level: str  # the level to run from this step on
    rank: int  # its place on the ladder: 0 = the floor
    changed: bool  # differs from the level before this decision
    arrival_rate: float  # requests/s over the window (refused ones included)
    demand: float  # arrival rate + backlog / objective, videos/s
    service_rate: float | None  # videos/s the chosen level serves; None until costs are measured
    pinned: bool  # at the floor, and the floor does not keep up
    queue_limit: int | None  # when pinned: the queue the floor serves within the objective (more -> 503)
    held: tuple[str, float]  # (level, seconds) held since the previous decision (seconds-at-level metric)


class AutoBudget:
    """The controller's state: the ladder, the arrivals in the window, cubes per level, the pending step up."""

    def __init__(
        self,
        config: AutoBudgetConfig,
        levels: Sequence[LevelSpec],
        glance_gmacs: float,
        cube_gmacs: float,
        start: str | None,
        now: float,
    ) -> None:
        if not levels:
            raise ValueError("the automatic budget needs at least one level")
        self.config = config
        ranked = sorted(levels, key=lambda lvl: (lvl.expected_accuracy, lvl.expected_gmacs))
        names = [lvl.name for lvl in ranked]
        floor = 0 if config.min_level is None else _index(names, config.min_level, "min_level")
        self.ladder: tuple[LevelSpec, ...] = tuple(ranked[floor:])  # floor first, most accurate last
        self.names = tuple(lvl.name for lvl in self.ladder)
        self._prior_cubes = {
            lvl.name: max(0.0, (lvl.expected_gmacs - glance_gmacs) / cube_gmacs) if cube_gmacs > 0 else 0.0
            for lvl in self.ladder
        }
        self._cubes: dict[str, float] = {}
        top = len(self.ladder) - 1
        self.index = self.names.index(start) if start in self.names else top
        self._arrivals: deque[float] = deque()
        self._last = now
        self._up_since: float | None = None
        self.last: Decision | None = None

    @property
    def level(self) -> str:
        return self.names[self.index]

    @property
    def floor(self) -> str:
        return self.names[0]

    # ------------------------------------------------------------------------------------------ inputs
    def on_arrival(self, now: float) -> None:
        """One submit (admitted or refused) at ``now``."""
        self._arrivals.append(now)

    def on_result(self, level: str, cubes: int) -> None:
        """An answer of a video that ran under ``level`` with ``cubes`` cubes (levels off the ladder: ignored)."""
        if level not in self._prior_cubes:
            return
        old = self._cubes.get(level)
        w = self.config.cubes_weight
        self._cubes[level] = float(cubes) if old is None else (1 - w) * old + w * cubes

    # ------------------------------------------------------------------------------------------ estimates
    def arrival_rate(self, now: float) -> float:
        """Requests per second over the last ``window_s`` (in the first window: an underestimate, which the
        backlog term makes up for; a shorter span would make the first few arrivals look like a flood)."""
        while self._arrivals and self._arrivals[0] <= now - self.config.window_s:
            self._arrivals.popleft()
        return len(self._arrivals) / self.config.window_s

    def cubes(self, level: str) -> float:
        """Mean cubes per video at ``level``: measured, else from the calibration split's GMACs."""
        return self._cubes.get(level, self._prior_cubes[level])

    def service_rate(self, level: str, costs: VideoCosts) -> float:
        """Videos per second ``level`` serves with the runner always busy."""
        return 1.0 / (costs.overhead * (costs.glance_s + self.cubes(level) * costs.cube_s))

    # ------------------------------------------------------------------------------------------ the rule
    def decide(self, now: float, queue_depth: int, costs: VideoCosts | None) -> Decision:
        """The level from this step on. Without costs (nothing measured yet) the level stays as it is."""
        held = (self.level, max(0.0, now - self._last))
        self._last = now
        rate = self.arrival_rate(now)
        demand = rate + queue_depth / self.config.slo_p99_s
        before = self.index
        if costs is None:
            self._up_since = None
            decision = Decision(self.level, self.index, False, rate, demand, None, False, None, held)
            self.last = decision
            return decision
        mu = [self.service_rate(name, costs) for name in self.names]
        keeps_up = [demand <= self.config.headroom * m for m in mu]
        if not keeps_up[self.index]:
            self.index = max((i for i in range(self.index) if keeps_up[i]), default=0)
            self._up_since = None
        else:
            up = [i for i in range(self.index + 1, len(mu)) if demand <= self.config.up_headroom * mu[i]]
            if not up:
                self._up_since = None
            else:
                if self._up_since is None:
                    self._up_since = now
                if now - self._up_since >= self.config.up_hold_s:
                    self.index = max(up)
                    self._up_since = None
        pinned = self.index == 0 and not keeps_up[0]
        limit = max(1, int(mu[0] * self.config.slo_p99_s * self.config.headroom)) if pinned else None
        decision = Decision(
            self.level, self.index, self.index != before, rate, demand, mu[self.index], pinned, limit, held
        )
        self.last = decision
        return decision


def _index(names: list[str], name: str, what: str) -> int:
    if name not in names:
        raise ValueError(f"{what}: unknown budget level {name!r}; available: {names}")
    return names.index(name)
