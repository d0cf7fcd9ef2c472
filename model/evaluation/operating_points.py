"""Threshold sets simulated on recorded exits: the solver behind ``adafocus calibrate`` and the baselines.

The solver is MSDNet's ``dynamic_eval``: for a ratio q the target share of samples leaving at exit k is
proportional to q^k. Walking the exits in order, the n_k = floor(N * p_k) most confident samples that have not
exited yet set exit k's threshold (the n_k-th best score); n_k = 0 means nobody exits there (entropy threshold
0.0, max-probability threshold above 1). The last exit takes everyone left. Sweeping q gives (GMACs/video,
accuracy) points; named levels are picked on their accuracy/cost frontier. Thresholds are then applied to the
test split (never used for solving) to report accuracy and to draw the paper's Figure 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.budgets import BudgetLevel, BudgetTable, Criterion, validate_thresholds
from model.evaluation.collect import ExitRecord
from model.exits import exits_taken, score_table

LEVEL_NAMES = ("min", "low", "balanced", "high", "max")
NEVER_MAX_PROB = 2.0  # a max-probability threshold no sample reaches
ENTROPY_ALWAYS = 1e6  # an entropy threshold every sample meets


@dataclass(frozen=True)
class Operating:
    """A threshold set simulated on one split."""

    q: float
    start: int  # first exit anyone may leave at (earlier exits get a zero share)
    thresholds: tuple[float, ...]
    proportions: tuple[float, ...]  # share of samples leaving at each exit
    gmacs: float  # mean GMACs/video
    accuracy: float


def scores_of(logits: np.ndarray, criterion: Criterion) -> np.ndarray:
    """(N, E) exit scores from logits (N, E, C), as float64: ``model.exits.score_table`` on numpy."""
    return score_table(torch.from_numpy(logits), criterion).numpy().astype(np.float64)


def exit_proportions(q: float, num_exits: int, start: int = 0) -> np.ndarray:
    """Shares proportional to q^(k - start) from exit ``start`` on, zero before it; q = 0 sends everyone out at
    exit ``start``, q = inf everyone to the last exit."""
    p = np.zeros(num_exits, dtype=np.float64)
    if math.isinf(q):
        p[-1] = 1.0
        return p
    p[start:] = q ** np.arange(num_exits - start, dtype=np.float64)
    return p / p.sum()


def solve_thresholds(scores: np.ndarray, proportions: np.ndarray, criterion: Criterion) -> tuple[float, ...]:
    """MSDNet's solver: thresholds (E,) that let about ``proportions`` of the samples leave at each exit."""
    N, E = scores.shape
    remaining = np.ones(N, dtype=bool)
    thresholds: list[float] = []
    for k in range(E - 1):
        n_k = math.floor(N * proportions[k] + 1e-9)
        candidates = scores[remaining, k]
        if n_k == 0 or candidates.size == 0:
            thr = 0.0 if criterion == "entropy" else NEVER_MAX_PROB
        else:
            ordered = np.sort(candidates) if criterion == "entropy" else -np.sort(-candidates)
            thr = float(ordered[min(n_k, ordered.size) - 1])
        thresholds.append(max(thr, 0.0))
        leave = scores[:, k] <= thr if criterion == "entropy" else scores[:, k] >= thr
        remaining &= ~leave
    # last exit: a threshold every sample meets, so that it reads right even if applied literally
    thresholds.append(float(max(scores[:, -1].max(), 0.0)) if criterion == "entropy" else 0.0)
    return validate_thresholds(thresholds, E)


def simulate(
    record: ExitRecord,
    thresholds: tuple[float, ...],
    criterion: Criterion,
    exit_gmacs: list[float],
    q: float = 0.0,
    start: int = 0,
) -> Operating:
    scores = scores_of(record.logits, criterion)
    taken = exits_taken(scores, thresholds, criterion)  # (N,)
    E = scores.shape[1]
    correct = record.correct[np.arange(len(taken)), taken]
    proportions = np.bincount(taken, minlength=E) / len(taken)
    return Operating(
        q=q,
        start=start,
        thresholds=thresholds,
        proportions=tuple(float(p) for p in proportions),
        gmacs=float(np.dot(proportions, exit_gmacs)),
        accuracy=float(correct.mean()),
    )


def sweep(
    record: ExitRecord, criterion: Criterion, exit_gmacs: list[float], qs: np.ndarray | None = None
) -> list[Operating]:
    """One operating point per (start exit, q), solved and simulated on ``record`` (the calibration split).

    MSDNet's family (start 0) alone cannot express "nobody leaves before exit j"; with a glance-only exit near
    chance that is what the cheap budgets want, so every start exit is swept too (start j, q = 0 is exactly
    "every video takes j cubes").
    """
    qs = np.concatenate([[0.0], np.geomspace(0.01, 100.0, 81), [math.inf]]) if qs is None else qs
    scores = scores_of(record.logits, criterion)
    E = scores.shape[1]
    points = []
    for start in range(E):
        for q in qs:
            thresholds = solve_thresholds(scores, exit_proportions(float(q), E, start), criterion)
            points.append(simulate(record, thresholds, criterion, exit_gmacs, float(q), start))
    return points


def frontier(points: list[Operating]) -> list[Operating]:
    """Points no cheaper-or-equal point beats in accuracy, cheapest first."""
    out: list[Operating] = []
    for p in sorted(points, key=lambda p: (p.gmacs, -p.accuracy)):
        if not out or p.accuracy > out[-1].accuracy:
            out.append(p)
    return out


def mixing_line(fixed: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The fixed-count mixing line: the upper concave hull of the (GMACs, accuracy) points of "every video takes k
    cubes". Sending a share of the videos to k cubes and the rest to k' reaches any point on a segment between two
    fixed points, so this is the best accuracy fixed counts alone reach at each cost; cheapest first."""
    hull: list[tuple[float, float]] = []
    for g, a in sorted(fixed):
        if hull and g == hull[-1][0]:
            if a <= hull[-1][1]:
                continue
            hull.pop()
        while len(hull) >= 2:
            (g1, a1), (g2, a2) = hull[-2], hull[-1]
            if (a2 - a1) * (g - g1) <= (a - a1) * (g2 - g1):  # hull[-1] lies on or under the chord: drop it
                hull.pop()
            else:
                break
        hull.append((g, a))
    return hull


def mixing_accuracy(line: list[tuple[float, float]], gmacs: float) -> float:
    """Accuracy of the best mix of fixed cube counts costing ``gmacs`` (flat beyond the line's ends)."""
    costs = [g for g, _ in line]
    return float(np.interp(gmacs, costs, [a for _, a in line]))


def worth_shipping(points: list[Operating], fixed: list[tuple[float, float]], margin: float = 0.0) -> list[Operating]:
    """Operating points on the accuracy/cost frontier that beat the fixed-count mixing line at their cost by more
    than ``margin``, cheapest first. A point that only ties fixed compute (e.g. "everyone leaves at the glance"
    when the glance exit is not better than mixing) is not worth a level."""
    line = mixing_line(fixed)
    return [p for p in frontier(points) if p.accuracy > mixing_accuracy(line, p.gmacs) + margin + 1e-12]


def choose_levels(
    points: list[Operating],
    fixed: list[tuple[float, float]] | None = None,
    names: tuple[str, ...] = LEVEL_NAMES,
    margin: float = 0.0,
) -> list[tuple[str, Operating]]:
    """Named levels with strictly increasing cost and accuracy, spanning the range of the points worth shipping
    (``worth_shipping``; every frontier point when ``fixed`` is None): the cheapest, the most accurate, and in
    between the most accurate point within evenly spaced cost targets. Fewer points than names give fewer levels,
    named from the dearest down (``max`` first); none at all raises ``NothingWorthShipping``."""
    pool = frontier(points) if fixed is None else worth_shipping(points, fixed, margin)
    if not pool:
        raise NothingWorthShipping("no operating point beats the fixed-count mixing line")
    if len(pool) < len(names):
        return list(zip(names[len(names) - len(pool) :], pool, strict=True))
    lo, hi = pool[0].gmacs, pool[-1].gmacs
    chosen = [0]
    for i in range(1, len(names) - 1):
        target = lo + (hi - lo) * i / (len(names) - 1)
        last_allowed = len(pool) - (len(names) - i)  # leave one point for each later name
        cand = [j for j in range(chosen[-1] + 1, last_allowed + 1) if pool[j].gmacs <= target]
        chosen.append(max(cand, key=lambda j: (pool[j].accuracy, j)) if cand else chosen[-1] + 1)
    chosen.append(len(pool) - 1)
    return [(name, pool[j]) for name, j in zip(names, chosen, strict=True)]


class NothingWorthShipping(ValueError):
    """No threshold set beats fixed compute: the model does not adapt."""


def fixed_level(fixed: list[tuple[float, float]], criterion: Criterion, name: str = "max") -> tuple[str, Operating]:
    """The most accurate fixed cube count k as a level (every video takes k cubes): what a bundle ships when no
    threshold set beats fixed compute. Exits before k never pass; exit k always does."""
    E = len(fixed)
    k = max(range(E), key=lambda j: (fixed[j][1], -j))
    never, always = (0.0, ENTROPY_ALWAYS) if criterion == "entropy" else (NEVER_MAX_PROB, 0.0)
    thresholds = (*(always if j == k else never for j in range(E - 1)), always)
    proportions = tuple(1.0 if j == k else 0.0 for j in range(E))
    return name, Operating(0.0, k, thresholds, proportions, fixed[k][0], fixed[k][1])


def budget_table(levels: list[tuple[str, Operating]], criterion: Criterion, default: str) -> BudgetTable:
    return BudgetTable(
        criterion=criterion,
        levels=tuple(
            BudgetLevel(name, tuple(round(t, 6) for t in op.thresholds), round(op.gmacs, 6), round(op.accuracy, 4))
            for name, op in levels
        ),
        default=default,
    )


def random_exit_accuracy(record: ExitRecord, proportions: tuple[float, ...], seed: int = 0) -> float:
    """Accuracy when samples leave at random exits with the given shares (Figure 6's random-exit baseline)."""
    N = record.labels.shape[0]
    counts = np.floor(np.asarray(proportions) * N + 0.5).astype(int)
    counts[-1] = N - counts[:-1].sum()
    exits = np.repeat(np.arange(len(counts)), np.clip(counts, 0, None))[:N]
    exits = np.random.default_rng(seed).permutation(exits)
    return float(record.correct[np.arange(N), exits].mean())
