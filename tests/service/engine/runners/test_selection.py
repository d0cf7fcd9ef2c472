"""Serving an ONNX export directory (``ADAFOCUS_BUNDLE=<export dir>``, ``ADAFOCUS_BACKEND=onnx``): the app runs the
exported graphs on ONNX Runtime and gives the same answer as the app on PyTorch with the same bundle. Both apps
run in-process (their lifespan loads, warms up and self-tests as ``adafocus serve`` does)."""

from __future__ import annotations

from pathlib import Path

from exporters.onnx_export import export_bundle
from model.bundle import load_bundle
from model.video import encode_video
from tests.service.conftest import TestClient, in_process, ramp, service_state


def classify(client: TestClient, video: Path) -> dict[str, object]:
    with video.open("rb") as fh:
        response = client.post("/classify", files={"video": (video.name, fh, "video/mp4")})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_serving_an_export_directory_matches_the_torch_server(tiny_bundle: Path, tmp_path: Path) -> None:
    export_dir = tmp_path / "onnx"
    export_bundle(load_bundle(tiny_bundle), export_dir)
    video = tmp_path / "clip.mp4"
    encode_video(video, ramp(8, 48, 48, seed=3))
    answers = []
    for backend, source in (("onnx", export_dir), ("torch", tiny_bundle)):
        for client in in_process(source, backend=backend):
            body = classify(client, video)
            answers.append((body["class_id"], body["exit_step"], round(float(body["confidence"]), 4)))  # type: ignore[arg-type]
            engine = service_state(client).engine
            assert engine is not None and engine.runner.name == backend  # what the "ready: <name> runner" log says
    assert answers[0] == answers[1]
