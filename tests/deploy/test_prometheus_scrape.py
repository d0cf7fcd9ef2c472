"""Integration: a real Prometheus scrapes a real `adafocus serve` (tiny bundle) and reads the traffic back.

Also loads service/deploy/alerts.yml into that Prometheus and runs every dashboard query against it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model.adafocus import AdaFocusV3
from model.config import get_config
from model.testing import fixed_budgets, untrained_bundle
from model.video import encode_video
from tests.deploy.conftest import DEPLOY, require_tool
from tests.deploy.procs import Prometheus, free_port, http_get, prometheus, running, wait_for

pytestmark = pytest.mark.slow
REQUESTS = 3
TOKEN = "deploy-test-operator-token-42"


def tiny_bundle(path: Path) -> Path:
    """Random tiny model with the fixed levels of model.testing: `high` never exits early, `low` always exits after
    the glance."""
    torch.manual_seed(0)
    model = AdaFocusV3(get_config("tiny")).eval()
    return untrained_bundle(path, model, fixed_budgets(model), "# tiny deploy-test bundle\n").path


def tiny_video(path: Path) -> bytes:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)  # (T, H, W, 3)
    return encode_video(path, frames, fps=8).read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("deploy-server")
    bundle = tiny_bundle(tmp / "bundle")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
    env.update(
        ADAFOCUS_DEVICE="cpu", ADAFOCUS_TORCH_THREADS="1", ADAFOCUS_DECODE_WORKERS="1", ADAFOCUS_OPERATOR_TOKEN=TOKEN
    )
    entry = str(Path(sys.executable).parent / "adafocus")
    args = [entry, "serve", "--host", "127.0.0.1", "--port", str(port), "--bundle", str(bundle)]
    with running(args, tmp / "server.log", env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: True if http_get(f"{url}/readyz")[0] == 200 else None, 120, "/readyz", proc)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{(tmp / 'server.log').read_text()[-3000:]}") from err
        yield url


@pytest.fixture(scope="module")
def prom(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    target = server.removeprefix("http://")
    with prometheus(binary, tmp_path_factory.mktemp("prometheus"), target, DEPLOY / "alerts.yml") as p:
        wait_for(lambda: p.query('up{job="adafocus"} == 1') or None, 30, "the first successful scrape", p.proc)
        yield p


@dataclass(frozen=True)
class Traffic:
    answers: list[dict[str, Any]]
    videos_before: float  # adafocus_exit_step_count before the test's requests (the start-up self-test's video)
    timeline: dict[str, Any]  # one timeline answer (segment_s=0.5 over the 1 s clip), after the clips

    @property
    def segments(self) -> int:
        return len(self.timeline["segments"])


@pytest.fixture(scope="module")
def traffic(server: str, prom: Prometheus, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    video = tiny_video(tmp_path_factory.mktemp("video") / "clip.mp4")
    before = wait_for(lambda: prom.query("adafocus_exit_step_count") or None, 30, "adafocus_exit_step_count")
    answers = []
    with httpx.Client(base_url=server, timeout=60) as client:
        for _ in range(REQUESTS):
            response = client.post("/classify", files={"video": ("clip.mp4", video, "video/mp4")})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        response = client.post("/classify", files={"video": ("clip.mp4", video, "video/mp4")},
                               data={"segment_s": "0.5"})
        assert response.status_code == 200, response.text
        timeline = response.json()
        bad = client.put("/budget", json={"level": "low"}, headers={"Authorization": "Bearer wrong-token"})
        assert bad.status_code == 403
        switched = client.put("/budget", json={"level": "low"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert switched.status_code == 200, switched.text
        assert switched.json()["name"] == "low"
    return Traffic(answers, float(before[0]["value"][1]), timeline)


def test_prometheus_reads_the_request_counter_back(prom: Prometheus, traffic: Traffic):
    assert [a["budget"] for a in traffic.answers] == ["high"] * REQUESTS
    answered = REQUESTS + 1  # the clips and the timeline
    samples = wait_for(
        lambda: prom.query(f'sum(adafocus_requests_total{{status="200"}}) == {answered}') or None,
        30,
        f"adafocus_requests_total to reach {answered}",
        prom.proc,
    )
    assert float(samples[0]["value"][1]) == answered
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in prom.query("adafocus_requests_total")}
    assert by_status == {"200": float(answered)}


def test_prometheus_reads_the_timeline_metrics_back(prom: Prometheus, traffic: Traffic):
    assert [(s["start_s"], s["end_s"]) for s in traffic.timeline["segments"]] == [(0.0, 0.5), (0.5, 1.0)]
    wait_for(lambda: prom.query("adafocus_timeline_segments_total == 2") or None, 30, "the timeline's segments",
             prom.proc)
    outcomes = {s["metric"]["outcome"]: float(s["value"][1]) for s in prom.query("adafocus_timeline_requests_total")}
    assert outcomes == {"complete": 1.0}
    assert float(prom.query("adafocus_timeline_segments_per_video_sum")[0]["value"][1]) == 2
    assert float(prom.query('adafocus_timeline_segments_per_video_bucket{le="1.0"}')[0]["value"][1]) == 0
    assert float(prom.query('adafocus_timeline_segments_per_video_bucket{le="2.0"}')[0]["value"][1]) == 1
    assert float(prom.query("adafocus_timeline_first_segment_seconds_count")[0]["value"][1]) == 1


def test_prometheus_sees_exit_steps_and_the_budget_switch(prom: Prometheus, traffic: Traffic):
    # The `all` level never exits early: every video ran all 3 cubes of the tiny model (exit step 3).
    assert [(a["exit_step"], a["cubes_used"]) for a in traffic.answers] == [(3, 3)] * REQUESTS
    assert {s["exit_step"] for s in traffic.timeline["segments"]} == {3}  # each segment is a video of its own
    videos = traffic.videos_before + REQUESTS + traffic.segments
    wait_for(lambda: prom.query(f"adafocus_exit_step_count == {videos}") or None, 30, "exit steps", prom.proc)
    assert float(prom.query('adafocus_exit_step_bucket{le="2.0"}')[0]["value"][1]) == 0
    assert float(prom.query('adafocus_exit_step_bucket{le="3.0"}')[0]["value"][1]) == videos
    budget = wait_for(lambda: prom.query('adafocus_budget_info{budget="low"} == 1') or None, 30, "budget switch")
    assert len(budget) == 1
    assert prom.query('adafocus_budget_info{budget="high"}') == []


def test_alert_rules_load_in_a_real_prometheus(prom: Prometheus):
    status, body = http_get(f"{prom.url}/api/v1/rules")
    assert status == 200
    groups = json.loads(body)["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {
        "AdaFocusDown",
        "AdaFocusNotReady",
        "AdaFocusQueueNearFull",
        "AdaFocusRejectingRequests",
        "AdaFocusHighErrorRate",
        "AdaFocusLatencyP99AboveSLO",
        "AdaFocusBudgetPinnedAtFloor",
        "AdaFocusBudgetSkew",
    }
    assert all(r["health"] in ("ok", "unknown") for r in rules.values()), rules


def test_every_dashboard_query_runs_in_prometheus(prom: Prometheus, traffic: Traffic):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "adafocus.json").read_text())
    # rate() needs two scrapes of a series; the status="200" series appears with the first request.
    wait_for(lambda: prom.query("rate(adafocus_requests_total[1m])") or None, 30, "two scrapes of traffic")
    wait_for(lambda: prom.query("rate(adafocus_timeline_segments_total[1m])") or None, 30, "two of the timeline")
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "5m")
            if not prom.query(expr):  # raises on a PromQL error
                empty.append(panel["title"])
    # Nothing was rejected and no decoder restarted, so those counters have no series yet, and the budget is manual,
    # so the automatic budget's seconds-per-level counter has none either; everything else has data.
    expected_empty = ["Decoder worker restarts", "Rejected requests by reason", "Seconds at each budget level"]
    assert sorted(set(empty)) == expected_empty


def test_server_keeps_serving_while_scraped(server: str, prom: Prometheus):
    targets = [t for t in prom.targets() if t["labels"]["job"] == "adafocus"]
    assert [t["health"] for t in targets] == ["up"]
    assert http_get(f"{server}/healthz")[0] == 200
