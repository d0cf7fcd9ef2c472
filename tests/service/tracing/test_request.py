"""The spans of /classify requests, exported to the SDK's in-memory exporter by the app in this process (real
uploads, real decoding in the worker processes, the real engine): the span tree of one request, a streamed one,
a failed decode, a client's traceparent continued or left unsampled; and of Open Inference Protocol requests
(``POST /v2/models/{name}/infer``): a file decoded here, N clips of frames decoded by the client, a failed decode."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from model.video import decode_clip
from service.app import create_app
from service.http import oip_tensors as wire
from service.lifecycle import ServiceState
from service.settings import Settings
from tests.service.conftest import TestClient, classify_ok

Traced = tuple[TestClient, InMemorySpanExporter]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
OIP_ROOT = "POST /v2/models/{name}/infer"


@pytest.fixture(scope="module")
def traced(tiny_bundle: Path) -> Iterator[Traced]:
    """The app with tracing on, its spans kept in memory; no OTLP endpoint is involved."""
    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith(("ADAFOCUS_", "OTEL_")):
                env.delenv(key)
        app = create_app(Settings(bundle=tiny_bundle, device="cpu", decode_workers=2, max_batch=1, max_active=1))
    exporter = InMemorySpanExporter()
    state: ServiceState = app.state.service
    state.span_exporter = exporter
    with TestClient(app) as client:
        yield client, exporter


def spans_of(client: TestClient, exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    """The spans exported since the last call, by name (the batch processor flushed first)."""
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    assert state.tracing.flush()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    exporter.clear()
    return by_name


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def check_tree(spans: dict[str, list[ReadableSpan]], cubes: int, root_name: str = "POST /classify") -> ReadableSpan:
    """One request's tree: root -> upload, decode, infer (-> queue, glance, cube x ``cubes``), answer; every
    child inside its parent's time, the stages one after another; the root returned."""
    assert sorted(spans) == sorted([root_name, "upload", "decode", "infer", "queue", "glance", "answer",
                                    *(["cube"] if cubes else [])])
    (root,) = spans[root_name]
    (upload,), (decode,), (infer,), (answer,) = (spans[n] for n in ("upload", "decode", "infer", "answer"))
    assert root.kind == SpanKind.SERVER and root.status.status_code == StatusCode.UNSET
    assert len(spans.get("cube", [])) == cubes
    stages = [upload, decode, infer, answer]
    assert all(parent_of(s) == root.context.span_id for s in stages)
    inner = [*spans["queue"], *spans["glance"], *spans.get("cube", [])]
    assert all(parent_of(s) == infer.context.span_id for s in inner)
    assert {s.context.trace_id for s in [*stages, *inner]} == {root.context.trace_id}
    assert root.start_time == upload.start_time and answer.end_time == root.end_time
    for before, after in itertools.pairwise(stages):
        assert before.end_time == after.start_time
    for s in inner:
        assert infer.start_time <= s.start_time <= s.end_time <= infer.end_time, s.name
    return root


def test_one_request_exports_its_span_tree(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)  # the start-up self-test runs outside any request: nothing of it is traced
    body = classify_ok(client, clip, budget="high")
    spans = spans_of(client, exporter)
    root = check_tree(spans, cubes=3)
    assert root.attributes is not None and spans["decode"][0].attributes is not None
    assert root.attributes["adafocus.request_id"] == body["request_id"]
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["http.route"] == "/classify"
    assert (root.attributes["adafocus.exit_step"], root.attributes["adafocus.budget"]) == (3, "high")
    assert root.attributes["adafocus.gmacs"] == body["gmacs"]
    assert spans["decode"][0].attributes["adafocus.decode.worker_seconds"] == body["timings"]["decode"]  # type: ignore[index]
    (glance,) = spans["glance"]
    steps = [glance, *sorted(spans["cube"], key=lambda s: s.start_time)]
    assert [dict(s.attributes or {}) for s in steps] == [
        {"adafocus.batch_size": 1, "adafocus.step_index": i, "adafocus.exit": False} for i in range(4)
    ]  # `high` never meets a threshold: it leaves after its last cube
    (queue,) = spans["queue"]
    assert queue.end_time == glance.start_time
    assert (queue.end_time - queue.start_time) / 1e9 == pytest.approx(body["timings"]["queue"], abs=1e-6)  # type: ignore[operator, index]


def test_a_streamed_request_has_the_same_tree(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    with clip.open("rb") as fh:
        response = client.post("/classify", files={"video": fh}, data={"stream": "true", "budget": "mid"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
    assert events == ["progress", "progress", "result"]  # the glance, the one cube `mid` runs, the answer
    result = json.loads([line for line in response.text.splitlines() if line.startswith("data: ")][-1][6:])
    spans = spans_of(client, exporter)
    root = check_tree(spans, cubes=1)
    assert root.attributes is not None and root.attributes["adafocus.request_id"] == result["request_id"]
    (cube,) = spans["cube"]
    assert dict(cube.attributes or {}) == {"adafocus.batch_size": 1, "adafocus.step_index": 1, "adafocus.exit": True}


def test_a_failed_decode_ends_its_span_with_the_error_code(traced: Traced) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    response = client.post("/classify", files={"video": ("x.mp4", b"not a video at all")})
    assert response.status_code == 415 and response.json()["code"] == "not_a_video"
    spans = spans_of(client, exporter)
    assert sorted(spans) == ["POST /classify", "decode", "upload"]  # it never reached the engine
    (root,), (decode,), (upload,) = spans["POST /classify"], spans["decode"], spans["upload"]
    for span in (root, decode):
        assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "not_a_video")
        assert span.attributes is not None and span.attributes["adafocus.error.code"] == "not_a_video"
    assert upload.status.status_code == StatusCode.UNSET
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 415
    assert root.attributes["adafocus.request_id"] == response.json()["request_id"]


def test_a_refused_form_field_fails_the_decode_stage(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    response = client.post("/classify", files={"video": clip.read_bytes()}, data={"budget": "no-such-level"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_budget"
    spans = spans_of(client, exporter)
    (root,) = spans["POST /classify"]
    assert (root.status.status_code, root.status.description) == (StatusCode.ERROR, "invalid_budget")


def test_the_clients_traceparent_continues_its_trace(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    classify_ok(client, clip, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}, budget="low")
    spans = spans_of(client, exporter)
    root = check_tree(spans, cubes=0)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and root.parent.is_remote and f"{root.parent.span_id:016x}" == PARENT_ID
    assert {f"{s.context.trace_id:032x}" for group in spans.values() for s in group} == {TRACE_ID}


def test_an_unsampled_traceparent_exports_nothing(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    classify_ok(client, clip, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}, budget="low")
    assert spans_of(client, exporter) == {}


def test_a_malformed_traceparent_starts_a_new_trace(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    classify_ok(client, clip, headers={"traceparent": "00-not-a-trace-01"}, budget="low")
    (root,) = spans_of(client, exporter)["POST /classify"]
    assert root.parent is None and root.context.trace_id != int(TRACE_ID, 16)


def oip_infer(client: TestClient, inputs: list[wire.Output], parameters: dict[str, object],
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    """POST /v2/models/tiny/infer with binary tensors; the status and the answer's JSON head (or error body)."""
    body, header = wire.encode_request(inputs, parameters, True)
    response = client.post("/v2/models/tiny/infer", content=body, headers={wire.HEADER_LENGTH: str(header),
                                                                          **(headers or {})})
    if response.status_code != 200:
        error: dict[str, object] = response.json()
        return response.status_code, error
    head, _ = wire.decode_response(response.content, response.headers.get(wire.HEADER_LENGTH))
    return 200, head


def test_an_oip_request_exports_the_same_tree_and_continues_the_trace(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    video = wire.Output("video", "BYTES", [clip.read_bytes()])
    traceparent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    status, head = oip_infer(client, [video], {"budget": "high"}, traceparent)
    assert status == 200, head
    spans = spans_of(client, exporter)
    root = check_tree(spans, cubes=3, root_name=OIP_ROOT)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and root.parent.is_remote and f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.attributes is not None and spans["decode"][0].attributes is not None
    parameters = head["parameters"]
    assert isinstance(parameters, dict)
    assert root.attributes["adafocus.request_id"] == parameters["request_id"]
    assert root.attributes["http.route"] == "/v2/models/{name}/infer"
    assert (root.attributes["http.response.status_code"], root.attributes["adafocus.exit_step"]) == (200, 3)
    decode = dict(spans["decode"][0].attributes)
    assert (decode["adafocus.clips"], decode["adafocus.decoded_on"], decode["adafocus.decode.frames"]) == (
        1, "server", 4
    )
    assert decode["adafocus.decode.sampling"] == "exact"


def test_n_clips_of_client_frames_trace_every_clip(traced: Traced, clip: Path) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    frames = decode_clip(clip, 4, 32)  # (T, 32, 32, 3)
    batch = np.stack([frames, frames[:, ::-1].copy()])  # (2, T, 32, 32, 3)
    status, head = oip_infer(client, [wire.Output("frames", "UINT8", batch)], {"budget": "high"})
    assert status == 200, head
    spans = spans_of(client, exporter)
    assert {name: len(group) for name, group in spans.items()} == {
        OIP_ROOT: 1, "upload": 1, "decode": 1, "infer": 1, "queue": 2, "glance": 2, "cube": 6, "answer": 1
    }  # `high`: every clip takes all 3 cubes; max_batch 1: a model call per clip and step
    (root,), (decode,), (infer,) = spans[OIP_ROOT], spans["decode"], spans["infer"]
    assert decode.attributes is not None and root.attributes is not None
    assert (decode.attributes["adafocus.clips"], decode.attributes["adafocus.decoded_on"]) == (2, "client")
    assert "adafocus.decode.sampling" not in decode.attributes  # the client decoded: no sampling ran here
    assert tuple(root.attributes["adafocus.exit_step"]) == (3, 3)  # type: ignore[arg-type]
    inner = [*spans["queue"], *spans["glance"], *spans["cube"]]
    assert all(parent_of(s) == infer.context.span_id for s in inner)
    assert all(infer.start_time <= s.start_time <= s.end_time <= infer.end_time for s in inner)


def test_a_failed_oip_decode_ends_its_span_with_the_error_code(traced: Traced) -> None:
    client, exporter = traced
    spans_of(client, exporter)
    status, error = oip_infer(client, [wire.Output("video", "BYTES", [b"not a video at all"])], {})
    assert (status, error["code"]) == (415, "not_a_video")
    spans = spans_of(client, exporter)
    assert sorted(spans) == sorted([OIP_ROOT, "decode", "upload"])
    (root,), (decode,) = spans[OIP_ROOT], spans["decode"]
    for span in (root, decode):
        assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "not_a_video")
    assert root.attributes is not None and root.attributes["adafocus.request_id"] == error["request_id"]
