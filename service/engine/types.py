"""Public data types of the serving engine: its configuration, a request, a result and the budget state.

These names are the contract the HTTP layer, the ONNX runner and the benchmarks code against
(``/work/helpers/engine-api.md``); keep them stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.budgets import BudgetTable, Criterion

EngineMode = Literal["continuous", "drain", "single"]
ENGINE_MODES: tuple[EngineMode, ...] = ("continuous", "drain", "single")
ExitReason = Literal["confident", "max_cubes"]


@dataclass(frozen=True)
class EngineConfig:
    mode: EngineMode = "continuous"
    max_batch: int = 32  # max samples per model call, per stage (glance batch and focus batch)
    max_active: int = 64  # cap on admitted requests holding frames on the device (memory cap)
    max_queue: int = 256  # bounded admission queue; submit() beyond it raises QueueFull
    # continuous mode: waiting requests are admitted (their glance runs) only when at least
    # min(min_glance_batch, number waiting) slots are free, OR when no request is active (the engine never idles
    # with work waiting); 1 = refill at the very next step (the default contract). Larger values trade a little
    # queueing for larger, cheaper-per-video glance batches. Ignored by drain and single.
    min_glance_batch: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ENGINE_MODES:
            raise ValueError(f"unknown engine mode {self.mode!r}; choose one of {ENGINE_MODES}")
        for name in ("max_batch", "max_active", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_glance_batch <= self.max_batch:
            raise ValueError(f"min_glance_batch must be 1..max_batch ({self.max_batch}), got {self.min_glance_batch}")


@dataclass
class EngineRequest:
    frames: np.ndarray  # (T, H, W, 3) uint8, already at the model's num_frames x frame_size x frame_size
    budget: str | None = None  # per-request budget level name; None = the active level
    deadline: float | None = None  # engine-clock (time.monotonic) deadline; past it: DeadlineExceeded
    explain: bool = False  # include the chosen cubes in the result
    label: int | None = None  # optional ground truth (benchmarks only), never used by the engine


@dataclass(frozen=True)
class CubeBox:
    t: int  # start frame
    y: int  # start row, full-resolution pixels
    x: int  # start column, full-resolution pixels
    frames: int  # cube duration t
    size: int  # cube side h = w
    skipped: bool  # skipped because earlier cubes covered its frames


@dataclass(frozen=True)
class EngineResult:
    request_id: int
    class_id: int
    confidence: float  # softmax probability of class_id
    top_k: list[tuple[int, float]]  # (class_id, prob), best first, k = min(5, classes)
    cubes_used: int  # cubes actually run through f_L (skipped ones not counted)
    exit_step: int  # exit index 0..K where the sample stopped
    exit_reason: ExitReason
    gmacs: float  # compute actually spent on this video (glance + cubes run)
    budget: str  # level name the request ran under ("custom" for explicit thresholds)
    budget_version: int
    queue_seconds: float  # submit -> glance batch start
    compute_seconds: float  # glance start -> answer
    cubes: list[CubeBox] | None  # when explain


@dataclass(frozen=True)
class BudgetState:
    """The active threshold set; a new object (and version) on every swap, so a snapshot is consistent."""

    name: str  # level name, or "custom" for explicit thresholds
    thresholds: tuple[float, ...]  # eta_0 .. eta_K
    version: int  # bumped by every swap, starting at 1
    criterion: Criterion
    levels: BudgetTable
