import json
from pathlib import Path

import pytest

from model.budgets import BudgetLevel, BudgetTable
from model.bundle import save_bundle
from model.config import get_config
from model.evaluation.report import targets_summary
from model.testing import spread_exit_model
from service.cli import main
from tests.model.data.test_fashion import needs_data


def tiny_bundle(path: Path, benchmark: str | None = "fashion:tiny") -> Path:
    config = get_config("tiny").replace(num_classes=10, labels=tuple(f"c{i}" for i in range(10)))
    model = spread_exit_model(config, seed=3)
    levels = (
        BudgetLevel("low", (1.0, 1.5, 2.0, 0.0), 0.001, 0.2),
        BudgetLevel("max", (0.0, 0.0, 0.0, 0.0), 0.002, 0.3),
    )
    return save_bundle(path, model, BudgetTable("entropy", levels, "max"), "# tiny\n", benchmark=benchmark)


@needs_data
def test_evaluate_json_has_every_field_the_model_card_needs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bundle = tiny_bundle(tmp_path / "b")
    assert main(["evaluate", "--bundle", str(bundle), "--seed", "77", "--count", "12", "--workers", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "`fashion:tiny` test stream seed 77, 12 clips" and report["clips"] == 12
    assert [e["k"] for e in report["exits"]] == [0, 1, 2, 3]
    for e in report["exits"]:
        assert set(e) == {"k", "gmacs", "accuracy", "accuracy_random_centres"}
        assert 0 <= e["accuracy"] <= 1 and 0 <= e["accuracy_random_centres"] <= 1
    assert report["exits"][0]["accuracy"] == report["exits"][0]["accuracy_random_centres"]  # the same glance
    assert [lvl["name"] for lvl in report["levels"]] == ["low", "max"]
    for lvl in report["levels"]:
        assert {"name", "gmacs", "accuracy", "exit_shares"} <= set(lvl)
        assert sum(lvl["exit_shares"]) == pytest.approx(1.0)
    assert report["levels"][1]["exit_shares"] == [0.0, 0.0, 0.0, 1.0]  # max: every clip takes all cubes
    assert report["levels"][1]["gmacs"] == pytest.approx(report["exits"][-1]["gmacs"])
    assert set(report["fixed_mix_accuracy_at"]) == set(report["random_exit_accuracy_at"]) == {"low", "max"}
    assert report["fixed_mix_accuracy_at"]["max"] == pytest.approx(report["exits"][-1]["accuracy"])
    assert 1 <= report["distinct_cube_frames_mean"] <= 3
    hits = report["hit_rate"]
    assert len(hits["per_cube"]) == len(hits["any_of_first_k"]) == 3
    assert hits["any_of_first_k"] == sorted(hits["any_of_first_k"])
    assert report["bundle"]["sha256"] and set(report["targets"]) >= {"glance_accuracy", "cost_share_at_99pct_of_k"}


def test_targets_summary_measures_against_the_k_cube_accuracy() -> None:
    report = {
        "exits": [
            {"k": 0, "gmacs": 1.0, "accuracy": 0.4, "accuracy_random_centres": 0.4},
            {"k": 1, "gmacs": 2.0, "accuracy": 0.6, "accuracy_random_centres": 0.3},
            {"k": 2, "gmacs": 3.0, "accuracy": 0.8, "accuracy_random_centres": 0.5},
        ],
        "curve": [{"gmacs": 2.5, "accuracy": 0.795}, {"gmacs": 1.5, "accuracy": 0.7}],
        "levels": [{"name": "low", "accuracy": 0.7, "fixed_mix_accuracy": 0.5, "random_exit_accuracy": 0.6}],
    }
    t = targets_summary(report)
    assert t["glance_gap_points"] == pytest.approx(40.0) and t["k_vs_1_cube_points"] == pytest.approx(20.0)
    assert t["learned_vs_random_1_cube_points"] == pytest.approx(30.0)
    assert t["cost_share_at_99pct_of_k"] == pytest.approx(2.5 / 3.0)
    margins = t["level_margins_points"]["low"]
    assert margins == {"over_fixed_mix": pytest.approx(20.0), "over_random_exits": pytest.approx(10.0)}
