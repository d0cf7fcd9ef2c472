"""The accelerator benchmark's code paths, exercised on the CPU with the tiny model (the GPU run is
``scripts/gpu-bench.sh``): every part runs, the CUDA-only variant is named as skipped, and the table is printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench.gpu_suite import fastest, format_markdown, main, peak_tflops


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Tesla T4", None),
    ],
)
def test_the_bf16_peak_comes_from_the_device_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak


def test_the_fastest_variant_is_chosen_at_the_largest_batch() -> None:
    rows = [
        {"variant": "fp32", "batch": 8, "glance_ms": 1.0, "focus_ms": 1.0},
        {"variant": "bf16", "batch": 8, "glance_ms": 3.0, "focus_ms": 1.0},
        {"variant": "fp32", "batch": 64, "glance_ms": 9.0, "focus_ms": 3.0},
        {"variant": "bf16", "batch": 64, "glance_ms": 5.0, "focus_ms": 2.0},
    ]
    assert fastest(rows, 64) == "bf16"
    assert fastest(rows, 8) == "fp32"


@pytest.mark.slow
def test_the_suite_runs_every_part_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    args = ["--config", "tiny", "--device", "cpu", "--batches", "2,4", "--quick", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    variants = ["fp32", "bf16", "bf16+channels_last"]
    assert [(r["variant"], r["batch"]) for r in result["stages"]] == [(v, b) for v in variants for b in (2, 4)]
    assert all(r["glance_ms"] > 0 and r["focus_ms"] > 0 and r["focus_peak_fraction"] is None for r in result["stages"])
    assert result["skipped"] == [
        {"part": "variant bf16+channels_last+cuda_graphs", "reason": "CUDA graphs need a CUDA device"}
    ]
    assert result["fastest_variant"] in variants
    assert result["onnx"]["providers"] == ["CPUExecutionProvider"]
    assert [r["batch"] for r in result["onnx"]["rows"]] == [2, 4]
    engine = result["engine"]
    assert engine["single_videos_per_s"] > 0
    assert [r["max_batch"] for r in engine["rows"]] == [2, 4]
    for row in engine["rows"]:
        assert len(row["continuous_over_drain"]["repeats"]) == 3
        assert len(row["continuous_over_single"]["repeats"]) == 3
        assert set(row["p99_s_at_rate"]) == {"continuous", "drain"}
    printed = capsys.readouterr().out
    assert printed.strip() == format_markdown(result).strip()
    assert "| max_batch | continuous videos/s |" in printed
