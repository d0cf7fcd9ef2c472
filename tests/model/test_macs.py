import json

import pytest

from model.adafocus import AdaFocusV3
from model.config import get_config
from model.macs import cost_report
from service.cli import main


def test_paper_backbone_costs_match_the_authors_accounting() -> None:
    report = cost_report(AdaFocusV3(get_config("paper-mn2-r50")))
    assert report.glance_backbone_gmacs_per_frame == pytest.approx(0.2995, rel=0.01)
    assert report.local_backbone_gmacs_per_cube == pytest.approx(1.3346, rel=0.01)
    assert report.glance_gmacs > 18 * report.glance_backbone_gmacs_per_frame
    assert report.focus_step_gmacs > report.local_backbone_gmacs_per_cube


def test_exit_costs_are_cumulative() -> None:
    report = cost_report(AdaFocusV3(get_config("tiny")))
    assert len(report.exit_gmacs) == get_config("tiny").num_cubes + 1
    assert report.exit_gmacs[0] == pytest.approx(report.glance_gmacs)
    steps = [b - a for a, b in zip(report.exit_gmacs, report.exit_gmacs[1:], strict=False)]
    assert steps == pytest.approx([report.focus_step_gmacs] * len(steps))


def test_cost_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--config", "tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "glance_backbone_gmacs_per_frame",
        "local_backbone_gmacs_per_cube",
        "glance_gmacs",
        "focus_step_gmacs",
        "exit_gmacs",
    ):
        assert key in data
