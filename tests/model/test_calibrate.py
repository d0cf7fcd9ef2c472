from pathlib import Path

import numpy as np
import pytest

from model.budgets import BudgetTable
from model.calibrate import (
    budget_table,
    choose_levels,
    draw_figure6,
    exit_proportions,
    exits_taken,
    random_exit_accuracy,
    scores_of,
    simulate,
    solve_thresholds,
    sweep,
)
from model.evaluate import ExitRecord

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
    return ExitRecord(logits, labels, np.zeros((n, 3, 3), np.int64), -np.ones((n, 5), np.int64))


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


def test_figure6_is_written(tmp_path: Path) -> None:
    record = hand_made_record(n=100)
    points = sweep(record, "entropy", EXIT_GMACS, qs=np.geomspace(0.05, 20, 12))
    levels = choose_levels(points)
    fixed = list(zip(EXIT_GMACS, record.correct.mean(0).tolist(), strict=True))
    draw_figure6(tmp_path / "f.png", points, [(p.gmacs, 0.3) for p in points], fixed, fixed, levels, "t")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_calibrate_commands_write_a_bundle_that_info_reads(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from model.bundle import load_bundle
    from service.cli import main

    out = tmp_path / "bundle"
    train_args = ["train", "--stages", "pretrain_local:1,policy:1,deep_feature:1", "--batch-size", "2"]
    assert main([*train_args, "--workers", "0", "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    cal_args = ["calibrate", "--bundle", str(out), "--calib-count", "24", "--test-count", "8", "--workers", "0"]
    assert main(cal_args) == 0
    bundle = load_bundle(out)
    assert [lvl.name for lvl in bundle.budgets.levels] == ["min", "low", "balanced", "high", "max"]
    assert bundle.budgets.default == "balanced"
    assert "adafocus train --config default --data synth --preset hard --train-seed 0 --stages" in bundle.model_card
    assert "adafocus calibrate --bundle" in bundle.model_card
    assert "## Results (test split: synthetic `hard` stream seed 2, 8 clips)" in bundle.model_card
    assert (out / "figure6.png").is_file()
    capsys.readouterr()
    assert main(["info", "--bundle", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"][0] == "pattern_00" and len(info["budgets"]["levels"]) == 5
