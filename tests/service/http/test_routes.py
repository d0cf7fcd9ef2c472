"""HTTP tests (tiny random bundle): the routes in-process through FastAPI's TestClient (the lifespan runs: model
load, warm-up, decoder pool and its self-test), and every codec and container over real HTTP against a real
`adafocus serve` process."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from model.video import encode_video
from tests.service.conftest import (
    OPERATOR_TOKEN,
    TestClient,
    in_process,
    ramp,
    serve,
    service_state,
    wait_until_dead,
)

MAX_UPLOAD = 300_000
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
CODECS = {  # file name -> encoder
    "h264.mp4": "libx264",
    "vp9.webm": "libvpx-vp9",
    "av1.mkv": "libsvtav1",
    "mpeg4.avi": "mpeg4",
    "mjpeg.avi": "mjpeg",
}


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    """The app in-process, shared by the module's route tests."""
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN, max_upload_bytes=MAX_UPLOAD)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real server, for the codecs over real HTTP."""
    for running in serve(
        tiny_bundle, tmp_path_factory.mktemp("http"), operator_token=OPERATOR_TOKEN, max_upload_bytes=MAX_UPLOAD
    ):
        with httpx.Client(base_url=running.url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {name: encode_video(root / name, ramp(12, 48, 64, seed=i), codec) for i, (name, codec) in
           enumerate(CODECS.items())}
    out["odd.mkv"] = encode_video(root / "odd.mkv", ramp(9, 37, 45), "libx264", pix_fmt="yuv444p")
    out["rotated.mp4"] = encode_video(root / "rotated.mp4", ramp(8, 32, 64), "libx264", rotation=90)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    whole = out["h264.mp4"].read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "big.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, MAX_UPLOAD + 1000, np.uint8).tobytes())
    with av.open(str(root / "audio.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for name, codec, pix_fmt in (("still.png", "png", "rgb24"), ("still.jpg", "mjpeg", "yuvj420p")):
        with av.open(str(root / name), "w", format="image2") as container:
            still = container.add_stream(codec, rate=1)
            still.width, still.height, still.pix_fmt = 32, 32, pix_fmt  # type: ignore[union-attr]
            image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(still.encode(image))  # type: ignore[union-attr,arg-type]
            container.mux(still.encode(None))  # type: ignore[union-attr]
    for name in ("empty.mp4", "text.mp4", "truncated.mp4", "big.mp4", "audio.m4a", "still.png", "still.jpg"):
        out[name] = root / name
    return out


def classify(client: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    """POST /classify through ``client`` (the in-process TestClient or an httpx client of a real server)."""
    with path.open("rb") as fh:
        return client.post("/classify", files={"video": (path.name, fh)}, data=fields)


@pytest.fixture()
def default_budget(app: TestClient) -> Iterator[None]:
    yield
    assert app.put("/budget", json={"level": "high"}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("name", [*CODECS, "odd.mkv", "rotated.mp4"])
def test_classify_every_codec_and_container(server: httpx.Client, videos: dict[str, Path], name: str) -> None:
    response = classify(server, videos[name])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == f"class_{body['class_id']}"
    probs = [entry["probability"] for entry in body["top_k"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
    assert body["top_k"][0]["class_id"] == body["class_id"] and probs[0] == pytest.approx(body["confidence"])
    # the default level `high` never exits early: every cube of the tiny model (K = 3)
    assert (body["exit_step"], body["exit_reason"], body["cubes_used"], body["budget"]) == (3, "max_cubes", 3, "high")
    assert body["gmacs"] > 0 and "cubes" not in body
    timings = body["timings"]
    assert all(timings[k] >= 0 for k in ("queue", "decode", "compute"))
    assert timings["total"] >= timings["decode"] + timings["compute"]


def test_same_video_same_answer_and_explain_lists_the_cubes(app: TestClient, videos: dict[str, Path]) -> None:
    first = classify(app, videos["h264.mp4"]).json()
    second = classify(app, videos["h264.mp4"], explain="true").json()
    assert (second["class_id"], second["exit_step"]) == (first["class_id"], first["exit_step"])
    assert second["confidence"] == pytest.approx(first["confidence"], abs=1e-5)
    cubes = second["cubes"]
    assert len(cubes) == 3
    for cube in cubes:  # tiny config: 4 frames of 32 x 32, cubes of 8 x 8 x 1
        assert (cube["size"], cube["frames"]) == (8, 1)
        assert 0 <= cube["t"] < 4 and 0 <= cube["y"] <= 24 and 0 <= cube["x"] <= 24


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("empty.mp4", 415, "not_a_video"),
        ("text.mp4", 415, "not_a_video"),
        ("still.png", 415, "not_a_video"),
        ("still.jpg", 415, "not_a_video"),
        ("truncated.mp4", 422, "undecodable"),
        ("audio.m4a", 422, "no_video_stream"),
        ("big.mp4", 413, "too_large"),
    ],
)
def test_bad_videos_get_json_errors(
    app: TestClient, videos: dict[str, Path], name: str, status: int, code: str
) -> None:
    response = classify(app, videos[name])
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["message"]


def test_bad_requests_get_json_errors(app: TestClient, videos: dict[str, Path]) -> None:
    url = "/classify"
    cases = {
        "no video part": app.post(url, data={"budget": "low"}, files={"other": ("x", b"x")}),
        "json body": app.post(url, json={"video": "x"}),
        "unknown level": classify(app, videos["h264.mp4"], budget="turbo"),
        "bad explain": classify(app, videos["h264.mp4"], explain="maybe"),
        "wrong method": app.get(url),
        "no route": app.get("/nope"),
    }
    got = {name: (r.status_code, r.json()["code"]) for name, r in cases.items()}
    assert got == {
        "no video part": (422, "invalid_request"),
        "json body": (415, "unsupported_media_type"),
        "unknown level": (422, "invalid_budget"),
        "bad explain": (422, "invalid_request"),
        "wrong method": (405, "method_not_allowed"),
        "no route": (404, "not_found"),
    }


def test_chunked_upload_over_the_cap_is_refused_while_streaming(app: TestClient, videos: dict[str, Path]) -> None:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n').encode()

    def body() -> Iterator[bytes]:  # no Content-Length: only the streaming count can stop it
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = app.post("/classify", content=body(), headers=headers)
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()["code"]) == (413, "too_large")


def test_per_request_budget(app: TestClient, videos: dict[str, Path]) -> None:
    body = classify(app, videos["vp9.webm"], budget="low").json()
    assert (body["budget"], body["exit_step"], body["exit_reason"], body["cubes_used"]) == ("low", 0, "confident", 0)
    body = classify(app, videos["vp9.webm"], budget="mid").json()
    assert (body["budget"], body["exit_step"], body["cubes_used"]) == ("mid", 1, 1)


def test_budget_changes_need_the_operator_token(app: TestClient, default_budget: None) -> None:
    url = "/budget"
    before = app.get(url).json()
    assert [lvl["name"] for lvl in before["levels"]] == ["low", "mid", "high"]
    missing = app.put(url, json={"level": "low"})
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = app.put(url, json={"level": "low"}, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert (wrong.status_code, wrong.json()["code"]) == (403, "forbidden")
    assert app.get(url).json()["version"] == before["version"]
    ok = app.put(url, json={"level": "low"}, headers=AUTH).json()
    assert (ok["name"], ok["version"]) == ("low", before["version"] + 1)
    by_gmacs = app.put(url, json={"gmacs": before["levels"][1]["expected_gmacs"]}, headers=AUTH).json()
    assert (by_gmacs["name"], by_gmacs["version"]) == ("mid", before["version"] + 2)
    custom = app.put(url, json={"thresholds": [0.0, 0.0, 9.0, 9.0]}, headers=AUTH).json()
    assert (custom["name"], custom["thresholds"], custom["version"]) == ("custom", [0, 0, 9, 9], before["version"] + 3)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"level": "turbo"}, "invalid_budget"),
        ({"gmacs": 1e-12}, "invalid_budget"),
        ({"thresholds": [0.1, 0.2]}, "invalid_budget"),
        ({"thresholds": [0.1, -1.0, 0.1, 0.1]}, "invalid_budget"),
        ({"level": "low", "gmacs": 1.0}, "invalid_request"),
        ({}, "invalid_request"),
    ],
)
def test_invalid_budget_changes(app: TestClient, body: dict[str, object], code: str) -> None:
    response = app.put("/budget", json=body, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (422, code)


def test_budget_switches_atomically_under_concurrent_requests(
    app: TestClient, videos: dict[str, Path], default_budget: None
) -> None:
    stop = threading.Event()
    results: list[dict[str, object]] = []
    answered = threading.Condition()
    clients = 3

    def client_loop() -> None:  # the TestClient is shared by the threads: their requests run concurrently
        while not stop.is_set():
            response = classify(app, videos["h264.mp4"])
            assert response.status_code == 200, response.text
            with answered:
                results.append(response.json())
                answered.notify_all()

    def wait_for_answers(count: int) -> None:
        with answered:
            assert answered.wait_for(lambda: len(results) >= count, timeout=60), f"{len(results)} < {count} answers"

    swaps = [app.get("/budget").json()]
    with ThreadPoolExecutor(clients) as pool:
        loops = [pool.submit(client_loop) for _ in range(clients)]
        for i in range(6):
            # one answer more than there are clients: at least one request was submitted after the last swap
            wait_for_answers(len(results) + clients + 1)
            level = "low" if i % 2 == 0 else "high"
            swaps.append(app.put("/budget", json={"level": level}, headers=AUTH).json())
        wait_for_answers(len(results) + clients + 1)
        stop.set()
        for loop in loops:
            loop.result()
    versions = [s["version"] for s in swaps]
    assert versions == list(range(versions[0], versions[0] + 7))
    issued = {(s["name"], s["version"]) for s in swaps}
    seen = {(r["budget"], r["budget_version"]) for r in results}
    assert seen <= issued and len(seen) >= 3
    for r in results:  # every answer obeys exactly the thresholds of the version it reports
        expected = (0, "confident") if r["budget"] == "low" else (3, "max_cubes")
        assert (r["exit_step"], r["exit_reason"]) == expected


def test_health_readiness_openapi_and_metrics(app: TestClient, videos: dict[str, Path]) -> None:
    assert app.get("/healthz").json() == {"status": "ok"}
    ready = app.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": dict.fromkeys(
        ["model_loaded", "warmed_up", "decoder_self_test", "engine_running", "not_draining"], True)}
    spec = app.get("/openapi.json").json()
    post = spec["paths"]["/classify"]["post"]
    assert {"413", "415", "422", "503", "504"} <= set(post["responses"])
    assert set(post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "video", "budget", "explain", "frames", "stream", "deadline_ms", "segment_s", "stride_s", "sampling"}
    assert {"401", "403", "422"} <= set(spec["paths"]["/budget"]["put"]["responses"])
    schemas = ("ClassifyResponse", "TimelineResponse", "Segment", "Gap", "Timings", "TopK", "Cube", "BudgetResponse",
               "ErrorBody")
    for name in schemas:
        fields = spec["components"]["schemas"][name]["properties"]
        assert all(field.get("description") for field in fields.values()), name
    classify(app, videos["h264.mp4"])
    classify(app, videos["empty.mp4"])
    text = app.get("/metrics").text
    for metric in (
        'adafocus_requests_total{status="200"}', "adafocus_request_duration_seconds_bucket",
        "adafocus_queue_wait_seconds_bucket", "adafocus_decode_duration_seconds_bucket",
        'adafocus_step_duration_seconds_bucket{le="0.0005",stage="glance"}',
        'adafocus_batch_size_bucket{le="1.0",stage="focus"}',
        "adafocus_exit_step_bucket", "adafocus_gmacs_per_video_bucket", "adafocus_queue_depth",
        "adafocus_active_requests", "adafocus_budget_info{budget=", 'adafocus_rejected_total{reason="invalid_input"}',
    ):
        assert metric in text, metric


def test_killed_decoder_workers_are_replaced(app: TestClient, videos: dict[str, Path]) -> None:
    pool = service_state(app).pool
    assert pool is not None
    pids = pool.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:  # wait until the kernel has finished them (zombies until the pool reaps them)
        wait_until_dead(pid)
    with ThreadPoolExecutor(4) as threads:
        responses = list(threads.map(lambda _: classify(app, videos["h264.mp4"]), range(4)))
    assert [r.status_code for r in responses] == [200, 200, 200, 200], [r.text for r in responses]
    assert len(set(pool.worker_pids()) - set(pids)) == 2
    assert 'adafocus_decoder_restarts_total{reason="died_idle"} 2.0' in app.get("/metrics").text
