"""The engine's step timing and its automatic budget: what the engine measures about its own steps (wall time, the
share spent outside model calls) and the controller it feeds with it. No torch, no threads: the engine and its
``ActiveBudget`` (service/engine/active_budget.py: turning the controller on and off, its decision each step) call
every method under the engine's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.engine.autobudget import AutoBudget, AutoBudgetConfig, Decision, LevelSpec, VideoCosts
from service.engine.batch_costs import EWMA_WEIGHT, StepCostTable
from service.engine.config import EngineConfig
from service.engine.errors import QueueFull


class Pilot:
    def __init__(self, config: EngineConfig, cost_table: StepCostTable, glance_gmacs: float, cube_gmacs: float) -> None:
        self.config = config
        self.cost_table = cost_table
        self.glance_gmacs, self.cube_gmacs = glance_gmacs, cube_gmacs
        self.auto: AutoBudget | None = None
        self.step_seconds: float | None = None  # EWMA of a step's wall time
        self.overhead = 1.0  # EWMA of a step's wall time / its seconds inside model calls

    # ------------------------------------------------------------------------------------------ step timing
    def on_step(self, wall: float, model: float) -> None:
        """One step took ``wall`` seconds, ``model`` of them inside model calls."""
        self.step_seconds = wall if self.step_seconds is None else _ewma(self.step_seconds, wall)
        if model > 0 and wall >= model:
            self.overhead = _ewma(self.overhead, wall / model)

    @property
    def deadline_margin(self) -> float | None:
        """How long before its deadline a glanced request is answered (about one step); None: deadline answers
        are off."""
        return (self.step_seconds or 0.0) if self.config.deadline_answers else None

    def video_costs(self) -> VideoCosts | None:
        """Seconds per video of one glance and one cube at a full batch, from the step-cost table."""
        costs = self.cost_table.snapshot()
        if costs is None:
            return None
        b = min(self.config.batch_cap, self.config.active_cap)
        return VideoCosts(costs.glance[b - 1] / b, costs.focus[b - 1] / b, max(1.0, self.overhead))

    # ------------------------------------------------------------------------------------------ automatic budget
    def enable(self, config: AutoBudgetConfig, levels: Sequence[LevelSpec], start: str, now: float) -> AutoBudget:
        self.auto = AutoBudget(config, levels, self.glance_gmacs, self.cube_gmacs, start, now)
        return self.auto

    def disable(self) -> None:
        self.auto = None

    def on_arrival(self, now: float, waiting: int) -> None:
        """Count a submit; raise QueueFull while pinned at the floor with the queue the floor serves in time."""
        if self.auto is None:
            return
        self.auto.on_arrival(now)
        last = self.auto.last
        if last is not None and last.queue_limit is not None and waiting >= last.queue_limit:
            raise QueueFull(
                f"the cheapest allowed budget level ({last.level}) cannot keep up: {waiting} requests already wait"
            )

    def on_result(self, level: str, cubes: int) -> None:
        if self.auto is not None:
            self.auto.on_result(level, cubes)

    def decide(self, now: float, waiting: int) -> Decision | None:
        """The automatic budget's decision for this step (None while it is off)."""
        if self.auto is None:
            return None
        return self.auto.decide(now, waiting, self.video_costs())


def _ewma(old: float, new: float) -> float:
    return (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new
