"""In-process (TestClient): what a /classify answer explains: the prediction after every exit (``steps``, under the
thresholds the engine bound for the request, even when the budget changed meanwhile) and the frames the model saw."""

from __future__ import annotations

import base64
import io
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.adafocus import FocusState
from model.bundle import load_bundle
from model.exits import GlanceResult
from model.macs import cost_report
from service.app import create_app
from service.classify.explain import steps_from_progress
from service.engine.runners.torch_runner import Runner
from service.engine.types import Progress
from service.settings import Settings
from tests.service.conftest import OPERATOR_TOKEN, TestClient, classify_ok, in_process

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN)


@pytest.mark.parametrize(("budget", "exit_step"), [("low", 0), ("mid", 1), ("high", 3)])
def test_explain_gives_the_prediction_after_every_exit_up_to_the_answer(
    app: TestClient, clip: Path, tiny_bundle: Path, budget: str, exit_step: int
) -> None:
    body = classify_ok(app, clip, budget=budget, explain="true")
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
    body = classify_ok(app, clip, frames="true")
    frames = body["frames"]
    assert isinstance(frames, list) and len(frames) == 4  # tiny: T = 4 frames of 32 x 32
    for url in frames:
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
        assert np.asarray(image).std() > 0
    assert "steps" not in body and "cubes" not in body


def test_steps_come_from_the_engine_progress_and_repeat_over_skipped_cubes() -> None:
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


class HeldFocus:
    """Wraps the engine's runner: after ``hold``, the next focus step waits on the runner thread until ``release``
    (the engine holds mid-request: the request's glance has bound its thresholds, its answer is still to come)."""

    def __init__(self) -> None:
        self._armed, self.holding, self._gate = threading.Event(), threading.Event(), threading.Event()
        self._inner: Runner | None = None

    def wrap(self, inner: Runner) -> Runner:
        self._inner, self.name, self.device = inner, inner.name, inner.device
        return self

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        assert self._inner is not None
        return self._inner.glance(frames_small)

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        assert self._inner is not None
        if self._armed.is_set():
            self.holding.set()
            assert self._gate.wait(60), "the test did not release the held focus step"
        return self._inner.focus(cubes, state)

    def hold(self) -> None:
        self._armed.set()

    def release(self) -> None:
        self._armed.clear()
        self._gate.set()


@pytest.fixture()
def held(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, HeldFocus]]:
    """The app in-process (as ``in_process`` builds it) around a runner whose focus steps the test can hold."""
    for key in os.environ:
        if key.startswith("ADAFOCUS_"):
            monkeypatch.delenv(key)
    settings = Settings(bundle=tiny_bundle, device="cpu", decode_workers=2, operator_token=OPERATOR_TOKEN)
    runner = HeldFocus()
    with TestClient(create_app(settings, wrap_runner=runner.wrap)) as client:
        yield client, runner


def test_steps_keep_the_thresholds_the_request_ran_under_when_the_budget_changes_meanwhile(
    held: tuple[TestClient, HeldFocus], clip: Path
) -> None:
    app, runner = held
    custom = app.put("/budget", json={"thresholds": [0.0, 0.0, 9.0, 9.0]}, headers=AUTH).json()
    runner.hold()
    with ThreadPoolExecutor(1) as pool:
        try:
            answer = pool.submit(classify_ok, app, clip, explain="true")
            assert runner.holding.wait(30), "the request never reached its first focus step"
            swapped = app.put("/budget", json={"level": "high"}, headers=AUTH).json()  # while it is in flight
        finally:
            runner.release()
        body = answer.result(timeout=60)
    assert (swapped["name"], swapped["version"]) == ("high", custom["version"] + 1)
    assert (body["budget"], body["budget_version"]) == ("custom", custom["version"])
    assert (body["exit_step"], body["exit_reason"]) == (2, "confident")  # eta_2 = 9 passes any entropy
    steps = body["steps"]
    assert isinstance(steps, list)
    assert [s.get("threshold") for s in steps] == [0.0, 0.0, 9.0]  # absent: no thresholds known
    assert [s["exited"] for s in steps] == [False, False, True]
