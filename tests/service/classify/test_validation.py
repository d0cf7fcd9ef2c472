"""Strict validation, in-process: form booleans are `true`/`false` (any case) or `1`/`0`, a repeated form field is
refused by name, and PUT /budget takes numbers (not booleans) for thresholds, an objective within its range, and no
unknown keys (each named); the settings share the objective's range."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.video import encode_video
from service.schemas import P99_MAX_S, P99_MIN_S
from service.settings import Settings
from tests.service.conftest import OPERATOR_TOKEN, TestClient, in_process, ramp

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN, slo_p99_s=0.5)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    return encode_video(path, ramp(12, 48, 64, seed=2), "libx264").read_bytes()


@pytest.mark.parametrize(
    ("value", "explained"), [("true", True), ("TRUE", True), ("True", True), ("1", True), ("false", False),
                             ("FALSE", False), ("0", False)],
)
def test_booleans_that_mean_something(app: TestClient, video: bytes, value: str, explained: bool) -> None:
    response = app.post("/classify", files={"video": video}, data={"explain": value})
    assert response.status_code == 200
    assert ("steps" in response.json()) is explained


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", " true ", "true ", "", "2", "tru"])
@pytest.mark.parametrize("name", ["explain", "frames", "stream"])
def test_booleans_that_do_not(app: TestClient, video: bytes, name: str, value: str) -> None:
    response = app.post("/classify", files={"video": video}, data={name: value})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert response.json()["message"] == f"form field {name!r} must be true, false, 1 or 0, got {value!r}"


def test_a_repeated_form_field_is_refused_by_name(app: TestClient, video: bytes) -> None:
    response = app.post("/classify", files=[("budget", (None, b"low")), ("budget", (None, b"high")),
                                            ("video", ("clip.mp4", video))])
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert response.json()["message"] == "form field 'budget' is given more than once"
    one = app.post("/classify", files=[("budget", (None, b"low")), ("video", ("clip.mp4", video))])
    assert (one.status_code, one.json()["budget"]) == (200, "low")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"thresholds": [True, 0, 0, 0]}, "body.thresholds: Value error, thresholds[0] must be a number, got bool"),
        ({"thresholds": [0.0, False, 0.0, 0.0]}, "thresholds[1] must be a number, got bool False"),
        ({"thresholds": [0.0, "0.5", 0.0, 0.0]}, "thresholds[1] must be a number, got str '0.5'"),
        ({"gmacs": True}, "body.gmacs: Value error, it must be a number, got bool True"),
        ({"mode": "auto", "p99_s": 1e-300}, "body.p99_s: Input should be greater than or equal to 0.001"),
        ({"mode": "auto", "p99_s": 0}, "body.p99_s: Input should be greater than or equal to 0.001"),
        ({"mode": "auto", "p99_s": 3600.5}, "body.p99_s: Input should be less than or equal to 3600"),
        ({"mode": "auto", "p99_s": True}, "body.p99_s: Value error, it must be a number, got bool True"),
        ({"level": "low", "levle": "mid"}, "body.levle: Extra inputs are not permitted"),
        ({"mode": "auto", "p99": 0.3, "floor": "low"}, "body.p99: Extra inputs are not permitted; body.floor: Extra "
                                                       "inputs are not permitted"),
    ],
)
def test_put_budget_refuses_what_is_not_a_setting(app: TestClient, body: dict[str, object], message: str) -> None:
    before = app.get("/budget").json()["version"]
    response = app.put("/budget", json=body, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert message in response.json()["message"]
    assert app.get("/budget").json()["version"] == before


def test_put_budget_takes_the_range_ends_and_integers(app: TestClient) -> None:
    for p99 in (P99_MIN_S, P99_MAX_S, 2):
        response = app.put("/budget", json={"mode": "auto", "p99_s": p99}, headers=AUTH)
        assert (response.status_code, response.json()["slo_p99_s"]) == (200, p99)
    response = app.put("/budget", json={"thresholds": [0, 0, 9, 9]}, headers=AUTH)
    assert (response.status_code, response.json()["thresholds"]) == (200, [0, 0, 9, 9])
    assert app.put("/budget", json={"level": "high"}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("p99", [0.0005, 3601.0])
def test_the_settings_objective_has_the_same_range(p99: float) -> None:
    with pytest.raises(ValidationError, match="slo_p99_s"):
        Settings(slo_p99_s=p99)
