"""``adafocus bench tracing --quick`` against a tiny bundle: two real servers (tracing off, tracing on to the OTLP/HTTP
receiver stand-in), ABBA-ordered rounds, the per-pair ratios and the collector's count; structure and relations."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from loadtest.bench.tracing import TARGET_ON_VS_OFF, span_build_cost
from service.cli import main
from tests.service.conftest import make_bundle


def test_quick_run_interleaves_off_and_on_and_counts_the_spans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "tiny")
    out = tmp_path / "tracing.json"
    argv = ["bench", "tracing", "--quick", "--bundle", str(bundle), "--clips", "2", "--concurrency", "4"]
    assert main([*argv, "--duration", "1", "--budget", "high", "--client", "python", "--json", str(out)]) == 0
    result, text = json.loads(out.read_text()), capsys.readouterr().out
    assert result["pairs"] == 2 and [r["tracing"] for r in result["rounds"]] == ["off", "on", "on", "off"]
    for r in result["rounds"]:
        assert r["answered"] > 0 and r["errors"] == 0 and r["server_main_cpu_ms_per_request"] > 0
    on = [r["requests_per_s"] for r in result["rounds"] if r["tracing"] == "on"]
    off = [r["requests_per_s"] for r in result["rounds"] if r["tracing"] == "off"]
    ratios = result["ratios"]["requests_per_s_on_vs_off"]
    assert ratios["repeats"] == pytest.approx(sorted([on[0] / off[0], on[1] / off[1]]))
    assert ratios["median"] == pytest.approx(statistics.median(ratios["repeats"]))
    assert result["target"]["met"] == (ratios["median"] >= TARGET_ON_VS_OFF)
    collector = result["collector"]
    # `high` runs every cube of the tiny model (K = 3): 10 spans per request; the requests the client abandoned at
    # the end of a round were answered (and traced) all the same
    assert collector["traced_requests"] > 0 and collector["spans"] >= 10 * collector["traced_requests"]
    assert collector["exports"] > 0 and collector["bytes"] > 0
    assert "on / off (per pair)" in text and "spans per request" in text


def test_span_building_is_measured_per_request() -> None:
    cost = span_build_cost(requests=200, cubes=2)
    assert cost["spans_per_request"] == 9 and 0 < cost["cpu_us_per_request"] < 10_000
