"""`adafocus serve --bundle <ONNX export dir>`: the server runs the exported graphs on ONNX Runtime and gives
the same answer as the PyTorch server on the same bundle."""

from __future__ import annotations

from pathlib import Path

import httpx

from exporters.onnx_export import export_bundle
from model.bundle import load_bundle
from model.video import encode_video
from tests.service.conftest import ramp, serve


def classify(url: str, video: Path) -> dict[str, object]:
    with video.open("rb") as fh:
        response = httpx.post(f"{url}/classify", files={"video": (video.name, fh, "video/mp4")}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_serving_an_export_directory_matches_the_torch_server(tiny_bundle: Path, tmp_path: Path) -> None:
    export_dir = tmp_path / "onnx"
    export_bundle(load_bundle(tiny_bundle), export_dir)
    video = tmp_path / "clip.mp4"
    encode_video(video, ramp(8, 48, 48, seed=3))
    answers = []
    for backend, source, name in (("onnx", export_dir, "run-onnx"), ("torch", tiny_bundle, "run-torch")):
        run = tmp_path / name
        run.mkdir()
        for server in serve(source, run, backend=backend):
            body = classify(server.url, video)
            answers.append((body["class_id"], body["exit_step"], round(float(body["confidence"]), 4)))  # type: ignore[arg-type]
            assert f"{backend} runner" in server.log()
    assert answers[0] == answers[1]
