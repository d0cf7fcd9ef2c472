"""The one way a budget setting reaches an engine: validation, versions and the swap.

A *setting* is a ``PUT /budget`` body (``BudgetUpdate``: a level name, a GMACs target, explicit thresholds,
``mode: auto`` with an optional objective ``p99_s`` and floor ``min_level``, or a bare ``mode: manual``) with a
version. ``BudgetControl`` turns one into the engine's next ``BudgetState`` through its handle
(``service.engine.active_budget.ActiveBudget``), which swaps it in at a step boundary. Every version follows the one
rule, ``service.engine.active_budget.next_version``. A bare ``{"mode": "manual"}`` (stop the automatic budget) is
recorded as the level it keeps (``pinned``), so every replica and every restart holds that level. The stores
(service/budget/store.py, fleet/replica.py) decide where a setting lives and call this.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from model.budgets import BudgetError, validate_thresholds
from service.engine.active_budget import ActiveBudget, next_version
from service.engine.autobudget import AutoBudgetConfig
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate

CUSTOM_BUDGET = "custom"  # the name of a state set by explicit thresholds


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class BudgetSetting:
    update: BudgetUpdate  # what the operator chose
    version: int  # every replica that applies it reports this number

    @classmethod
    def new(cls, update: BudgetUpdate, after: int = 0) -> BudgetSetting:
        """A new operator setting, versioned after ``after`` (the last setting's version) by ``next_version``."""
        return cls(update, next_version(after, wall_ms()))

    def to_json(self) -> str:
        return json.dumps({**self.update.model_dump(exclude_none=True), "version": self.version}, indent=2) + "\n"


def _ignore(_: BudgetState) -> None:
    pass


class BudgetControl:
    """Validates settings and applies them to one engine's ``ActiveBudget``, one at a time.

    ``default_p99_s``: the objective of a ``mode: auto`` without ``p99_s`` (the server's ``ADAFOCUS_SLO_P99_S``;
    None: such an update is refused). ``on_apply`` sees every state a setting made (not the automatic budget's own
    level changes).
    """

    def __init__(
        self, active: ActiveBudget, default_p99_s: float | None = None,
        on_apply: Callable[[BudgetState], None] = _ignore,
    ) -> None:
        self.active, self.default_p99_s, self.on_apply = active, default_p99_s, on_apply
        self._lock = threading.Lock()  # one setting at a time: the newest-first check and the swap together

    def current(self) -> BudgetState:
        return self.active.current()

    def pinned(self, update: BudgetUpdate) -> BudgetUpdate:
        """``update`` as it is recorded: a bare ``mode: manual`` (keep the level the automatic budget chose) becomes
        the active level (or its thresholds, when "custom"), so that every replica and every restart reads the same
        budget."""
        if update.mode != "manual" or (update.level, update.gmacs, update.thresholds) != (None, None, None):
            return update
        state = self.current()
        if state.name in {level.name for level in state.levels.levels}:
            return BudgetUpdate(level=state.name)
        return BudgetUpdate(thresholds=list(state.thresholds))

    def validate(self, update: BudgetUpdate) -> None:
        """BudgetError unless ``apply`` would accept ``update`` (checked before a store records it)."""
        self._target(self.pinned(update))

    def apply(self, update: BudgetUpdate, version: int | None = None) -> BudgetState:
        """Make ``update`` the engine's budget from the next step on (``version``: the setting's; None: the engine's
        next). Raises BudgetError (an unknown level or floor, no level within the GMACs, bad thresholds)."""
        with self._lock:
            state = self._swap(update, version)
        self.on_apply(state)
        return state

    def apply_setting(self, setting: BudgetSetting, force: bool = False) -> BudgetState:
        """Apply ``setting`` unless its version is not above the engine's ``setting_version`` (a push and a poll may
        bring the same setting twice, or out of order); ``force``: apply anyway (the start-up setting)."""
        with self._lock:
            state = self.current()
            if not force and setting.version <= state.setting_version:
                return state
            state = self._swap(setting.update, setting.version)
        self.on_apply(state)
        return state

    def _swap(self, update: BudgetUpdate, version: int | None) -> BudgetState:
        target = self._target(self.pinned(update))
        if isinstance(target, AutoBudgetConfig):
            return self.active.replace_auto(target, version)
        return self.active.replace(*target, version)

    def _target(self, update: BudgetUpdate) -> AutoBudgetConfig | tuple[str, tuple[float, ...]]:
        """What a pinned update asks for (validated): the automatic budget's config, or a name and its thresholds."""
        levels = self.active.levels
        if update.mode == "auto":
            if update.min_level is not None:
                levels.get(update.min_level)  # BudgetError for an unknown floor
            objective = update.p99_s or self.default_p99_s
            if objective is None:
                raise BudgetError("mode auto needs p99_s here: this server has no default objective")
            return AutoBudgetConfig(slo_p99_s=objective, min_level=update.min_level)
        if update.level is not None:
            level = levels.get(update.level)
        elif update.gmacs is not None:
            level = levels.best_within(float(update.gmacs))  # the most accurate level expected within the target
        else:
            assert update.thresholds is not None, "a pinned manual update names a level, GMACs or thresholds"
            return CUSTOM_BUDGET, validate_thresholds(update.thresholds, self.active.num_exits)
        return level.name, level.thresholds
