
import numpy as np
import pytest

from model.budgets import BudgetTable
from model.evaluation.collect import ExitRecord
from model.evaluation.operating_points import (
    NothingWorthShipping,
    budget_table,
    choose_levels,
    exit_proportions,
    fixed_level,
    mixing_accuracy,
    mixing_line,
    random_exit_accuracy,
    scores_of,
    simulate,
    solve_thresholds,
    sweep,
)
from model.exits import exits_taken

EXIT_GMACS = [1.0, 1.5, 2.0, 2.5]  # 4 exits


def hand_made_record(n: int = 400, classes: int = 5, seed: int = 0) -> ExitRecord:
    """Later exits are more often right and more confident; confidence tracks correctness."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = np.zeros((n, len(EXIT_GMACS), classes), dtype=np.float32)
    for k in range(len(EXIT_GMACS)):
        right = rng.random(n) < 0.3 + 0.2 * k
        margin = rng.uniform(0.5, 4.0, n).astype(np.float32)
        guess = np.where(right, labels, (labels + 1 + rng.integers(0, classes - 1, n)) % classes)
        logits[np.arange(n), k, guess] = np.where(right, margin, margin / 3)
    return ExitRecord(logits, labels, np.zeros((n, 3, 3), np.int64), -np.ones((n, 2, 4), np.int64))


@pytest.mark.parametrize("criterion", ["entropy", "max_prob"])
def test_solver_gives_the_exit_proportions_asked_for(criterion: str) -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.1, 0.9, (100, 4))  # distinct scores: no ties
    thresholds = solve_thresholds(scores, np.array([0.4, 0.3, 0.2, 0.1]), criterion)  # type: ignore[arg-type]
    taken = exits_taken(scores, thresholds, criterion)  # type: ignore[arg-type]
    assert np.bincount(taken, minlength=4).tolist() == [40, 30, 20, 10]
    assert all(np.isfinite(t) and t >= 0 for t in thresholds)


def test_zero_share_means_nobody_exits_there() -> None:
    scores = np.random.default_rng(2).uniform(0.1, 2.0, (50, 3))
    thresholds = solve_thresholds(scores, np.array([0.0, 0.0, 1.0]), "entropy")
    assert thresholds[:2] == (0.0, 0.0)
    assert exits_taken(scores, thresholds, "entropy").tolist() == [2] * 50


def test_exit_proportions_follow_q_to_the_k() -> None:
    assert exit_proportions(1.0, 4).tolist() == [0.25] * 4
    assert exit_proportions(0.0, 3).tolist() == [1.0, 0.0, 0.0]
    assert exit_proportions(float("inf"), 3).tolist() == [0.0, 0.0, 1.0]
    p = exit_proportions(2.0, 3)
    assert p.tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])


def test_named_levels_span_the_cost_range_with_monotone_cost() -> None:
    record = hand_made_record()
    points = sweep(record, "entropy", EXIT_GMACS)
    levels = choose_levels(points)
    assert [name for name, _ in levels] == ["min", "low", "balanced", "high", "max"]
    costs = [op.gmacs for _, op in levels]
    assert costs == sorted(costs) and len(set(costs)) == 5
    assert costs[0] == pytest.approx(EXIT_GMACS[0])  # everyone leaves after the glance
    assert levels[-1][1].accuracy == max(p.accuracy for p in points)
    table = budget_table(levels, "entropy", "balanced")
    again = BudgetTable.from_dict(table.to_dict(), num_exits=4)
    assert again.get("balanced").thresholds == table.get("balanced").thresholds
    for _, op in levels:  # re-simulating the stored thresholds gives the stored numbers
        check = simulate(record, op.thresholds, "entropy", EXIT_GMACS)
        assert check.gmacs == pytest.approx(op.gmacs) and check.accuracy == pytest.approx(op.accuracy)


def test_simulated_cost_is_the_mean_of_exit_costs() -> None:
    record = hand_made_record(n=40)
    scores = scores_of(record.logits, "entropy")
    thresholds = solve_thresholds(scores, np.array([0.5, 0.0, 0.0, 0.5]), "entropy")
    op = simulate(record, thresholds, "entropy", EXIT_GMACS)
    assert op.proportions == pytest.approx((0.5, 0.0, 0.0, 0.5))
    assert op.gmacs == pytest.approx(0.5 * 1.0 + 0.5 * 2.5)


def test_random_exits_use_the_same_shares() -> None:
    record = hand_made_record(n=100)
    assert random_exit_accuracy(record, (1.0, 0.0, 0.0, 0.0)) == pytest.approx(record.correct[:, 0].mean())
    assert random_exit_accuracy(record, (0.0, 0.0, 0.0, 1.0)) == pytest.approx(record.correct[:, 3].mean())


def test_mixing_line_is_the_upper_hull_of_the_fixed_counts() -> None:
    fixed = [(1.0, 0.3), (2.0, 0.35), (3.0, 0.7), (4.0, 0.72)]
    line = mixing_line(fixed)
    assert line == [(1.0, 0.3), (3.0, 0.7), (4.0, 0.72)]  # 2 cubes lie under the 1-3 mix
    assert mixing_accuracy(line, 2.0) == pytest.approx(0.5)
    assert mixing_accuracy(line, 3.5) == pytest.approx(0.71)


def two_exit_record(confident_on_right: bool) -> ExitRecord:
    """4 clips, exits at 1 and 2 GMACs: exit 0 is right on clips 0, 1; exit 1 on all. Exit 0's confidence sits on
    the right clips (informative) or on the wrong ones."""
    labels = np.zeros(4, dtype=np.int64)
    logits = np.zeros((4, 2, 3), dtype=np.float32)
    logits[:, 1, 0] = 5.0
    logits[[0, 1], 0, 0] = 1.0  # right at exit 0 ...
    logits[[2, 3], 0, 1] = 1.0  # ... and wrong
    sure = [0, 1] if confident_on_right else [2, 3]
    logits[sure, 0] *= 6.0  # low entropy where exit 0 is sure
    return ExitRecord(logits, labels, np.zeros((4, 1, 3), np.int64), -np.ones((4, 2, 4), np.int64))


def test_calibration_ships_only_levels_above_the_mixing_line() -> None:
    gmacs = [1.0, 2.0]
    record = two_exit_record(confident_on_right=True)
    fixed = list(zip(gmacs, record.correct.mean(0).tolist(), strict=True))  # (1, 0.5), (2, 1.0)
    levels = choose_levels(sweep(record, "entropy", gmacs), fixed)
    # glance-only (1, 0.5) and all-cubes (2, 1.0) only tie fixed compute; half leaving at the glance beats the mix
    assert [(name, op.gmacs, op.accuracy) for name, op in levels] == [("max", 1.5, 1.0)]


def test_calibration_refuses_exits_whose_confidence_is_uninformative() -> None:
    gmacs = [1.0, 2.0]
    record = two_exit_record(confident_on_right=False)
    fixed = list(zip(gmacs, record.correct.mean(0).tolist(), strict=True))
    with pytest.raises(NothingWorthShipping):
        choose_levels(sweep(record, "entropy", gmacs), fixed)
    name, op = fixed_level(fixed, "entropy")
    check = simulate(record, op.thresholds, "entropy", gmacs)
    assert (name, check.proportions, check.accuracy) == ("max", (0.0, 1.0), 1.0)


def test_fixed_level_can_stop_everyone_before_the_last_exit() -> None:
    record = hand_made_record(n=50)
    fixed = [(1.0, 0.4), (1.5, 0.9), (2.0, 0.6), (2.5, 0.6)]
    _, op = fixed_level(fixed, "entropy")
    assert simulate(record, op.thresholds, "entropy", EXIT_GMACS).proportions == (0.0, 1.0, 0.0, 0.0)
    _, op = fixed_level(fixed, "max_prob")
    assert simulate(record, op.thresholds, "max_prob", EXIT_GMACS).proportions == (0.0, 1.0, 0.0, 0.0)
