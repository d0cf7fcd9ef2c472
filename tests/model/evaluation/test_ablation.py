import json
from pathlib import Path

import pytest

from model.evaluation.ablation import ablation_table, gap_lines, load_rows
from service.cli import main


def report(one: float, one_random: float, k_acc: float, hit1: float) -> dict[str, object]:
    """A calibrate report with only what the table reads: exits 0, 1 and K = 2, and the hit rates."""
    exits = [
        {"k": 0, "accuracy": 0.25, "accuracy_random_centres": 0.25},
        {"k": 1, "accuracy": one, "accuracy_random_centres": one_random},
        {"k": 2, "accuracy": k_acc, "accuracy_random_centres": k_acc - 0.1},
    ]
    return {"exits": exits, "hit_rate": {"per_cube": [hit1, 0.5], "any_of_first_k": [hit1, 0.75]}}


def write_runs(root: Path) -> None:
    reports = {
        "deep_feature-seed0": report(0.6, 0.4, 0.7, 0.8),
        "deep_feature-seed1": report(0.5, 0.4, 0.6, 0.7),
        "pixel-seed0": report(0.55, 0.4, 0.65, 0.6),
        "pixel-seed1": report(0.52, 0.4, 0.62, 0.6),
        "random-seed0": report(0.45, 0.3, 0.5, 0.2),
        "random-seed1": report(0.45, 0.35, 0.5, 0.2),
        "start": report(0.1, 0.1, 0.1, 0.1),  # not a row: no seed in its name
    }
    for name, body in reports.items():
        (root / name).mkdir()
        (root / name / "eval.json").write_text(json.dumps(body))


def test_rows_come_in_the_papers_order_and_the_gaps_are_per_seed(tmp_path: Path) -> None:
    write_runs(tmp_path)
    rows = load_rows(tmp_path)
    assert [(r.objective, r.seed) for r in rows] == [
        ("deep_feature", 0), ("deep_feature", 1), ("pixel", 0), ("pixel", 1), ("random", 0), ("random", 1),
    ]  # fmt: skip
    assert rows[0].cells() == [0.25, 0.6, 0.4, 0.7, 0.6, 0.8, 0.75]
    assert gap_lines(rows) == [
        "deep feature - pixel, 1 cube: +1.5 points (seeds: +5.0, -2.0)",
        "deep feature - pixel, K cubes: +1.5 points (seeds: +5.0, -2.0)",
        "deep feature - random placement (the random row's random centres), 1 cube: +22.5 points (seeds: +30.0, +15.0)",
        "pixel - random placement (the random row's random centres), 1 cube: +21.0 points (seeds: +25.0, +17.0)",
    ]


def test_the_table_has_one_line_per_row_and_a_mean_per_objective(tmp_path: Path) -> None:
    write_runs(tmp_path)
    table = ablation_table(load_rows(tmp_path))
    lines = table.splitlines()
    assert lines[0].startswith("| objective | seed | exit 0 | 1 cube | 1 random cube | 2 cubes |")
    assert "| deep-feature gradient (Eq. 5-6) | 0 | 25.0 | 60.0 | 40.0 | 70.0 | 60.0 | 80.0 | 75.0 |" in lines
    assert "| **deep-feature gradient (Eq. 5-6)** | mean | 25.0 | 55.0 | 40.0 | 65.0 | 55.0 | 75.0 | 75.0 |" in lines
    assert sum(line.startswith("| ") for line in lines) == 1 + 6 + 3


def test_the_ablation_command_prints_the_table_or_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_runs(tmp_path)
    assert main(["ablation", "--runs", str(tmp_path)]) == 0
    assert "pixel interpolation (Eq. 2-4) | 1 |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["ablation", "--runs", str(tmp_path / "empty")]) == 2
    assert "make ablation" in capsys.readouterr().err
