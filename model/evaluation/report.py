"""``adafocus evaluate``: what a bundle does on fresh clips, as one JSON-ready report.

The model card's tables come from this report (``adafocus calibrate`` builds it on the test split). Everything is
measured through the staged API on the given clips:
- ``exits``: accuracy when every clip takes k cubes, at the policy's centres and at uniform random centres;
- ``levels``: the bundle's threshold sets applied (GMACs, accuracy, exit shares), beside two baselines at the same
  cost: ``fixed_mix_accuracy_at`` (the best mix of fixed cube counts costing the same, ``mixing_line``) and
  ``random_exit_accuracy_at`` (random exits with the same shares);
- ``distinct_cube_frames_mean`` and, where the clips have ground-truth boxes, ``hit_rate`` per cube and any-of-k;
- ``curve`` (optional): more threshold sets (e.g. the calibration frontier) applied to these clips, for Figure 6.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from model.adafocus import AdaFocusV3
from model.budgets import BudgetTable
from model.data.datasets import Sample
from model.evaluation.collect import ExitRecord, collect, distinct_frames, exit_accuracy, hit_rates
from model.evaluation.operating_points import Operating, mixing_accuracy, mixing_line, random_exit_accuracy, simulate

RANDOM_CENTRES_SEED = 12345


def evaluation_report(
    model: AdaFocusV3,
    budgets: BudgetTable,
    exit_gmacs: Sequence[float],
    dataset: Dataset[Sample],
    description: str,
    batch_size: int = 64,
    workers: int = 0,
    curve: Sequence[Operating] = (),
) -> dict[str, Any]:
    """The report on ``dataset`` (see the module docstring); ``curve`` threshold sets are simulated too."""
    record = collect(model, dataset, "policy", batch_size, workers)
    random_record = collect(model, dataset, "random", batch_size, workers, seed=RANDOM_CENTRES_SEED)
    return report_from_records(record, random_record, budgets, list(exit_gmacs), model.cube_shape, description, curve)


def report_from_records(
    record: ExitRecord,
    random_record: ExitRecord,
    budgets: BudgetTable,
    exit_gmacs: list[float],
    cube_shape: tuple[int, int, int],
    description: str,
    curve: Sequence[Operating] = (),
) -> dict[str, Any]:
    """The report (see the module docstring) from exits recorded at the policy's and at random centres."""
    acc, acc_random = exit_accuracy(record), exit_accuracy(random_record)
    line = mixing_line(list(zip(exit_gmacs, acc.tolist(), strict=True)))
    levels = level_rows(record, budgets, exit_gmacs, line)
    frames = distinct_frames(record)
    curve_ops = [simulate(record, p.thresholds, budgets.criterion, exit_gmacs) for p in curve]
    return {
        "data": description,
        "clips": len(record.labels),
        "criterion": budgets.criterion,
        "exits": [
            {"k": k, "gmacs": g, "accuracy": float(acc[k]), "accuracy_random_centres": float(acc_random[k])}
            for k, g in enumerate(exit_gmacs)
        ],
        "levels": levels,
        "fixed_mix_accuracy_at": {lvl["name"]: lvl["fixed_mix_accuracy"] for lvl in levels},
        "random_exit_accuracy_at": {lvl["name"]: lvl["random_exit_accuracy"] for lvl in levels},
        "distinct_cube_frames_mean": float(frames.mean()),
        "clips_with_cubes_on_2_or_more_frames": float((frames >= 2).mean()),
        "hit_rate": hit_rate_section(record, random_record, cube_shape) if record.has_targets else None,
        "curve": [
            {
                "gmacs": op.gmacs,
                "accuracy": op.accuracy,
                "exit_shares": list(op.proportions),
                "fixed_mix_accuracy": mixing_accuracy(line, op.gmacs),
                "random_exit_accuracy": random_exit_accuracy(record, op.proportions, seed=1000 + i),
            }
            for i, op in enumerate(curve_ops)
        ],
    }


def level_rows(
    record: ExitRecord, budgets: BudgetTable, exit_gmacs: list[float], line: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    """Each of the bundle's threshold sets applied to ``record``, beside its calibration figures and both
    baselines at the same cost (the fixed-count mixing ``line``, random exits with the same shares)."""
    levels = []
    for i, level in enumerate(budgets.levels):
        op = simulate(record, level.thresholds, budgets.criterion, exit_gmacs)
        levels.append(
            {
                "name": level.name,
                "thresholds": list(level.thresholds),
                "gmacs": op.gmacs,
                "accuracy": op.accuracy,
                "exit_shares": list(op.proportions),
                "calibration_gmacs": level.expected_gmacs,
                "calibration_accuracy": level.expected_accuracy,
                "fixed_mix_accuracy": mixing_accuracy(line, op.gmacs),
                "random_exit_accuracy": random_exit_accuracy(record, op.proportions, seed=i),
            }
        )
    return levels


def hit_rate_section(
    record: ExitRecord, random_record: ExitRecord, cube_shape: tuple[int, int, int]
) -> dict[str, list[float]]:
    """How often the cubes see the object (clips with ground-truth boxes), per cube and any of the first k, at
    the policy's and at random centres."""
    (per, any_k), (rper, rany_k) = hit_rates(record, cube_shape), hit_rates(random_record, cube_shape)
    return {
        "per_cube": per.tolist(),
        "any_of_first_k": any_k.tolist(),
        "random_per_cube": rper.tolist(),
        "random_any_of_first_k": rany_k.tolist(),
    }


def cheapest_within(curve: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The cheapest curve point reaching ``accuracy``, if any."""
    reaching = [p for p in curve if p["accuracy"] >= accuracy - 1e-12]
    return min(reaching, key=lambda p: p["gmacs"]) if reaching else None


def targets_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The adaptive-model targets as measured: glance vs K cubes, 1 vs K cubes, learned vs random placement, the
    cost at 99% of the K-cube accuracy on the curve, and each level's margin over both baselines."""
    exits = report["exits"]
    first, last = exits[0], exits[-1]
    one = exits[1] if len(exits) > 1 else last
    at99 = cheapest_within(report["curve"], 0.99 * last["accuracy"])
    return {
        "glance_accuracy": first["accuracy"],
        "k_cube_accuracy": last["accuracy"],
        "glance_gap_points": 100 * (last["accuracy"] - first["accuracy"]),
        "k_vs_1_cube_points": 100 * (last["accuracy"] - one["accuracy"]),
        "learned_vs_random_1_cube_points": 100 * (one["accuracy"] - one["accuracy_random_centres"]),
        "cost_share_at_99pct_of_k": None if at99 is None else at99["gmacs"] / last["gmacs"],
        "level_margins_points": {
            lvl["name"]: {
                "over_fixed_mix": 100 * (lvl["accuracy"] - lvl["fixed_mix_accuracy"]),
                "over_random_exits": 100 * (lvl["accuracy"] - lvl["random_exit_accuracy"]),
            }
            for lvl in report["levels"]
        },
    }
