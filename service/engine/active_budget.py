"""The engine's handle on its budget: the ``BudgetState`` it binds every step, replaced atomically.

The engine reads ``current()`` once per step (under its lock) and binds it to the requests whose glance runs in that
step, so a replacement applies at a step boundary, a request already in flight finishes under the version it started
with, and every result reports the version whose thresholds decided its exit. Operators' settings come through
``service.budget.control.BudgetControl`` (validation, the setting's version, the update's four shapes), which calls
``replace`` or ``replace_auto``; the automatic budget's own level changes come from the engine thread at a step
boundary (``steer_locked``, under the engine's lock). Every new state's version follows ``next_version``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from model.budgets import BudgetTable, validate_thresholds
from service.engine.autobudget import AutoBudget, AutoBudgetConfig
from service.engine.observer import EngineObserver
from service.engine.step_timing import Pilot
from service.engine.types import BudgetState


def next_version(previous: int, at_least: int = 0) -> int:
    """The budget's version rule (written here only): after ``previous`` and at least ``at_least``, so a version
    never goes back.

    - A new operator setting (``PUT /budget`` with a budget file, the fleet's keeper) is versioned
      ``next_version(the last setting's version, wall_ms())``: at least the wall clock in ms since the epoch, so a
      restart never reuses a version and every replica that applies the setting reports the same number.
    - The engine applying a setting of version ``v`` takes ``next_version(its version, v)``: ``v``, unless the engine
      has moved past it (the automatic budget's own changes, a budget file edited by hand), then its next; the state
      keeps ``v`` as its ``setting_version``, which replicas compare.
    - The engine's own changes (the automatic budget picking a level, a setting without a version: a ``PUT`` on a
      server with no budget file) count up by one: ``next_version(its version)``; the automatic budget's keep the
      ``setting_version`` of the setting that turned it on.
    """
    return max(previous + 1, at_least)


class ActiveBudget:
    """The active threshold set of one engine, and its automatic budget's controller while that is on.

    ``lock`` is the engine's: a replacement waits for the step boundary, and the engine thread reads the state and
    feeds the controller under the same lock.
    """

    def __init__(
        self, table: BudgetTable, num_exits: int, pilot: Pilot, lock: threading.Lock, observer: EngineObserver,
        clock: Callable[[], float],
    ) -> None:
        for level in table.levels:
            validate_thresholds(list(level.thresholds), num_exits)
        self.num_exits = num_exits
        self.levels = table
        self._pilot, self._lock, self._observer, self._clock = pilot, lock, observer, clock
        default = table.get(table.default)
        self._state = BudgetState(default.name, default.thresholds, 1, table.criterion, table, None, 1)
        observer.on_budget(default.name, 1)

    def current(self) -> BudgetState:
        """The active state (a new object on every replacement, so a snapshot is consistent)."""
        return self._state

    @property
    def auto_controller(self) -> AutoBudget | None:
        """The automatic budget's controller while it is on (read its ``last`` decision for monitoring)."""
        return self._pilot.auto

    def replace(self, name: str, thresholds: tuple[float, ...], version: int | None) -> BudgetState:
        """An operator's manual setting (already validated) from the next step on; turns the automatic budget off.
        ``version``: the setting's (None: the engine's next)."""
        with self._lock:
            state = self._successor_locked(name, thresholds, None, version, setting=True)
            self._pilot.disable()
        self._observer.on_budget(state.name, state.version)
        return state

    def replace_auto(self, config: AutoBudgetConfig, version: int | None) -> BudgetState:
        """Let the automatic budget choose the level from the next step on, starting from the active level (the most
        accurate one when that is not on its ladder). ``config.min_level`` must be a level here."""
        with self._lock:
            auto = self._pilot.enable(config, self.levels.levels, self._state.name, self._clock())
            level = self.levels.get(auto.level)
            state = self._successor_locked(level.name, level.thresholds, config, version, setting=True)
        self._observer.on_budget(state.name, state.version)
        return state

    def steer_locked(self, now: float, waiting: int) -> BudgetState | None:
        """The automatic budget's decision for the step that starts now (the engine thread, under the engine's
        lock); the new state if it changed the level (the caller reports it to the observer, outside the lock)."""
        decision = self._pilot.decide(now, waiting)
        if decision is None:
            return None
        self._observer.on_auto_budget(decision)
        if decision.level == self._state.name:
            return None
        level = self.levels.get(decision.level)
        return self._successor_locked(level.name, level.thresholds, self._state.auto, None, setting=False)

    def _successor_locked(
        self, name: str, thresholds: tuple[float, ...], auto: AutoBudgetConfig | None, version: int | None,
        setting: bool,
    ) -> BudgetState:
        """``setting``: an operator's change (its version becomes ``setting_version``); False: the automatic
        budget's own level change, under the setting that turned it on."""
        old = self._state
        new = next_version(old.version, 0 if version is None else version)
        given = new if version is None else version
        self._state = BudgetState(
            name, thresholds, new, old.criterion, old.levels, auto, given if setting else old.setting_version
        )
        return self._state
