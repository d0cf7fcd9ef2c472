"""Plots: accuracy against compute with the Pareto frontier (not against a noisy throughput axis)."""

from __future__ import annotations

from pathlib import Path

from loadtest.plots import pareto_front, plot_accuracy_vs_gmacs


def test_pareto_front_keeps_only_undominated_levels_in_cost_order() -> None:
    points = [(0.04, 0.78), (0.0321, 0.125), (0.0436, 0.77), (0.0346, 0.30), (0.0369, 0.42), (0.0369, 0.40)]
    assert pareto_front(points) == [(0.0321, 0.125), (0.0346, 0.30), (0.0369, 0.42), (0.04, 0.78)]


def test_accuracy_vs_gmacs_plot(tmp_path: Path) -> None:
    phases = [
        {"budget_level": name, "throughput": thr, "accuracy": acc, "gmacs_per_video": gmacs}
        for name, thr, acc, gmacs in (
            ("max", 74.5, 0.77, 0.0436),
            ("min", 75.0, 0.125, 0.0321),
            ("high", 75.5, 0.78, 0.0402),
        )
    ]
    out = plot_accuracy_vs_gmacs({"phases": phases}, tmp_path / "acc.png")
    assert out == tmp_path / "acc.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_accuracy_vs_gmacs({"phases": phases[:1]}, tmp_path / "one.png") is None  # no trade-off in one level
