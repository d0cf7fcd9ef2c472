"""A client no one here wrote: NVIDIA's ``tritonclient.http.InferenceServerClient`` against a real `adafocus serve`,
for every call it makes (health, metadata, inference with files and with frames, binary data on and off); its
answers equal /classify's for the same clip. And a cut-off tensor body on a real socket is never classified."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model.video import decode_clip
from service.http import oip_tensors as wire
from service.http.open_inference import timeline_shapes
from tests.service.conftest import Server, serve

OUTPUT_NAMES = ("label", "class_id", "probabilities", "exit_step", "gmacs")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server.url.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def reference(server: Server, clip: Path) -> dict[str, Any]:
    """/classify's answer for the clip, budget `mid`."""
    response = httpx.post(f"{server.url}/classify", files={"video": clip.read_bytes()}, data={"budget": "mid"})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert not client.is_model_ready("other")
    meta = client.get_server_metadata()
    assert (meta["name"], meta["extensions"], meta["models"]) == ("adafocus-serve", ["binary_tensor_data"], ["tiny"])
    model = client.get_model_metadata("tiny")
    assert model["inputs"] == [
        {"name": "video", "datatype": "BYTES", "shape": [-1]},
        {"name": "frames", "datatype": "UINT8", "shape": [-1, -1, -1, -1, 3]},
    ]
    timeline = [name for name, _, _ in timeline_shapes(5, 3)]  # with segment_s: test_open_inference_timeline.py
    assert [o["name"] for o in model["outputs"]] == [*OUTPUT_NAMES, "cubes", *timeline]


def check(result: triton.InferResult, reference: dict[str, Any], decoded_on: str) -> None:
    assert result.get_response()["parameters"]["decoded_on"] == decoded_on
    label = result.as_numpy("label")[0]  # bytes from binary data, str from JSON (tritonclient's way)
    assert (label.decode() if isinstance(label, bytes) else label) == reference["label"]
    assert int(result.as_numpy("class_id")[0]) == reference["class_id"]
    assert int(result.as_numpy("exit_step")[0]) == reference["exit_step"]
    assert float(result.as_numpy("gmacs")[0]) == pytest.approx(reference["gmacs"], rel=1e-6)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 5) and probabilities.dtype == np.float32
    assert float(probabilities[0, reference["class_id"]]) == pytest.approx(reference["confidence"], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_video_bytes(client: triton.InferenceServerClient, clip: Path, reference: dict[str, Any],
                           binary: bool) -> None:
    video = triton.InferInput("video", [1], "BYTES")
    video.set_data_from_numpy(np.array([clip.read_bytes()], dtype=object), binary_data=True)  # a file is not UTF-8
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in OUTPUT_NAMES]
    result = client.infer("tiny", [video], outputs=outputs, parameters={"budget": "mid"})
    check(result, reference, "server")


@pytest.mark.parametrize("binary", [True, False])
def test_infer_frames_uint8(client: triton.InferenceServerClient, clip: Path, reference: dict[str, Any],
                            binary: bool) -> None:
    frames = decode_clip(clip, 4, 32)[None]  # (1, T, 32, 32, 3): the project's decoder on the client
    tensor = triton.InferInput("frames", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in OUTPUT_NAMES]
    result = client.infer("tiny", [tensor], outputs=outputs, parameters={"budget": "mid"})
    check(result, reference, "client")
    default = client.infer("tiny", [tensor], parameters={"budget": "mid"})  # no outputs named: all, binary
    check(default, reference, "client")


def test_errors_reach_the_client_with_their_code(client: triton.InferenceServerClient) -> None:
    frames = np.zeros((1, 3, 32, 32, 3), np.uint8)  # T = 3 < 4
    tensor = triton.InferInput("frames", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("tiny", [tensor])
    assert raised.value.status() == "422" and raised.value.message().startswith("too_few_frames: ")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("other", [tensor])
    assert raised.value.status() == "404" and raised.value.message().startswith("model_not_found: ")


def test_a_cut_off_tensor_body_is_never_classified(server: Server, clip: Path) -> None:
    body, header = wire.encode_request([wire.Output("video", "BYTES", [clip.read_bytes()])], {})
    head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{wire.HEADER_LENGTH}: {header}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client's upload broke off half way
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"code":"incomplete_upload"' in answer
