"""In-process (TestClient): what a /classify answer explains (steps, frames), the Open Inference Protocol health and
metadata routes, request IDs in headers, bodies and log lines, JSON logs, the offline /docs and the web page files."""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.bundle import load_bundle
from model.macs import cost_report
from model.video import encode_video
from service.logs import JsonFormatter, RequestIdFilter
from tests.service.conftest import OPERATOR_TOKEN, TestClient, in_process, ramp

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




# ------------------------------------------------------------------------------------------------ OIP






# ------------------------------------------------------------------------------------------------ request IDs










# ------------------------------------------------------------------------------------------------ web


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


def test_steps_come_from_the_engine_progress_and_repeat_over_skipped_cubes() -> None:
    from service.classify.explain import steps_from_progress
    from service.engine.types import Progress

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
