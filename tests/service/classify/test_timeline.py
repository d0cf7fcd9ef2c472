"""``POST /classify`` with ``segment_s``: the timeline answer, its validation, budget, SSE, gaps and an early end
(the app in this process); a client that leaves a timeline stream frees every slot of its video (a real server)."""

from __future__ import annotations

import argparse
import io
import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from model.video import encode_video
from service.client import Client, Outcome
from service.client_output import describe, write_outcomes
from service.commands import timeline_fields
from tests.model.test_video_segments import write_pts
from tests.service.conftest import Server, in_process, ramp, serve, service_state, wait_until
from tests.service.http.test_sse import long_bundle, metric, multipart
from tests.service.test_metrics import samples_of


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, max_segments=12, group_max_active=2)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s at 8 fps (80 frames of 48 x 64)."""
    return encode_video(tmp_path_factory.mktemp("timeline") / "v.mp4", ramp(80, 48, 64, seed=3), "libx264", fps=8)


def post(app: TestClient, video: Path, **fields: str) -> httpx.Response:
    with video.open("rb") as fh:
        return app.post("/classify", files={"video": ("v.mp4", fh)}, data=fields)


def test_a_timeline_answers_every_segment_in_time_order_with_the_videos_label(app: TestClient, video: Path) -> None:
    response = post(app, video, segment_s="2")
    assert response.status_code == 200, response.text
    body = response.json()
    segments = body["segments"]
    assert [(s["index"], s["start_s"], s["end_s"]) for s in segments] == [(i, 2.0 * i, 2.0 * i + 2) for i in range(5)]
    assert (body["segments_planned"], body["duration_s"], body["segment_s"], body["stride_s"]) == (5, 10.0, 2.0, 2.0)
    assert body["gaps"] == [] and body["skipped"] == [] and "ended_at_s" not in body
    costs = service_state(app).engine.costs  # type: ignore[union-attr]
    assert body["gmacs"] == pytest.approx(sum(s["gmacs"] for s in segments))
    assert body["gmacs_all_k"] == pytest.approx(5 * costs.exit_gmacs[-1])
    # the video's label: the highest mean probability over the segments (the tiny model has 5 classes: top_k is all)
    mean = {c: math.fsum(p["probability"] for s in segments for p in s["top_k"] if p["class_id"] == c) / 5
            for c in range(5)}
    assert body["class_id"] == max(mean, key=mean.__getitem__)
    assert body["confidence"] == pytest.approx(mean[body["class_id"]])
    assert body["first_segment_s"] <= body["timings"]["total"]
    assert body["sampling"] == "exact" and body["frames_decoded"] > 0


def test_budget_stride_sampling_and_explain_apply_to_every_segment(app: TestClient, video: Path) -> None:
    low = post(app, video, segment_s="2", budget="low").json()
    assert {s["exit_step"] for s in low["segments"]} == {0} and low["budget"] == "low"
    glance = service_state(app).engine.costs.exit_gmacs[0]  # type: ignore[union-attr]
    assert low["gmacs"] == pytest.approx(5 * glance) and low["gmacs"] < low["gmacs_all_k"]
    high = post(app, video, segment_s="4", stride_s="2", budget="high", explain="true", sampling="fast").json()
    assert [s["start_s"] for s in high["segments"]] == [0.0, 2.0, 4.0, 6.0]
    assert {s["exit_step"] for s in high["segments"]} == {3} and all(len(s["cubes"]) == 3 for s in high["segments"])
    assert high["sampling"] == "fast"


@pytest.mark.parametrize(
    ("fields", "code"),
    [({"segment_s": "0"}, "bad_segment"), ({"segment_s": "-2"}, "bad_segment"), ({"segment_s": "NaN"}, "bad_segment"),
     ({"segment_s": "two"}, "bad_segment"), ({"stride_s": "1"}, "bad_segment"),
     ({"segment_s": "0.2"}, "segment_too_short"), ({"segment_s": "11"}, "segment_too_long"),
     ({"segment_s": "0.5"}, "too_many_segments"), ({"segment_s": "2", "sampling": "best"}, "invalid_request")],
)
def test_bad_segment_fields_get_a_422_naming_the_limit(
    app: TestClient, video: Path, fields: dict[str, str], code: str
) -> None:
    response = post(app, video, **fields)
    assert (response.status_code, response.json()["code"]) == (422, code)
    if code == "too_many_segments":
        assert "ADAFOCUS_MAX_SEGMENTS" in response.json()["message"] and "is 12" in response.json()["message"]


def test_frames_with_segment_s_is_refused_naming_both_fields(app: TestClient, video: Path) -> None:
    response = post(app, video, segment_s="2", frames="true")
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert "'frames'" in response.json()["message"] and "'segment_s'" in response.json()["message"]
    assert post(app, video, segment_s="2", frames="false").status_code == 200


def test_timeline_metrics_count_each_outcome_and_segment(app: TestClient, video: Path, tmp_path: Path) -> None:
    before = samples_of(app.get("/metrics").text)
    complete = post(app, video, segment_s="2").json()
    whole = encode_video(tmp_path / "v.mkv", ramp(80, 48, 64, seed=3), "libx264", fps=8)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    partial = post(app, cut, segment_s="1").json()
    assert post(app, video, segment_s="0").status_code == 422
    assert post(app, video, segment_s="2", frames="true").status_code == 422
    assert post(app, video, segment_s="11").status_code == 422  # segment_too_long: found by the decode pass
    after = samples_of(app.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = len(partial["segments"])
    assert len(complete["segments"]) == 5 and 0 < count < 10 and partial["ended_at_s"] < 10.0
    outcomes = {o: delta("adafocus_timeline_requests_total", outcome=o)
                for o in ("complete", "partial", "invalid", "failed", "cancelled")}
    assert outcomes == {"complete": 1, "partial": 1, "invalid": 3, "failed": 0, "cancelled": 0}
    assert delta("adafocus_timeline_segments_total") == 5 + count
    assert delta("adafocus_timeline_segments_per_video_count") == 2
    assert delta("adafocus_timeline_segments_per_video_sum") == 5 + count
    assert delta("adafocus_timeline_first_segment_seconds_count") == 2


def test_a_stream_sends_each_segment_as_it_finishes_then_the_answer(app: TestClient, video: Path) -> None:
    response = post(app, video, segment_s="1", stream="true")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n", 1) for block in response.text.strip().split("\n\n")]
    names = [head.removeprefix("event: ") for head, _ in events]
    assert names == ["segment"] * 10 + ["result"]
    streamed = sorted(json.loads(data.removeprefix("data: "))["index"] for _, data in events[:-1])
    result = json.loads(events[-1][1].removeprefix("data: "))
    assert streamed == [s["index"] for s in result["segments"]] == list(range(10))


def test_a_gap_yields_no_segment_and_an_early_end_says_where(app: TestClient, tmp_path: Path) -> None:
    gap = write_pts(tmp_path / "gap.mp4", list(range(16)) + list(range(40, 56)))
    body = post(app, gap, segment_s="1").json()
    assert body["gaps"] == [{"start_s": 2.0, "end_s": 5.0}] and body["skipped"] == [2, 3, 4]
    assert [s["index"] for s in body["segments"]] == [0, 1, 5, 6]
    whole = encode_video(tmp_path / "v.mkv", ramp(80, 48, 64, seed=3), "libx264", fps=8)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    ended = post(app, cut, segment_s="1").json()
    assert 0 < len(ended["segments"]) < 10 and ended["ended_at_s"] < 10.0 and "states 10.00 s" in ended["end_reason"]


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """K = 3000 cubes, never exiting early: each segment takes seconds, so a client leaves with most unanswered."""
    bundle = long_bundle(tmp_path_factory.mktemp("bundle") / "long")
    yield from serve(bundle, tmp_path_factory.mktemp("leave"), max_active=2, max_batch=1, group_max_active=1,
                     warmup="false")


def test_a_client_that_leaves_a_timeline_stream_frees_every_slot_of_its_video(
    slow_server: Server, tmp_path: Path
) -> None:
    # 24 s: 24 segments, many seconds of cubes, so that the client leaves long before the last (at any CPU speed)
    video = encode_video(tmp_path / "v.mp4", ramp(192, 48, 64, seed=2), "libx264", fps=8).read_bytes()
    body, content_type = multipart(video)
    body = body.replace(b"--adafocus-test-boundary--", b'--adafocus-test-boundary\r\nContent-Disposition: form-data; '
                        b'name="segment_s"\r\n\r\n1\r\n--adafocus-test-boundary--')
    parts = urlsplit(slow_server.url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(
            f"POST /classify HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )

        def engine_busy() -> bool:
            text = httpx.get(f"{slow_server.url}/metrics").text
            return metric(text, "adafocus_active_requests") + metric(text, "adafocus_queue_depth") >= 2

        wait_until(engine_busy, timeout=60.0, what="the video's segments to reach the engine")
    # the client left with most segments unanswered: the timeline is cancelled and its segments leave the engine
    # (one or two were in it at that moment: a segment may have just finished, the next not yet submitted)
    cancelled = 'adafocus_rejected_total{reason="cancelled"}'

    def settled() -> bool:
        text = httpx.get(f"{slow_server.url}/metrics").text
        idle = metric(text, "adafocus_active_requests") + metric(text, "adafocus_queue_depth") == 0.0
        return idle and metric(text, 'adafocus_timeline_requests_total{outcome="cancelled"}') == 1.0

    wait_until(settled, timeout=30.0, what="the video's segments to be cancelled")
    text = httpx.get(f"{slow_server.url}/metrics").text
    assert metric(text, cancelled) >= 1.0 and metric(text, "adafocus_timeline_segments_total") < 24
    assert metric(text, 'adafocus_requests_total{status="200"}') == 0.0


def test_the_client_prints_a_timeline_as_text_and_as_json_lines(app: TestClient, video: Path) -> None:
    answer = Client(http=app).classify(video, budget="mid", fields=timeline_fields(
        argparse.Namespace(segment_s=2.5, stride_s=None)))
    assert [s["start_s"] for s in answer["segments"]] == [0.0, 2.5, 5.0, 7.5]
    outcome = Outcome(video, answer)
    text = describe(outcome).splitlines()
    assert text[0].startswith(f"{video}: 4 segments of 2.5 s (10.0 s): {answer['label']}") and "budget mid" in text[0]
    assert [line.split()[0] for line in text[1:]] == ["0.0-2.5", "2.5-5.0", "5.0-7.5", "7.5-10.0"]
    assert all(" exit 1 ## " in line for line in text[1:])  # `mid` exits after one cube: a bar of two marks
    out = io.StringIO()
    write_outcomes([outcome], True, out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["segment"]["index"] for r in rows[:-1]] == [0, 1, 2, 3]
    assert rows[-1]["label"] == answer["label"] and "segments" not in rows[-1] and rows[-1]["file"] == str(video)


def test_at_the_videos_deadline_the_answer_holds_the_segments_so_far(slow_server: Server, tmp_path: Path) -> None:
    video = encode_video(tmp_path / "v.mp4", ramp(192, 48, 64, seed=2), "libx264", fps=8)  # 24 s: 24 segments
    with video.open("rb") as fh:
        response = httpx.post(f"{slow_server.url}/classify", files={"video": fh},
                              data={"segment_s": "1", "deadline_ms": "3000"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    answered = body["segments"]
    # one segment at a time (cap 1), each 0.4-1.5 s of cubes alone here: the deadline comes long before the last
    assert len(answered) < 24 and {s["exit_reason"] for s in answered} <= {"max_cubes", "deadline"}
    assert body["ended_at_s"] == max((s["end_s"] for s in answered), default=0.0)
    assert "deadline" in body["end_reason"]
    assert body["segments_planned"] == 24
