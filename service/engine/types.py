"""Public data types of the serving engine: a request, a result and the budget state (the configuration is in
``service.engine.config``).

These names are the contract the HTTP layer, the ONNX runner and the benchmarks code against; keep them stable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.budgets import BudgetTable, Criterion
from service.engine.autobudget import AutoBudgetConfig
from service.engine.config import Stage

# confident: met its threshold; max_cubes: used every cube; deadline: answered with its prediction so far because
# its deadline was near (``EngineConfig.deadline_answers``)
ExitReason = Literal["confident", "max_cubes", "deadline"]


@dataclass
class EngineRequest:
    frames: np.ndarray  # (T, H, W, 3) uint8, already at the model's num_frames x frame_size x frame_size
    budget: str | None = None  # per-request budget level name; None = the active level
    deadline: float | None = None  # engine-clock (time.monotonic) deadline; past it: DeadlineExceeded
    explain: bool = False  # include the chosen cubes in the result
    label: int | None = None  # optional ground truth (benchmarks only), never used by the engine
    observed: bool = True  # False: the observer never sees its result (the start-up self-test is not traffic)
    # called on the engine's runner thread after the glance and after every step that ran a cube for it (anytime
    # predictions); must be cheap and thread-safe; whatever it raises is logged and ignored
    on_progress: Callable[[Progress], None] | None = None
    client_id: str = "-"  # the client-facing X-Request-ID (log lines); "-" outside HTTP
    # requests of one group (the segments of one long video) share a cap on active slots and take turns with the
    # other requests waiting (service.engine.fairness); None: a group of its own
    group: str | None = None
    record_steps: bool = False  # keep a StepRecord of every model call it takes part in (its trace), in the result


@dataclass(frozen=True)
class CubeBox:
    t: int  # start frame
    y: int  # start row, full-resolution pixels
    x: int  # start column, full-resolution pixels
    frames: int  # cube duration t
    size: int  # cube side h = w
    skipped: bool  # skipped because earlier cubes covered its frames


@dataclass(frozen=True)
class StepRecord:
    """One model call a request took part in (``EngineRequest.record_steps``): what its trace shows of the step."""

    stage: Stage
    exit_index: int  # the exit it reached: 0 after the glance, k after cube k (skipped cubes advance it too)
    batch_size: int  # samples in that model call
    start: float  # engine clock
    end: float  # engine clock
    exited: bool  # it met its threshold at ``exit_index``


@dataclass(frozen=True)
class Progress:
    """The prediction of an unfinished (or just finished) request after one step: an anytime answer."""

    request_id: int
    exit_index: int  # 0 after the glance, k after cube k (skipped cubes advance it without compute)
    class_id: int
    confidence: float  # softmax probability of class_id
    score: float  # the exit criterion's score here (entropy, or max probability)
    cube: CubeBox | None  # the cube this step ran (None for the glance)
    gmacs: float  # compute spent on the video so far
    final: bool  # it leaves the engine at this exit (its answer follows)


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
    # eta_0 .. eta_K the request ran under, bound at its glance (a swap meanwhile does not change them); () only
    # in results built by hand
    thresholds: tuple[float, ...] = ()
    probabilities: tuple[float, ...] = ()  # the softmax over every class at the exit (() only in results built by hand)
    steps: tuple[StepRecord, ...] = ()  # with ``record_steps``: its model calls in order, glance first


@dataclass(frozen=True)
class BudgetState:
    """The active threshold set; a new object (and version) on every swap, so a snapshot is consistent."""

    name: str  # level name, or "custom" for explicit thresholds
    thresholds: tuple[float, ...]  # eta_0 .. eta_K
    version: int  # a new one on every swap, starting at 1 (``service.engine.active_budget.next_version``)
    criterion: Criterion
    levels: BudgetTable
    auto: AutoBudgetConfig | None = None  # set: the automatic budget chose this level (and will change it)
    # the version of the operator's setting this state comes from (a PUT, the budget file, the fleet): equal to
    # ``version`` except after the automatic budget's own level changes, which keep it; replicas compare this one
    setting_version: int = 1
