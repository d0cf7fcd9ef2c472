"""In-process (TestClient): ``POST /v2/models/{name}/infer`` answers as /classify does, for files and for frames, in
JSON and binary tensors; and every bad tensor body is a 4xx with its stable code, in the protocol's error form."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.video import decode_clip
from service.http import oip_tensors as wire
from tests.service.conftest import TestClient, classify_ok, in_process, service_state

T, SIZE = 4, 32  # the tiny model's frames


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, max_queue=4, max_upload_bytes=2_000_000, max_pixels_per_frame=200 * 200)


def infer(app: TestClient, inputs: list[wire.Output], parameters: dict[str, Any] | None = None,
          binary: bool = True) -> tuple[int, dict[str, Any], dict[str, np.ndarray]]:
    body, header = wire.encode_request(inputs, parameters or {}, binary)
    headers = {wire.HEADER_LENGTH: str(header)} if header is not None else {}
    response = app.post("/v2/models/tiny/infer", content=body, headers=headers)
    if response.status_code != 200:
        return response.status_code, response.json(), {}
    head, outputs = wire.decode_response(response.content, response.headers.get(wire.HEADER_LENGTH))
    return 200, head, outputs


def same_answer(outputs: dict[str, np.ndarray], row: int, ref: dict[str, Any]) -> None:
    assert outputs["label"][row].decode() == ref["label"]
    assert int(outputs["class_id"][row]) == ref["class_id"]
    assert int(outputs["exit_step"][row]) == ref["exit_step"]
    assert float(outputs["gmacs"][row]) == pytest.approx(ref["gmacs"], rel=1e-6)
    probabilities = outputs["probabilities"][row]
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    for entry in ref["top_k"]:
        assert float(probabilities[entry["class_id"]]) == pytest.approx(entry["probability"], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_video_and_frames_answers_equal_classify(app: TestClient, clip: Path, binary: bool) -> None:
    ref = classify_ok(app, clip, budget="mid")
    video = wire.Output("video", "BYTES", [clip.read_bytes()])
    status, head, outputs = infer(app, [video], {"budget": "mid"}, binary=True)
    assert status == 200, head
    assert head["parameters"]["decoded_on"] == "server" and head["parameters"]["budget"] == "mid"
    same_answer(outputs, 0, ref)
    frames = decode_clip(clip, T, SIZE)[None]  # (1, T, SIZE, SIZE, 3): what the server's decoder gives the model
    status, head, outputs = infer(app, [wire.Output("frames", "UINT8", frames)], {"budget": "mid"}, binary)
    assert status == 200, head
    assert head["parameters"]["decoded_on"] == "client"
    assert outputs["probabilities"].shape == (1, 5) and outputs["class_id"].dtype == np.int64
    same_answer(outputs, 0, ref)


def test_n_clips_are_answered_together_in_order(app: TestClient, clip: Path, tmp_path: Path) -> None:
    frames = decode_clip(clip, T, SIZE)  # (T, SIZE, SIZE, 3)
    batch = np.stack([frames, frames[:, ::-1].copy(), frames])  # (3, T, SIZE, SIZE, 3)
    status, _, outputs = infer(app, [wire.Output("frames", "UINT8", batch)], {"explain": True})
    assert status == 200
    assert outputs["label"].shape == (3,) and outputs["cubes"].shape == (3, 3, 6)
    np.testing.assert_array_equal(outputs["probabilities"][0], outputs["probabilities"][2])
    for n in range(3):  # the cubes of each clip up to its exit, -1 after
        used = int(outputs["exit_step"][n])
        assert (outputs["cubes"][n, used:] == -1).all() and (outputs["cubes"][n, :used, 4] == 8).all()


def test_frames_of_any_size_and_length_are_sampled_and_resized(app: TestClient) -> None:
    raw = np.random.default_rng(1).integers(0, 256, (1, 9, 50, 70, 3), dtype=np.uint8)  # T_in 9 > T, not square
    status, _, outputs = infer(app, [wire.Output("frames", "UINT8", raw[0])])  # [T, H, W, 3]: one clip
    assert status == 200 and outputs["label"].shape == (1,)


def test_outputs_asked_for_come_back_and_only_those(app: TestClient, clip: Path) -> None:
    head_only = {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1],
                             "parameters": {"binary_data_size": 4 + clip.stat().st_size}}],
                 "outputs": [{"name": "label"}, {"name": "gmacs", "parameters": {"binary_data": True}}]}
    text = json.dumps(head_only).encode()
    data = clip.stat().st_size.to_bytes(4, "little") + clip.read_bytes()
    response = app.post("/v2/models/tiny/infer", content=text + data, headers={wire.HEADER_LENGTH: str(len(text))})
    assert response.status_code == 200
    head, outputs = wire.decode_response(response.content, response.headers[wire.HEADER_LENGTH])
    assert [o["name"] for o in head["outputs"]] == ["label", "gmacs"]
    assert "data" in head["outputs"][0] and head["outputs"][1]["parameters"]["binary_data_size"] == 4
    assert sorted(outputs) == ["gmacs", "label"] and outputs["gmacs"].dtype == np.float32


def raw_infer(app: TestClient, request: dict[str, Any] | bytes, data: bytes = b"",
              header: int | None = None) -> tuple[int, dict[str, Any]]:
    text = request if isinstance(request, bytes) else json.dumps(request).encode()
    headers = {wire.HEADER_LENGTH: str(len(text) if header is None else header)} if data or header else {}
    response = app.post("/v2/models/tiny/infer", content=text + data, headers=headers)
    return response.status_code, response.json()


def frames_input(shape: list[int], size: int | None = None, datatype: str = "UINT8") -> dict[str, Any]:
    nbytes = math.prod(shape) if size is None else size
    return {"inputs": [{"name": "frames", "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": nbytes}}]}


GOOD = [1, T, SIZE, SIZE, 3]
CASES: list[tuple[str, dict[str, Any] | bytes, bytes, int | None, int, str]] = [
    ("shape disagrees with the binary size", frames_input(GOOD, 100), bytes(100), None, 422, "tensor_shape_mismatch"),
    ("shape disagrees with the JSON data",
     {"inputs": [{"name": "frames", "datatype": "UINT8", "shape": GOOD, "data": [1, 2, 3]}]}, b"", None, 422,
     "tensor_shape_mismatch"),
    ("JSON data outside UINT8",
     {"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, T, 1, 1, 3], "data": [300] * 3 * T}]}, b"",
     None, 422, "tensor_datatype"),
    ("wrong datatype", frames_input(GOOD, 4 * math.prod(GOOD), "FP32"), bytes(4 * math.prod(GOOD)), None, 422,
     "tensor_datatype"),
    ("video not BYTES", {"inputs": [{"name": "video", "datatype": "UINT8", "shape": [4], "data": [0, 0, 0, 0]}]},
     b"", None, 422, "tensor_datatype"),
    ("header length larger than the body", frames_input([1]), b"x", 10_000, 400, "invalid_inference_request"),
    ("binary size larger than the body", frames_input(GOOD), bytes(10), None, 400, "invalid_inference_request"),
    ("2^31 elements declared", frames_input([1, 2**10, 2**10, 2**9, 4], 0), b"\0", None, 413, "tensor_too_large"),
    ("N above the queue", frames_input([5, T, SIZE, SIZE, 3]), bytes(5 * T * SIZE * SIZE * 3), None, 422,
     "too_many_clips"),
    ("no clips", frames_input([0, T, SIZE, SIZE, 3]), b"", None, 422, "too_many_clips"),
    ("too few frames", frames_input([1, T - 1, SIZE, SIZE, 3]), bytes((T - 1) * SIZE * SIZE * 3), None, 422,
     "too_few_frames"),
    ("frames over the pixel limit", frames_input([1, T, 201, 200, 3]), bytes(T * 201 * 200 * 3), None, 422,
     "frame_too_large"),
    ("not RGB", frames_input([1, T, 8, 8, 4]), bytes(T * 8 * 8 * 4), None, 422, "tensor_shape"),
    ("frames of 3 dimensions", frames_input([T, 8, 3]), bytes(T * 8 * 3), None, 422, "tensor_shape"),
    ("BYTES element past its data", {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1],
                                                 "parameters": {"binary_data_size": 8}}]},
     (100).to_bytes(4, "little") + b"abcd", None, 422, "tensor_shape_mismatch"),
    ("both inputs", {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                                {"name": "frames", "datatype": "UINT8", "shape": [1], "data": [1]}]}, b"", None,
     400, "invalid_inference_request"),
    ("no inputs", {"inputs": []}, b"", None, 400, "invalid_inference_request"),
    ("not JSON", b"\xff\xfe", b"", None, 422, "invalid_request"),
    ("an unknown output", {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
                           "outputs": [{"name": "logits"}]}, b"", None, 400, "invalid_inference_request"),
]
PARAMETER_CASES = [
    ({"deadline_ms": -5}, "invalid_parameter"), ({"deadline_ms": "NaN"}, "invalid_parameter"),
    ({"timeout": 0}, "invalid_parameter"), ({"explain": "yes"}, "invalid_parameter"),
    ({"sampling": "legacy"}, "invalid_parameter"), ({"budget": 3}, "invalid_parameter"),
    ({"colour": "red"}, "invalid_parameter"), ({"budget": "nope"}, "invalid_budget"),
]


@pytest.mark.parametrize(("what", "request_", "data", "header", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_tensor_bodies(app: TestClient, what: str, request_: dict[str, Any] | bytes, data: bytes,
                           header: int | None, status: int, code: str) -> None:
    got, body = raw_infer(app, request_, data, header)
    assert (got, body["code"]) == (status, code), body
    assert body["error"].startswith(f"{code}: ") and body["request_id"]


@pytest.mark.parametrize(("parameters", "code"), PARAMETER_CASES, ids=[str(p) for p, _ in PARAMETER_CASES])
def test_bad_parameters(app: TestClient, clip: Path, parameters: dict[str, Any], code: str) -> None:
    text = json.dumps({"parameters": parameters, "inputs": [{"name": "video", "datatype": "BYTES", "shape": [1],
                                                             "data": ["x"]}]}).replace('"NaN"', "NaN")
    got, body = raw_infer(app, text.encode())
    assert (got, body["code"]) == (422, code), body


def test_body_limit_and_unknown_model(app: TestClient) -> None:
    got, body = raw_infer(app, frames_input(GOOD), bytes(2_000_001))
    assert (got, body["code"]) == (413, "too_large")
    response = app.post("/v2/models/other/infer", content=b"{}")
    assert (response.status_code, response.json()["code"]) == (404, "model_not_found")


def test_draining_refuses_inference(app: TestClient, clip: Path) -> None:
    state = service_state(app)
    state.draining = True
    try:
        status, body, _ = infer(app, [wire.Output("video", "BYTES", [clip.read_bytes()])])
        assert (status, body["code"]) == (503, "draining")
    finally:
        state.draining = False


def test_api_keys_guard_inference_in_the_protocols_error_form(tiny_bundle: Path, clip: Path, tmp_path: Path) -> None:
    key = "oip-test-key-0123456789"
    keys = tmp_path / "api-keys"
    keys.write_text(f"{key} team-oip\n")
    body, header = wire.encode_request([wire.Output("video", "BYTES", [clip.read_bytes()])], {})
    for keyed in in_process(tiny_bundle, api_keys_file=keys):
        def post(**headers: str) -> Any:
            return keyed.post(  # noqa: B023 (called inside the loop's only pass)
                "/v2/models/tiny/infer", content=body, headers={wire.HEADER_LENGTH: str(header), **headers}
            )
        missing, wrong, good = post(), post(**{"X-API-Key": "x" * 20}), post(Authorization=f"Bearer {key}")
        assert (missing.status_code, missing.json()["code"]) == (401, "api_key_required")
        assert missing.json()["error"].startswith("api_key_required: ")
        assert (wrong.status_code, wrong.json()["code"]) == (403, "api_key_invalid")
        assert good.status_code == 200
