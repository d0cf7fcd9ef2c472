"""The paper's ablation as a table: one row per training objective and seed, read from the ``calibrate`` reports
that ``make ablation`` writes (``RUNS/<objective>-seed<N>/eval.json``), then each objective's mean over seeds and
the deep-feature vs pixel gap per seed (the spread the card reports).

Columns: accuracy after exit 0, after 1 cube and after K cubes with the row's own placement and with random
centres (the same clips, the same weights), and how often cube 1 / any of the K cubes hit the product.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OBJECTIVES = ("deep_feature", "pixel", "random")
NAMES = {
    "deep_feature": "deep-feature gradient (Eq. 5-6)",
    "pixel": "pixel interpolation (Eq. 2-4)",
    "random": "random placement (no policy)",
}
ROW_DIR = re.compile(r"^(?P<objective>[a-z_]+)-seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class AblationRow:
    objective: str
    seed: int
    k: int  # cubes per video
    exit0: float
    one: float
    one_random: float
    all_k: float
    all_k_random: float
    hit1: float
    hit_any: float

    def cells(self) -> list[float]:
        return [self.exit0, self.one, self.one_random, self.all_k, self.all_k_random, self.hit1, self.hit_any]


def row_from_report(objective: str, seed: int, report: dict[str, Any]) -> AblationRow:
    first, one, last = report["exits"][0], report["exits"][1], report["exits"][-1]
    hits = report["hit_rate"]
    return AblationRow(
        objective, seed, last["k"], first["accuracy"], one["accuracy"], one["accuracy_random_centres"],
        last["accuracy"], last["accuracy_random_centres"], hits["per_cube"][0], hits["any_of_first_k"][-1],
    )  # fmt: skip


def load_rows(runs: Path) -> list[AblationRow]:
    """Every ``<objective>-seed<N>/eval.json`` under ``runs``, objectives in the paper's order, then by seed."""
    rows = []
    for report in runs.glob("*/eval.json"):
        match = ROW_DIR.match(report.parent.name)
        if match and match["objective"] in OBJECTIVES:
            rows.append(row_from_report(match["objective"], int(match["seed"]), json.loads(report.read_text())))
    return sorted(rows, key=lambda r: (OBJECTIVES.index(r.objective), r.seed))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _signed(points: float) -> str:
    return f"{points:+.1f}"


def ablation_table(rows: list[AblationRow]) -> str:
    """The card's table (per seed, then the mean of each objective) and the gaps that answer the ablation."""
    k = rows[0].k if rows else "K"
    head = ["objective", "seed", "exit 0", "1 cube", "1 random cube", f"{k} cubes", f"{k} random cubes",
            "cube 1 hits", f"any of {k} hits"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for row in rows:
        lines.append(f"| {NAMES[row.objective]} | {row.seed} | " + " | ".join(_pct(c) for c in row.cells()) + " |")
    for objective in OBJECTIVES:
        mine = [r for r in rows if r.objective == objective]
        if len(mine) > 1:
            means = [statistics.mean(col) for col in zip(*(r.cells() for r in mine), strict=True)]
            lines.append(f"| **{NAMES[objective]}** | mean | " + " | ".join(_pct(m) for m in means) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in gap_lines(rows)) + "\n"


def _by_seed(rows: list[AblationRow], objective: str) -> dict[int, AblationRow]:
    return {r.seed: r for r in rows if r.objective == objective}


def _gap(label: str, pairs: list[tuple[float, float]]) -> str:
    """``label``: the mean of a - b in points over the seeds, then each seed's."""
    points = [100 * (a - b) for a, b in pairs]
    spread = f" (seeds: {', '.join(_signed(p) for p in points)})" if len(points) > 1 else ""
    return f"{label}: {_signed(statistics.mean(points))} points{spread}"


def gap_lines(rows: list[AblationRow]) -> list[str]:
    """Deep feature minus pixel, and each learned objective minus random placement, seed by seed."""
    deep, pixel, rand = (_by_seed(rows, o) for o in OBJECTIVES)
    lines = []
    both = sorted(deep.keys() & pixel.keys())
    if both:
        lines.append(_gap("deep feature - pixel, 1 cube", [(deep[s].one, pixel[s].one) for s in both]))
        lines.append(_gap("deep feature - pixel, K cubes", [(deep[s].all_k, pixel[s].all_k) for s in both]))
    for name, learned in (("deep feature", deep), ("pixel", pixel)):
        seeds = sorted(learned.keys() & rand.keys())
        if seeds:
            pairs = [(learned[s].one, rand[s].one_random) for s in seeds]
            lines.append(_gap(f"{name} - random placement (the random row's random centres), 1 cube", pairs))
    return lines
