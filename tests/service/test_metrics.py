"""The single error table and the Prometheus metrics (names, labels, values)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.video import encode_video
from service.engine.types import EngineResult
from service.metrics import Metrics
from tests.service.conftest import in_process, ramp


def result(exit_step: int, budget: str) -> EngineResult:
    return EngineResult(
        request_id=0, class_id=1, confidence=0.5, top_k=[(1, 0.5)], cubes_used=exit_step, exit_step=exit_step,
        exit_reason="confident", gmacs=0.2, budget=budget, budget_version=2, queue_seconds=0.01,
        compute_seconds=0.02, cubes=None,
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_record_engine_and_http_events() -> None:
    metrics = Metrics(num_exits=4)
    metrics.on_step("glance", 3, 0.004)
    metrics.on_step("focus", 5, 0.002)
    metrics.on_result(result(2, "low"))
    metrics.on_queue(7, 3)
    metrics.on_budget("low", 1)
    metrics.on_budget("high", 2)
    metrics.on_reject("queue_full")
    metrics.on_request(200, 0.05)
    metrics.on_request(415, 0.01)
    metrics.on_decode(0.03)
    got = samples(metrics)
    assert got[("adafocus_requests_total", (("status", "200"),))] == 1
    assert got[("adafocus_requests_total", (("status", "415"),))] == 1
    assert got[("adafocus_request_duration_seconds_count", ())] == 2
    assert got[("adafocus_queue_wait_seconds_count", ())] == 1
    assert got[("adafocus_decode_duration_seconds_sum", ())] == pytest.approx(0.03)
    assert got[("adafocus_step_duration_seconds_count", (("stage", "glance"),))] == 1
    assert got[("adafocus_batch_size_sum", (("stage", "focus"),))] == 5
    assert got[("adafocus_exit_step_bucket", (("le", "1.0"),))] == 0
    assert got[("adafocus_exit_step_bucket", (("le", "2.0"),))] == 1
    assert got[("adafocus_gmacs_per_video_sum", ())] == pytest.approx(0.2)
    assert (got[("adafocus_queue_depth", ())], got[("adafocus_active_requests", ())]) == (7, 3)
    assert [k for k in got if k[0] == "adafocus_budget_info"] == [("adafocus_budget_info", (("budget", "high"),))]
    assert got[("adafocus_budget_version", ())] == 2
    assert got[("adafocus_rejected_total", (("reason", "queue_full"),))] == 1
    assert not any(name.endswith("_created") for name, _ in got)


def test_the_start_up_self_test_is_not_counted_as_traffic(tiny_bundle: Path, tmp_path: Path) -> None:
    """A fresh server has answered no client: no exit, no GMACs, no cubes in its metrics; one request makes one."""
    video = encode_video(tmp_path / "v.mp4", ramp(8, 32, 32), "libx264")
    for client in in_process(tiny_bundle):
        fresh = samples_of(client.get("/metrics").text)
        assert [k for k in fresh if k[0] == "adafocus_exits_total"] == []
        for histogram in ("adafocus_exit_step", "adafocus_gmacs_per_video", "adafocus_cubes_per_video",
                          "adafocus_queue_wait_seconds"):
            assert fresh[(f"{histogram}_count", ())] == 0, histogram
        with video.open("rb") as fh:
            assert client.post("/classify", files={"video": ("v.mp4", fh)}).status_code == 200
        after = samples_of(client.get("/metrics").text)
        assert after[("adafocus_exits_total", (("budget", "high"), ("reason", "max_cubes")))] == 1
        assert after[("adafocus_exit_step_count", ())] == 1
