"""The README documents what exists: every setting, every metric, real command lines, real files and targets."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from service.cli import build_parser
from service.settings import Settings
from tests.deploy.exported import exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def shell_commands() -> list[list[str]]:
    """Every command of the README's bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]  # environment assignments before the command
            if words:
                commands.append(words)
    return commands


def test_configuration_table_lists_every_setting():
    table = set(re.findall(r"^\| `(ADAFOCUS_[A-Z0-9_]+)` \|", README, flags=re.M))
    assert table == {f"ADAFOCUS_{name.upper()}" for name in Settings.model_fields}


def test_every_variable_named_in_the_readme_exists():
    named = set(re.findall(r"\bADAFOCUS_[A-Z0-9_]*[A-Z0-9]\b", README))
    assert named <= {f"ADAFOCUS_{name.upper()}" for name in Settings.model_fields}


def test_metrics_table_lists_every_exported_metric():
    table = set(re.findall(r"^\| `(adafocus_[a-z_]+)` \|", README, flags=re.M))
    exported = exported_metric_names()
    base = {name for name in exported if not name.endswith(("_bucket", "_sum", "_count", "_created"))}
    histograms = {name.removesuffix("_bucket") for name in exported if name.endswith("_bucket")}
    assert table == base | histograms


def test_adafocus_command_lines_parse_with_the_real_cli():
    lines = [words for words in shell_commands() if words[0] == "adafocus"]
    assert {words[1] for words in lines} >= {"synth", "train", "calibrate", "serve"}
    parser = build_parser()
    for words in lines:
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"README command does not parse (exit {exc.code}): {shlex.join(words)}")


def test_make_targets_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = {words[1] for words in shell_commands() if words[0] == "make"}
    assert targets >= {"serve", "test"}
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target


def test_relative_links_point_to_files():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    for link in local:
        assert (ROOT / link).exists(), link


def test_no_template_placeholder_left():
    assert not re.findall(r"\b[A-Z]+_(?:TABLE|EXAMPLE|SUMMARY)\b", README)


def test_budget_table_matches_the_shipped_bundle():
    budgets = json.loads((ROOT / "model" / "bundles" / "default" / "budgets.json").read_text())
    rows = re.findall(r"^\| `(\w+)`(?: \(default\))? \| ([^|]+) \| ([\d.]+) \| ([\d.]+)% \|$", README, flags=re.M)
    assert [name for name, *_ in rows] == [level["name"] for level in budgets["levels"]]
    for (name, thresholds, gmacs, accuracy), level in zip(rows, budgets["levels"], strict=True):
        assert [float(t) for t in thresholds.split(", ")] == pytest.approx(level["thresholds"], rel=1e-3), name
        assert float(gmacs) == pytest.approx(level["expected_gmacs"], abs=5e-5), name
        assert float(accuracy) == pytest.approx(100 * level["expected_accuracy"], abs=0.05), name
    assert f"`{budgets['default']}` (default)" in README
