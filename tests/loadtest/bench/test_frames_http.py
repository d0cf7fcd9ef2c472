"""``adafocus bench e2e --quick --frames`` against a tiny bundle: each round also sends the clips as uploads and as
client-decoded frames (binary OIP tensors) to the real server; both answered without errors, both measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.service.conftest import make_bundle


def test_quick_run_compares_uploads_and_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "tiny")
    out = tmp_path / "e2e.json"
    argv = ["bench", "e2e", "--quick", "--bundle", str(bundle), "--clips", "2", "--concurrency", "2", "--frames",
            "--frames-per-request", "2"]
    assert main([*argv, "--duration", "1.5", "--client", "python", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for round_ in result["rounds"]:
        for side in ("uploads", "frames"):
            measured = round_["frames"][side]
            assert measured["errors"] == 0 and measured["videos_per_s"] > 0 and measured["server_cpu_ms_per_video"] > 0
        assert (round_["frames"]["uploads"]["clips_per_request"], round_["frames"]["frames"]["clips_per_request"]) == (
            1, 2)
    summary = result["uploads_vs_frames"]
    assert (summary["corpus"], summary["clips_per_request"]) == ("the bench's clips", 2)
    ratio = summary["frames_vs_in_process"]
    assert ratio["target"] == 0.7 and ratio["met"] == (ratio["median"] >= 0.7) and len(ratio["repeats"]) == 3
    text = capsys.readouterr().out
    assert "frames / uploads server CPU per video" in text and "frames: server videos/s" in text
