"""Anytime streaming (Server-Sent Events) against a real server, deadline_ms in-process, PUT /budget mode auto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model.video import encode_video
from tests.service.conftest import OPERATOR_TOKEN, in_process, ramp, serve, service_state


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(tmp_path_factory.mktemp("videos") / "clip.mp4", ramp(12, 48, 64, seed=3), "libx264")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    for s in serve(tiny_bundle, tmp_path_factory.mktemp("stream")):
        with httpx.Client(base_url=s.url, timeout=60) as client:
            yield client


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, object]]]:
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


def without_ids(answer: dict[str, object]) -> dict[str, object]:
    """An answer without what differs between two requests for the same video (its ID and its timings)."""
    return {k: v for k, v in answer.items() if k not in ("request_id", "timings")}


@pytest.mark.parametrize("how", ["accept", "field"])
def test_stream_events_in_order_then_the_usual_answer(server: httpx.Client, video: Path, how: str) -> None:
    plain = server.post("/classify", files={"video": video.read_bytes()})
    assert plain.status_code == 200
    headers = {"Accept": "text/event-stream"} if how == "accept" else {}
    data = {} if how == "accept" else {"stream": "true"}
    with server.stream("POST", "/classify", files={"video": video.read_bytes()}, data=data, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = list(events(r.iter_lines()))
    names = [name for name, _ in got]
    cubes = plain.json()["cubes_used"]  # level "high" of the test bundle: every cube
    assert names == ["progress"] * (cubes + 1) + ["result"]
    progress = [body for name, body in got if name == "progress"]
    assert [p["exit"] for p in progress] == list(range(cubes + 1))
    assert progress[0]["cube"] is None and all(p["cube"] is not None for p in progress[1:])
    assert [p["final"] for p in progress] == [False] * cubes + [True]
    gmacs = [p["gmacs"] for p in progress]
    assert gmacs == sorted(gmacs) and gmacs[-1] == pytest.approx(plain.json()["gmacs"])
    assert progress[-1]["class_id"] == plain.json()["class_id"]
    result = got[-1][1]
    assert without_ids(result) == without_ids(plain.json())


def test_an_error_before_the_first_event_is_an_ordinary_json_answer(server: httpx.Client) -> None:
    r = server.post("/classify", files={"video": b"not a video at all"}, headers={"Accept": "text/event-stream"})
    assert r.status_code == 415 and r.json()["code"] == "not_a_video"


def test_deadline_ms_is_validated_and_bounded(tiny_bundle: Path, video: Path) -> None:
    for client in in_process(tiny_bundle):
        bad = client.post("/classify", files={"video": video.read_bytes()}, data={"deadline_ms": "soon"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
        neg = client.post("/classify", files={"video": video.read_bytes()}, headers={"X-Deadline-Ms": "-5"})
        assert neg.status_code == 422 and "positive" in neg.json()["message"]
        ok = client.post("/classify", files={"video": video.read_bytes()}, data={"deadline_ms": "60000"})
        assert ok.status_code == 200 and ok.json()["exit_reason"] == "max_cubes"


def test_put_budget_mode_auto_and_back_to_manual(tiny_bundle: Path) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    for client in in_process(tiny_bundle, operator_token=OPERATOR_TOKEN, slo_p99_s=0.8):
        r = client.put("/budget", json={"mode": "auto", "min_level": "mid"}, headers=auth)
        assert r.status_code == 200
        body = r.json()
        assert (body["mode"], body["slo_p99_s"], body["min_level"], body["name"]) == ("auto", 0.8, "mid", "high")
        engine = service_state(client).engine
        assert engine is not None
        auto = engine.budget.auto_controller
        assert auto is not None and auto.names == ("mid", "high")
        assert client.get("/budget").json()["mode"] == "auto"
        bad = client.put("/budget", json={"mode": "auto", "min_level": "nope"}, headers=auth)
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_budget"
        both = client.put("/budget", json={"mode": "auto", "level": "low"}, headers=auth)
        assert both.status_code == 422
        r = client.put("/budget", json={"mode": "auto", "p99_s": 0.25}, headers=auth)
        assert (r.json()["slo_p99_s"], r.json()["min_level"]) == (0.25, None)
        r = client.put("/budget", json={"mode": "manual"}, headers=auth)
        assert (r.json()["mode"], r.json()["name"], r.json()["slo_p99_s"]) == ("manual", "high", None)
        assert engine.budget.auto_controller is None
        r = client.put("/budget", json={"level": "low"}, headers=auth)
        assert (r.json()["mode"], r.json()["name"]) == ("manual", "low")


def test_budget_mode_auto_from_the_settings(tiny_bundle: Path) -> None:
    for client in in_process(tiny_bundle, budget_mode="auto", slo_p99_s=0.3, min_level="mid"):
        body = client.get("/budget").json()
        assert (body["mode"], body["slo_p99_s"], body["min_level"]) == ("auto", 0.3, "mid")
        text = client.get("/metrics").text
        assert "adafocus_auto_budget_rank" in text and "adafocus_budget_level_seconds_total" in text
