"""HTTP integration tests against a real `adafocus serve` process (tiny random bundle) on a free local port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from model.video import encode_video
from tests.service.conftest import OPERATOR_TOKEN, Server, ramp, serve

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
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(
        tiny_bundle, tmp_path_factory.mktemp("http"), operator_token=OPERATOR_TOKEN, max_upload_bytes=MAX_UPLOAD
    )


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


def classify(server: Server, path: Path, client: httpx.Client | None = None, **fields: str) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    with path.open("rb") as fh:
        return post(f"{server.url}/classify", files={"video": (path.name, fh)}, data=fields, timeout=60)


@pytest.fixture()
def default_budget(server: Server) -> Iterator[None]:
    yield
    assert httpx.put(f"{server.url}/budget", json={"level": "high"}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("name", [*CODECS, "odd.mkv", "rotated.mp4"])
def test_classify_every_codec_and_container(server: Server, videos: dict[str, Path], name: str) -> None:
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


def test_same_video_same_answer_and_explain_lists_the_cubes(server: Server, videos: dict[str, Path]) -> None:
    first = classify(server, videos["h264.mp4"]).json()
    second = classify(server, videos["h264.mp4"], explain="true").json()
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
    server: Server, videos: dict[str, Path], name: str, status: int, code: str
) -> None:
    response = classify(server, videos[name])
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["message"]


def test_bad_requests_get_json_errors(server: Server, videos: dict[str, Path]) -> None:
    url = f"{server.url}/classify"
    cases = {
        "no video part": httpx.post(url, data={"budget": "low"}, files={"other": ("x", b"x")}),
        "json body": httpx.post(url, json={"video": "x"}),
        "unknown level": classify(server, videos["h264.mp4"], budget="turbo"),
        "bad explain": classify(server, videos["h264.mp4"], explain="maybe"),
        "wrong method": httpx.get(url),
        "no route": httpx.get(f"{server.url}/nope"),
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


def test_chunked_upload_over_the_cap_is_refused_while_streaming(server: Server, videos: dict[str, Path]) -> None:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n').encode()

    def body() -> Iterator[bytes]:  # no Content-Length: only the streaming count can stop it
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        response = httpx.post(f"{server.url}/classify", content=body(), headers=headers, timeout=30)
    except httpx.TransportError:  # the server may close the connection before the client finishes writing
        return
    assert (response.status_code, response.json()["code"]) == (413, "too_large")


def test_per_request_budget(server: Server, videos: dict[str, Path]) -> None:
    body = classify(server, videos["vp9.webm"], budget="low").json()
    assert (body["budget"], body["exit_step"], body["exit_reason"], body["cubes_used"]) == ("low", 0, "confident", 0)
    body = classify(server, videos["vp9.webm"], budget="mid").json()
    assert (body["budget"], body["exit_step"], body["cubes_used"]) == ("mid", 1, 1)


def test_budget_changes_need_the_operator_token(server: Server, default_budget: None) -> None:
    url = f"{server.url}/budget"
    before = httpx.get(url).json()
    assert [lvl["name"] for lvl in before["levels"]] == ["low", "mid", "high"]
    missing = httpx.put(url, json={"level": "low"})
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.put(url, json={"level": "low"}, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert (wrong.status_code, wrong.json()["code"]) == (403, "forbidden")
    assert httpx.get(url).json()["version"] == before["version"]
    ok = httpx.put(url, json={"level": "low"}, headers=AUTH).json()
    assert (ok["name"], ok["version"]) == ("low", before["version"] + 1)
    by_gmacs = httpx.put(url, json={"gmacs": before["levels"][1]["expected_gmacs"]}, headers=AUTH).json()
    assert (by_gmacs["name"], by_gmacs["version"]) == ("mid", before["version"] + 2)
    custom = httpx.put(url, json={"thresholds": [0.0, 0.0, 9.0, 9.0]}, headers=AUTH).json()
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
def test_invalid_budget_changes(server: Server, body: dict[str, object], code: str) -> None:
    response = httpx.put(f"{server.url}/budget", json=body, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (422, code)


def test_budget_switches_atomically_under_concurrent_requests(
    server: Server, videos: dict[str, Path], default_budget: None
) -> None:
    stop = threading.Event()
    results: list[dict[str, object]] = []
    answered = threading.Condition()
    clients = 3

    def client_loop() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                response = classify(server, videos["h264.mp4"], client)
                assert response.status_code == 200, response.text
                with answered:
                    results.append(response.json())
                    answered.notify_all()

    def wait_for_answers(count: int) -> None:
        with answered:
            assert answered.wait_for(lambda: len(results) >= count, timeout=60), f"{len(results)} < {count} answers"

    swaps = [httpx.get(f"{server.url}/budget").json()]
    with ThreadPoolExecutor(clients) as pool:
        loops = [pool.submit(client_loop) for _ in range(clients)]
        for i in range(6):
            # one answer more than there are clients: at least one request was submitted after the last swap
            wait_for_answers(len(results) + clients + 1)
            level = "low" if i % 2 == 0 else "high"
            swaps.append(httpx.put(f"{server.url}/budget", json={"level": level}, headers=AUTH).json())
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


def test_health_readiness_openapi_and_metrics(server: Server, videos: dict[str, Path]) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": dict.fromkeys(
        ["model_loaded", "warmed_up", "decoder_self_test", "engine_running", "not_draining"], True)}
    spec = httpx.get(f"{server.url}/openapi.json").json()
    post = spec["paths"]["/classify"]["post"]
    assert {"413", "415", "422", "503", "504"} <= set(post["responses"])
    assert set(post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "video", "budget", "explain"}
    assert {"401", "403", "422"} <= set(spec["paths"]["/budget"]["put"]["responses"])
    for name in ("ClassifyResponse", "Timings", "TopK", "Cube", "BudgetResponse", "ErrorBody"):
        fields = spec["components"]["schemas"][name]["properties"]
        assert all(field.get("description") for field in fields.values()), name
    classify(server, videos["h264.mp4"])
    classify(server, videos["empty.mp4"])
    text = httpx.get(f"{server.url}/metrics").text
    for metric in (
        'adafocus_requests_total{status="200"}', "adafocus_request_duration_seconds_bucket",
        "adafocus_queue_wait_seconds_bucket", "adafocus_decode_duration_seconds_bucket",
        'adafocus_step_duration_seconds_bucket{le="0.0005",stage="glance"}',
        'adafocus_batch_size_bucket{le="1.0",stage="focus"}',
        "adafocus_exit_step_bucket", "adafocus_gmacs_per_video_bucket", "adafocus_queue_depth",
        "adafocus_active_requests", "adafocus_budget_info{budget=", 'adafocus_rejected_total{reason="invalid_input"}',
    ):
        assert metric in text, metric


def decoder_pids(server_pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_killed_decoder_workers_are_replaced(server: Server, videos: dict[str, Path]) -> None:
    import os
    import signal

    pids = decoder_pids(server.process.pid)
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:  # wait until the kernel has finished them (zombies until the server reaps them)
        status = Path(f"/proc/{pid}/status")
        while status.exists() and "zombie" not in status.read_text():
            time.sleep(0.01)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: classify(server, videos["h264.mp4"]), range(4)))
    assert [r.status_code for r in responses] == [200, 200, 200, 200], [r.text for r in responses]
    assert len(set(decoder_pids(server.process.pid)) - set(pids)) == 2
    assert 'adafocus_decoder_restarts_total{reason="died_idle"} 2.0' in httpx.get(f"{server.url}/metrics").text
