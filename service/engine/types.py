"""Public data types of the serving engine: a request, a result and the budget state (the configuration is in
``service.engine.config``).

These names are the contract the HTTP layer, the ONNX runner and the benchmarks code against
(``/work/helpers/engine-api.md``); keep them stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.budgets import BudgetTable, Criterion

ExitReason = Literal["confident", "max_cubes"]


@dataclass
class EngineRequest:
    frames: np.ndarray  # (T, H, W, 3) uint8, already at the model's num_frames x frame_size x frame_size
    budget: str | None = None  # per-request budget level name; None = the active level
    deadline: float | None = None  # engine-clock (time.monotonic) deadline; past it: DeadlineExceeded
    explain: bool = False  # include the chosen cubes in the result
    label: int | None = None  # optional ground truth (benchmarks only), never used by the engine
    observed: bool = True  # False: the observer never sees its result (the start-up self-test is not traffic)


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
