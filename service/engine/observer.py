"""The engine's metrics hook. The HTTP layer implements it with Prometheus; benchmarks record steps with it.

Called from the engine's runner thread (``on_step``, ``on_result``, ``on_queue``, ``on_reject`` for deadlines and
cancellations, ``on_auto_budget`` once per step while the automatic budget is on, under the engine's lock) and from
submitting threads (``on_reject`` for queue_full / draining, ``on_budget``): implementations must be thread-safe and
cheap.
"""

from __future__ import annotations

import threading
from typing import Literal, Protocol

from service.engine.autobudget import Decision
from service.engine.config import Stage
from service.engine.types import EngineResult

RejectReason = Literal["queue_full", "draining", "deadline", "cancelled", "error"]


class EngineObserver(Protocol):
    def on_step(self, stage: Stage, batch_size: int, seconds: float) -> None: ...

    def on_result(self, result: EngineResult) -> None: ...

    def on_queue(self, queue_depth: int, active: int) -> None: ...

    def on_budget(self, name: str, version: int) -> None: ...

    def on_reject(self, reason: str) -> None: ...

    def on_auto_budget(self, decision: Decision) -> None: ...


class NullObserver:
    """Records nothing."""

    def on_step(self, stage: Stage, batch_size: int, seconds: float) -> None:
        pass

    def on_result(self, result: EngineResult) -> None:
        pass

    def on_queue(self, queue_depth: int, active: int) -> None:
        pass

    def on_budget(self, name: str, version: int) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass

    def on_auto_budget(self, decision: Decision) -> None:
        pass


class StatsObserver:
    """Keeps per-step and per-result records in memory (tests, ``adafocus bench engine``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: list[tuple[Stage, int, float]] = []  # (stage, batch size, seconds) per model call
        self.results: list[EngineResult] = []
        self.rejects: dict[str, int] = {}
        self.budgets: list[tuple[str, int]] = []
        self.decisions: list[Decision] = []  # the automatic budget's, one per step while it is on
        self.max_queue_depth = 0
        self.max_active = 0

    def on_step(self, stage: Stage, batch_size: int, seconds: float) -> None:
        with self._lock:
            self.steps.append((stage, batch_size, seconds))

    def on_result(self, result: EngineResult) -> None:
        with self._lock:
            self.results.append(result)

    def on_queue(self, queue_depth: int, active: int) -> None:
        with self._lock:
            self.max_queue_depth = max(self.max_queue_depth, queue_depth)
            self.max_active = max(self.max_active, active)

    def on_budget(self, name: str, version: int) -> None:
        with self._lock:
            self.budgets.append((name, version))

    def on_reject(self, reason: str) -> None:
        with self._lock:
            self.rejects[reason] = self.rejects.get(reason, 0) + 1

    def on_auto_budget(self, decision: Decision) -> None:
        with self._lock:
            self.decisions.append(decision)

    def batch_sizes(self, stage: Stage) -> list[int]:
        with self._lock:
            return [size for s, size, _ in self.steps if s == stage]

    def busy_seconds(self, stage: Stage | None = None) -> float:
        """Seconds spent inside model calls (optionally one stage's)."""
        with self._lock:
            return sum(sec for s, _, sec in self.steps if stage is None or s == stage)
