"""The model card: every source file it names exists, and its results section shows the report's numbers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from model.config import get_config
from model.evaluation.card import method_notes, render_card, results_section

ROOT = Path(__file__).resolve().parents[3]
OLD_CARD = "# old\n\n## Training\n\n- Data: x\n\n```\nadafocus train --out b --resume\n```\n\n## Ablations\n\nnone\n"


def report(hit_rate: bool) -> dict[str, Any]:
    """A hand-made evaluation report of a K = 2 model with two budget levels."""
    level = {
        "thresholds": [0.5, 0.25, 0.0], "gmacs": 0.002, "accuracy": 0.5, "exit_shares": [0.25, 0.25, 0.5],
        "calibration_gmacs": 0.0021, "calibration_accuracy": 0.55, "fixed_mix_accuracy": 0.4,
        "random_exit_accuracy": 0.3,
    }
    return {
        "data": "test clips", "clips": 4, "criterion": "entropy",
        "exits": [
            {"k": k, "gmacs": 0.001 * (k + 1), "accuracy": 0.3 + 0.1 * k, "accuracy_random_centres": 0.3}
            for k in range(3)
        ],
        "levels": [{"name": "low", **level}, {"name": "high", **level}],
        "distinct_cube_frames_mean": 1.5, "clips_with_cubes_on_2_or_more_frames": 0.25,
        "hit_rate": {
            "per_cube": [0.5, 0.25], "any_of_first_k": [0.5, 0.75], "random_per_cube": [0.125, 0.125],
            "random_any_of_first_k": [0.125, 0.25],
        } if hit_rate else None,
        "curve": [{"gmacs": 0.002, "accuracy": 0.5, "exit_shares": [0.0, 0.0, 1.0], "fixed_mix_accuracy": 0.4,
                   "random_exit_accuracy": 0.3}],
    }  # fmt: skip


@pytest.mark.parametrize("benchmark", ["fashion", "synth", None])
def test_every_source_file_the_card_names_exists(benchmark: str | None) -> None:
    card = render_card(OLD_CARD, get_config("tiny"), benchmark, report(True), "calib", "adafocus calibrate", "f.png")
    named = re.findall(r"`([\w/]+\.py)`", card)
    assert "model/macs.py" in named
    assert ("model/data/fashion.py" in named) == (benchmark == "fashion")
    assert ("model/data/synth.py" in named) == (benchmark == "synth")
    assert [path for path in named if not (ROOT / path).is_file()] == []


def test_results_section_rows() -> None:
    with_hits, without = results_section(report(True), "calib", "f.png"), results_section(report(False), "c", "f.png")
    assert "| 0 | 1.0 | 30.0 | 30.0 |\n| 1 | 2.0 | 40.0 | 30.0 |\n| 2 | 3.0 | 50.0 | 30.0 |" in with_hits
    assert "| 1 | 50.0 | 50.0 | 12.5 | 12.5 |\n| 2 | 25.0 | 75.0 | 12.5 | 25.0 |\n" in with_hits
    assert "Hit rate:" not in without
    assert "| `low` | 0.5, 0.25, 0.0 | 2.10 | 55.0 | 2.00 | 50.0 | 40.0 | 30.0 | 0.25, 0.25, 0.50 |" in with_hits
    assert "adafocus train --out b\nadafocus calibrate\n" in render_card(
        OLD_CARD, get_config("tiny"), "synth", report(False), "calib", "adafocus calibrate", "f.png"
    )


def test_every_source_file_the_shipped_card_names_exists() -> None:
    card = (ROOT / "model" / "bundles" / "default" / "model_card.md").read_text()
    named = re.findall(r"`([\w/]+\.py)`", card)
    assert sorted(set(named)) == [
        "model/data/fashion.py", "model/data/stills.py", "model/evaluation/kinds.py", "model/macs.py", "model/video.py"
    ]
    assert [path for path in named if not (ROOT / path).is_file()] == []


def test_the_diagnosis_and_ablation_sections_are_kept_in_order() -> None:
    old = OLD_CARD + "\n## Diagnosis\n\nsmall: placement\n"
    card = render_card(old, get_config("tiny"), "fashion", report(True), "calib", "adafocus calibrate", "f.png")
    assert card.index("## Results") < card.index("## Diagnosis\n\nsmall: placement") < card.index("## Ablations")


def test_the_new_recipe_stages_are_named_in_the_method_notes() -> None:
    training = "## Training\n\n| pretrain_local_still | 10 |\n| placement | 10 |\n"
    notes = method_notes(get_config("default"), training)
    assert "**Encoder pretraining on stills**" in notes and "**Placement curriculum**" in notes
    assert "Placement curriculum" not in method_notes(get_config("default"), "## Training\n\n| policy | 1 |\n")
