import json
from pathlib import Path

import pytest

from model.bundle import load_bundle
from service.cli import main
from tests.model.data.test_fashion import needs_data


@needs_data
def test_train_then_calibrate_commands_write_a_bundle_that_info_reads(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bundle"
    train_args = ["train", "--stages", "pretrain_local:1,policy:1,deep_feature:1", "--batch-size", "2"]
    assert main([*train_args, "--workers", "0", "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert load_bundle(out).benchmark == "fashion"
    cal_args = ["calibrate", "--bundle", str(out), "--calib-count", "24", "--test-count", "8", "--workers", "0"]
    assert main([*cal_args, "--report", str(tmp_path / "report.json")]) == 0
    bundle = load_bundle(out)
    names = [lvl.name for lvl in bundle.budgets.levels]
    assert 1 <= len(names) <= 5 and names == ["min", "low", "balanced", "high", "max"][-len(names) :]
    assert bundle.budgets.default in names and bundle.benchmark == "fashion"
    assert "adafocus train --config default --data fashion --train-seed 0 --stages" in bundle.model_card
    assert "adafocus calibrate --bundle" in bundle.model_card
    assert "## Results (test split: `fashion` test stream seed 2, 8 clips)" in bundle.model_card
    assert (out / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [lvl["name"] for lvl in report["levels"]] == names
    capsys.readouterr()
    assert main(["info", "--bundle", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"][0] == "t_shirt" and len(info["budgets"]["levels"]) == len(names)


def test_calibrate_of_a_folder_bundle_needs_folders(tmp_path: Path) -> None:
    from tests.model.evaluation.test_report import tiny_bundle

    bundle = tiny_bundle(tmp_path / "b", benchmark=None)
    with pytest.raises(SystemExit, match="needs --calib-data and --test-data"):
        main(["calibrate", "--bundle", str(bundle), "--calib-count", "4", "--test-count", "4", "--workers", "0"])
