"""In-process (TestClient): what a /classify answer explains (steps, frames), the Open Inference Protocol health and
metadata routes, request IDs in headers, bodies and log lines, JSON logs, the offline /docs and the web page files."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.bundle import load_bundle
from model.cost import cost_report
from model.video import encode_video
from service.logs import JsonFormatter, RequestIdFilter, TextFormatter
from tests.service.conftest import OPERATOR_TOKEN, TestClient, in_process, ramp, service_state

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(tmp_path_factory.mktemp("clip") / "clip.mp4", ramp(12, 48, 64, seed=5), "libx264")


def classify(app: TestClient, clip: Path, headers: dict[str, str] | None = None, **fields: str) -> dict[str, object]:
    with clip.open("rb") as fh:
        response = app.post("/classify", files={"video": ("clip.mp4", fh)}, data=fields, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert response.headers["x-request-id"] == body["request_id"]
    return body


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG and above during the test, one JSON object per line."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root, service = logging.getLogger(), logging.getLogger("service")
    old = service.level
    root.addHandler(handler)
    service.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        service.setLevel(old)


# ------------------------------------------------------------------------------------------------ explain
@pytest.mark.parametrize(("budget", "exit_step"), [("low", 0), ("mid", 1), ("high", 3)])
def test_explain_gives_the_prediction_after_every_exit_up_to_the_answer(
    app: TestClient, clip: Path, tiny_bundle: Path, budget: str, exit_step: int
) -> None:
    body = classify(app, clip, budget=budget, explain="true")
    bundle = load_bundle(tiny_bundle)
    thresholds = bundle.budgets.get(budget).thresholds
    costs = cost_report(bundle.model)
    steps = body["steps"]
    assert isinstance(steps, list) and body["exit_step"] == exit_step
    assert [s["exit"] for s in steps] == list(range(exit_step + 1))
    assert [s["exited"] for s in steps] == [False] * exit_step + [True]
    assert [s["threshold"] for s in steps] == pytest.approx(thresholds[: exit_step + 1])
    assert [s["gmacs"] for s in steps] == pytest.approx(costs.exit_gmacs[: exit_step + 1])
    last = steps[-1]  # the steps end where the engine answered
    assert (last["class_id"], last["label"]) == (body["class_id"], body["label"])
    assert last["confidence"] == pytest.approx(body["confidence"], abs=1e-5)
    assert last["gmacs"] == pytest.approx(body["gmacs"])
    for step in steps:
        assert 0 <= step["score"] <= math.log(5) + 1e-5  # entropy over the tiny model's 5 classes
    assert "frames" not in body


def test_frames_are_the_frames_the_model_saw(app: TestClient, clip: Path) -> None:
    body = classify(app, clip, frames="true")
    frames = body["frames"]
    assert isinstance(frames, list) and len(frames) == 4  # tiny: T = 4 frames of 32 x 32
    for url in frames:
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
        assert np.asarray(image).std() > 0
    assert "steps" not in body and "cubes" not in body


# ------------------------------------------------------------------------------------------------ OIP
def test_open_inference_protocol_health_and_metadata(app: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert app.get("/v2/health/live").json() == {"live": True}
    ready = app.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert app.get("/v2").json() == {"name": "adafocus-serve", "version": "0.1.0", "extensions": [], "models": ["tiny"]}
    assert app.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    meta = app.get("/v2/models/tiny").json()
    assert meta == {
        "name": "tiny",
        "versions": [bundle.sha256[:12]],
        "platform": "pytorch",
        "inputs": [{"name": "video", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [5]}],
        "architecture": "tiny",
        "labels": [f"class_{i}" for i in range(5)],
        "num_frames": 4,
        "frame_size": 32,
        "glance_size": 16,
        "num_cubes": 3,
        "cube_size": 8,
        "cube_frames": 1,
        "exit_gmacs": pytest.approx(cost_report(bundle.model).exit_gmacs),
        "criterion": "entropy",
        "budget": "high",
        "budget_version": meta["budget_version"],
        "default_budget": "high",
        "budget_levels": [
            {
                "name": lvl.name,
                "thresholds": pytest.approx(list(lvl.thresholds)),
                "expected_gmacs": pytest.approx(lvl.expected_gmacs),
                "expected_accuracy": lvl.expected_accuracy,
            }
            for lvl in bundle.budgets.levels
        ],
        "sha256": bundle.sha256,
        "backend": "torch",
        "device": "cpu",
    }


def test_unknown_model_is_404_with_the_served_name(app: TestClient) -> None:
    for path in ("/v2/models/other", "/v2/models/other/ready"):
        response = app.get(path)
        assert response.status_code == 404
        assert response.json() == {
            "code": "model_not_found",
            "message": "no model 'other' here; this server serves 'tiny'",
            "request_id": response.headers["x-request-id"],
        }


def test_readiness_routes_turn_503_while_draining(app: TestClient) -> None:
    state = service_state(app)
    state.draining = True
    try:
        for path, body in (
            ("/v2/health/ready", {"ready": False}),
            ("/v2/models/tiny/ready", {"name": "tiny", "ready": False}),
        ):
            response = app.get(path)
            assert (response.status_code, response.json(), response.headers["retry-after"]) == (503, body, "1")
    finally:
        state.draining = False
    assert app.get("/v2/health/ready").status_code == 200


# ------------------------------------------------------------------------------------------------ request IDs
def test_request_id_is_echoed_or_made_up(app: TestClient, clip: Path) -> None:
    body = classify(app, clip, headers={"X-Request-ID": "client-42.a:b_c"})
    assert body["request_id"] == "client-42.a:b_c"
    made_up = classify(app, clip)["request_id"]
    assert isinstance(made_up, str) and HEX32.fullmatch(made_up)
    for unsafe in ("two words", "x" * 129, "line\\nbreak", ""):  # could forge or bloat log lines: replaced
        response = app.get("/healthz", headers={"X-Request-ID": unsafe})
        assert HEX32.fullmatch(response.headers["x-request-id"]), unsafe
    assert app.get("/healthz", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"


def test_error_bodies_carry_the_request_id(app: TestClient) -> None:
    response = app.post("/classify", files={"video": ("a.mp4", b"not a video")}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 415
    assert (response.json()["code"], response.json()["request_id"]) == ("not_a_video", "r-1")
    assert response.headers["x-request-id"] == "r-1"


def test_every_log_line_of_a_request_carries_its_id(app: TestClient, clip: Path, log_lines: io.StringIO) -> None:
    classify(app, clip, headers={"X-Request-ID": "trace-me"})
    app.get("/healthz", headers={"X-Request-ID": "other"})
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    mine = [r for r in records if r["request_id"] == "trace-me"]
    assert {r["logger"] for r in mine} >= {"service.routes", "service.access"}
    access = [r for r in records if r["logger"] == "service.access"]
    assert [(r["request_id"], r["method"], r["path"], r["status"]) for r in access] == [
        ("trace-me", "POST", "/classify", 200),
        ("other", "GET", "/healthz", 200),
    ]
    assert all(r["duration_ms"] >= 0 and r["level"] == "INFO" and r["ts"].endswith("+00:00") for r in access)


def test_the_operator_token_is_never_logged(app: TestClient, log_lines: io.StringIO) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert app.put("/budget?token=x", json={"level": "high"}, headers=auth).status_code == 200
    assert (
        app.put(
            "/budget", json={"level": "high"}, headers={"Authorization": "Bearer wrong-token-0123456789"}
        ).status_code
        == 403
    )
    text = log_lines.getvalue()
    assert "/budget" in text and "token=" not in text  # the path, never the query string
    assert OPERATOR_TOKEN not in text and "wrong-token" not in text and "Bearer" not in text


def test_text_format_shows_the_request_id_only_inside_a_request() -> None:
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.request_id = "abc"
    assert TextFormatter().format(record).endswith(" INFO service.x [abc]: hello you")
    record.request_id = "-"
    assert TextFormatter().format(record).endswith(" INFO service.x: hello you")


# ------------------------------------------------------------------------------------------------ web
def test_docs_and_the_page_use_only_local_assets(app: TestClient) -> None:
    docs = app.get("/docs").text
    assert "cdn" not in docs.lower()
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert app.get(asset).status_code == 200, asset
    page = app.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    local = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css"} <= set(local)
    for asset in ("/static/app.js", "/static/style.css"):
        assert app.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    assert app.get("/redoc").status_code == 404


def test_steps_come_from_the_engine_progress_and_repeat_over_skipped_cubes() -> None:
    from service.engine.types import Progress
    from service.explain import steps_from_progress

    def event(k: int, class_id: int, gmacs: float) -> Progress:
        return Progress(request_id=1, exit_index=k, class_id=class_id, confidence=0.5 + k / 10, score=1.0 - k / 10,
                        cube=None, gmacs=gmacs, final=k == 3)  # fmt: skip

    # the glance, cube 1, then cube 2 whose successor was covered: the engine's step reached exit 3 directly
    steps = steps_from_progress([event(0, 4, 1.0), event(1, 2, 1.5), event(3, 2, 2.0)], 3, list("abcde"), None)
    assert [(s.exit, s.class_id, s.label, s.gmacs, s.exited) for s in steps] == [
        (0, 4, "e", 1.0, False),
        (1, 2, "c", 1.5, False),
        (2, 2, "c", 2.0, False),
        (3, 2, "c", 2.0, True),
    ]
    assert steps_from_progress([event(0, 4, 1.0)], 2, list("abcde"), None)[-1].exit == 0  # nothing invented
