"""``adafocus bench-runners`` end to end on the tiny config (small counts: it checks the harness, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.cli import main


def test_bench_runners_times_both_runners_on_the_same_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench-runners", "--config", "tiny", "--batches", "1,3", "--repeats", "1", "--videos", "6"]
    argv += ["--max-batch", "4", "--rounds", "1", "--threads", "1", "--json", str(out), "--markdown"]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # the benchmark restores the caller's thread count
    results = json.loads(out.read_text())
    assert [(r["runner"], r["batch"]) for r in results["stages"]] == [
        ("torch", 1),
        ("onnx", 1),
        ("torch", 3),
        ("onnx", 3),
    ]
    assert all(r["glance_ms"] > 0 and r["focus_ms"] > 0 for r in results["stages"])
    engine = results["engine"]
    assert [r["runner"] for r in engine["runs"]] == ["torch", "onnx"]
    assert all(r["videos"] == 6 and r["videos_per_s"] > 0 for r in engine["runs"])
    assert engine["identical_decisions"] == 6
    assert engine["summary"]["torch"]["mean_exit_step"] == engine["summary"]["onnx"]["mean_exit_step"]
    printed = capsys.readouterr().out
    assert "| 3 |" in printed
    assert "Identical label and exit step on 6/6 clips." in printed
