"""``adafocus bench e2e --corpus realistic`` against a tiny bundle (three real servers, a real client; structure and
relations only), and ``adafocus bench accuracy``'s verdicts and decoded uploads."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench.accuracy import DecodedUploads, _targets, format_accuracy
from loadtest.bench.e2e_realistic import SAMPLINGS, RealisticE2EConfig, format_realistic_e2e, run_realistic_e2e
from model.video import DecodeLimits, encode_video, sample_clip
from tests.service.conftest import make_bundle, ramp


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preset")
    for i in range(2):
        encode_video(root / f"clip_{i:06d}.mp4", ramp(24, 48, 64, seed=i), "libx264", fps=8, gop=4)
    return root


@pytest.mark.slow
def test_three_servers_one_per_sampling_interleaved_with_ratios_to_the_old_decoder(
    corpus: Path, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path / "tiny")
    cfg = RealisticE2EConfig(str(corpus), bundle=str(bundle), clips=2, concurrency=2, duration_s=1.0, warmup_s=0.3,
                             repeats=2, decode_workers=1, client="python")
    result = run_realistic_e2e(cfg)
    assert result["files"] == ["clip_000000.mp4", "clip_000001.mp4"] and len(result["rounds"]) == 2
    for r in result["rounds"]:
        assert set(r) == set(SAMPLINGS)
        for phase in r.values():
            assert phase["answered"] > 0 and phase["errors"] == 0 and phase["videos_per_s"] > 0
            assert phase["server_cpu_ms_per_video"] >= phase["decode_workers_cpu_ms_per_video"] > 0
    rates = {s: [r[s]["videos_per_s"] for r in result["rounds"]] for s in SAMPLINGS}
    for s in ("exact", "fast"):
        ratio = result["ratios_vs_legacy"][s]
        assert ratio["repeats"] == pytest.approx(sorted(a / b for a, b in zip(rates[s], rates["legacy"], strict=True)))
        assert result["targets"][s]["met"] == (ratio["median"] >= {"exact": 1.4, "fast": 2.5}[s])
    assert result["summary"]["fast"]["videos_per_s"]["median"] == pytest.approx(statistics.median(rates["fast"]))
    text = format_realistic_e2e(result)
    assert "| old |" in text and "| exact |" in text and "| fast |" in text


def test_uploads_are_decoded_as_a_worker_decodes_them(corpus: Path) -> None:
    files = sorted(corpus.glob("clip_*"))
    limits = DecodeLimits(sampling="fast", tolerance_s=0.25)
    uploads = DecodedUploads(files, [3, 5], 4, 16, limits)
    frames, label, _ = uploads[1]
    assert label == 5 and tuple(frames.shape) == (3, 4, 16, 16)
    expected = sample_clip(str(files[1]), 4, 16, limits).frames  # (T, S, S, 3)
    np.testing.assert_array_equal(frames.permute(1, 2, 3, 0).numpy(), expected)
    assert uploads.max_offset_s == 0.125 and uploads.decode_s > 0


def test_accuracy_verdicts_are_points_at_the_default_level() -> None:
    def levels(acc: float) -> dict[str, dict[str, float]]:
        return {"balanced": {"accuracy": acc, "gmacs": 0.1}}

    row = {"preset": "p", "clips": 200, "benchmark_clips": levels(0.80),
           "samplings": {"exact": {"levels": levels(0.785)}, "fast": {"levels": levels(0.77)}}}
    targets = _targets([row], "balanced")["p"]
    assert targets["exact_vs_benchmark_points"]["value"] == pytest.approx(-1.5)
    assert targets["exact_vs_benchmark_points"]["met"] is True
    assert targets["fast_vs_exact_points"]["value"] == pytest.approx(-1.5)
    assert targets["fast_vs_exact_points"]["met"] is False
    text = format_accuracy({"presets": [row], "targets": {"p": targets}})
    assert "| p | 200 | balanced | 80.0% (0.1000) | 78.5% (0.1000) | 77.0% (0.1000) |" in text
