"""Tracing chosen at start-up: off by default; on, the spans reach a real OTLP/HTTP endpoint (a tiny HTTP server,
loadtest/http/otlp_receiver.py, decoding the protobuf export the SDK's exporter sends); the settings that turn it
on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from loadtest.http.otlp_receiver import OtlpReceiver
from service.startup import StartupError, load_settings
from service.tracing.request import NO_TRACE
from service.tracing.setup import traces_url
from tests.service.conftest import classify_ok, in_process, service_state


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def values(attributes: list[KeyValue]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def test_spans_reach_a_real_otlp_http_endpoint(tiny_bundle: Path, clip: Path, collector: OtlpReceiver) -> None:
    for client in in_process(tiny_bundle, otlp_endpoint=collector.url, replica_name="replica-a"):
        assert service_state(client).tracing.on
        body = classify_ok(client, clip, budget="mid")
    # the lifespan's end shut the tracer provider down: its batch processor exported what was left
    assert collector.received, "the collector received no export"
    assert {(path, kind) for path, kind, _ in collector.received} == {("/v1/traces", "application/x-protobuf")}
    spans, resources = [], []
    for _, _, request in collector.received:
        for resource_spans in request.resource_spans:
            resources.append(values(list(resource_spans.resource.attributes)))
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert {(r["service.name"], r["service.instance.id"]) for r in resources} == {("adafocus", "replica-a")}
    assert sorted(span.name for span in spans) == sorted(
        ["POST /classify", "upload", "decode", "infer", "queue", "glance", "cube", "answer"]
    )
    (root,) = [span for span in spans if span.name == "POST /classify"]
    assert values(list(root.attributes))["adafocus.request_id"] == body["request_id"]
    assert {span.trace_id for span in spans} == {root.trace_id}


def test_tracing_is_off_by_default(tiny_bundle: Path, clip: Path) -> None:
    for client in in_process(tiny_bundle):
        tracing = service_state(client).tracing
        assert not tracing.on
        sampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        assert tracing.begin(sampled, {"method": "POST", "path": "/classify"}, 0.0) is NO_TRACE
        classify_ok(client, clip)


def test_the_endpoint_setting_and_its_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ADAFOCUS_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert load_settings({}).otlp_endpoint is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "video-edge")
    config = load_settings({}).tracing_config("pod-1")
    assert (config.endpoint, config.service_name, config.instance) == ("http://collector:4318", "video-edge", "pod-1")
    monkeypatch.setenv("ADAFOCUS_OTLP_ENDPOINT", "https://otel.example:4318/")  # the project's own name wins
    assert load_settings({}).otlp_endpoint == "https://otel.example:4318/"
    monkeypatch.setenv("ADAFOCUS_OTLP_ENDPOINT", "collector:4318")
    with pytest.raises(StartupError, match=r"^invalid settings: ADAFOCUS_OTLP_ENDPOINT: must be an http:// or https"):
        load_settings({})
    monkeypatch.setenv("ADAFOCUS_OTLP_ENDPOINT", "")  # empty: off
    assert load_settings({}).otlp_endpoint is None


def test_the_traces_url_under_the_base_url() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://gw/otlp/") == "http://gw/otlp/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def test_an_endpoint_without_the_sdk_stops_the_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("ADAFOCUS_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setattr("service.settings.sdk_missing", lambda: True)  # as where the [otel] extra is not installed
    with pytest.raises(StartupError, match=r"ADAFOCUS_OTLP_ENDPOINT: tracing needs the OpenTelemetry SDK: pip install"):
        load_settings({})
    monkeypatch.delenv("ADAFOCUS_OTLP_ENDPOINT")
    assert load_settings({}).otlp_endpoint is None  # tracing off needs no SDK


WITHOUT_SDK = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto"):
    sys.modules[name] = None  # import fails: as where the [otel] extra is not installed
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(bundle=sys.argv[1], device="cpu", decode_workers=1))) as client:
    with open(sys.argv[2], "rb") as fh:
        response = client.post("/classify", files={"video": fh})
print(response.status_code, client.app.state.service.tracing.on)
"""


def test_the_server_runs_without_the_sdk_when_tracing_is_off(tiny_bundle: Path, clip: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAFOCUS_", "OTEL_"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SDK, str(tiny_bundle), str(clip)], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["200", "False"]
