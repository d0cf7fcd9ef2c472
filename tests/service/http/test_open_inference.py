"""In-process (TestClient): what a /classify answer explains (steps, frames), the Open Inference Protocol health and
metadata routes, request IDs in headers, bodies and log lines, JSON logs, the offline /docs and the web page files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model.bundle import load_bundle
from model.macs import cost_report
from tests.service.conftest import OPERATOR_TOKEN, TestClient, in_process, service_state


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN)


# ------------------------------------------------------------------------------------------------ explain


# ------------------------------------------------------------------------------------------------ OIP


# ------------------------------------------------------------------------------------------------ request IDs


# ------------------------------------------------------------------------------------------------ web


def test_open_inference_protocol_health_and_metadata(app: TestClient, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert app.get("/v2/health/live").json() == {"live": True}
    ready = app.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert app.get("/v2").json() == {"name": "adafocus-serve", "version": "0.1.0", "extensions": ["binary_tensor_data"],
                                 "models": ["tiny"]}
    assert app.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    meta = app.get("/v2/models/tiny").json()
    assert meta == {
        "name": "tiny",
        "versions": [bundle.sha256[:12]],
        "platform": "pytorch",
        "inputs": [
            {"name": "video", "datatype": "BYTES", "shape": [-1]},
            {"name": "frames", "datatype": "UINT8", "shape": [-1, -1, -1, -1, 3]},
        ],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "class_id", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 5]},
            {"name": "exit_step", "datatype": "INT32", "shape": [-1]},
            {"name": "gmacs", "datatype": "FP32", "shape": [-1]},
            {"name": "cubes", "datatype": "INT32", "shape": [-1, 3, 6]},
            # with segment_s (a timeline): the video's gmacs_all_k, then per segment, then the gaps
            {"name": "gmacs_all_k", "datatype": "FP32", "shape": [1]},
            {"name": "segment_index", "datatype": "INT32", "shape": [-1]},
            {"name": "segment_start_s", "datatype": "FP32", "shape": [-1]},
            {"name": "segment_end_s", "datatype": "FP32", "shape": [-1]},
            {"name": "segment_label", "datatype": "BYTES", "shape": [-1]},
            {"name": "segment_class_id", "datatype": "INT64", "shape": [-1]},
            {"name": "segment_confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "segment_probabilities", "datatype": "FP32", "shape": [-1, 5]},
            {"name": "segment_exit_step", "datatype": "INT32", "shape": [-1]},
            {"name": "segment_exit_reason", "datatype": "BYTES", "shape": [-1]},
            {"name": "segment_gmacs", "datatype": "FP32", "shape": [-1]},
            {"name": "segment_cubes", "datatype": "INT32", "shape": [-1, 3, 6]},
            {"name": "gaps", "datatype": "FP32", "shape": [-1, 2]},
        ],
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
