"""In-process (TestClient): what a /classify answer explains (steps, frames), the Open Inference Protocol health and
metadata routes, request IDs in headers, bodies and log lines, JSON logs, the offline /docs and the web page files."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.logs import JsonFormatter, RequestIdFilter, TextFormatter
from tests.service.conftest import OPERATOR_TOKEN, TestClient, classify_ok, in_process

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def app(tiny_bundle: Path) -> Iterator[TestClient]:
    yield from in_process(tiny_bundle, operator_token=OPERATOR_TOKEN)


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


def test_request_id_is_echoed_or_made_up(app: TestClient, clip: Path) -> None:
    body = classify_ok(app, clip, headers={"X-Request-ID": "client-42.a:b_c"})
    assert body["request_id"] == "client-42.a:b_c"
    made_up = classify_ok(app, clip)["request_id"]
    assert isinstance(made_up, str) and HEX32.fullmatch(made_up)
    for unsafe in ("two words", "x" * 129, "line\\nbreak", ""):  # could forge or bloat log lines: replaced
        response = app.get("/healthz", headers={"X-Request-ID": unsafe})
        assert HEX32.fullmatch(response.headers["x-request-id"]), unsafe
    assert app.get("/healthz", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"


def test_error_bodies_carry_the_request_id(app: TestClient) -> None:
    response = app.post("/classify", files={"video": ("a.mp4", b"not a video")}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 415
    assert (response.json()["code"], response.json()["request_id"]) == ("not_a_video", "r-1")
    assert response.headers["x-request-id"] == "r-1"


def test_every_log_line_of_a_request_carries_its_id(app: TestClient, clip: Path, log_lines: io.StringIO) -> None:
    classify_ok(app, clip, headers={"X-Request-ID": "trace-me"})
    app.get("/healthz", headers={"X-Request-ID": "other"})
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    mine = [r for r in records if r["request_id"] == "trace-me"]
    assert {r["logger"] for r in mine} >= {"service.http.routes", "service.access"}
    access = [r for r in records if r["logger"] == "service.access"]
    assert [(r["request_id"], r["method"], r["path"], r["status"]) for r in access] == [
        ("trace-me", "POST", "/classify", 200),
        ("other", "GET", "/healthz", 200),
    ]
    assert all(r["duration_ms"] >= 0 and r["level"] == "INFO" and r["ts"].endswith("+00:00") for r in access)


def test_the_engines_log_lines_about_a_request_carry_its_id(
    app: TestClient, clip: Path, log_lines: io.StringIO
) -> None:
    """The engine thread runs outside the request's context; its lines about the request carry the client's ID."""
    body = classify_ok(app, clip, headers={"X-Request-ID": "engine-trace-1"})
    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    engine = [r for r in records if r["logger"] == "service.engine.engine"]
    assert [(r["request_id"], r["level"]) for r in engine] == [("engine-trace-1", "DEBUG")]  # one line, not INFO
    answered = f"answered at exit {body['exit_step']} ({body['exit_reason']}) under budget {body['budget']} "
    assert engine[0]["message"].startswith(answered + f"version {body['budget_version']} (engine key ")


def test_the_operator_token_is_never_logged(app: TestClient, log_lines: io.StringIO) -> None:
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert app.put("/budget?token=x", json={"level": "high"}, headers=auth).status_code == 200
    assert (
        app.put(
            "/budget", json={"level": "high"}, headers={"Authorization": "Bearer wrong-token-0123456789"}
        ).status_code
        == 403
    )
    text = log_lines.getvalue()
    assert "/budget" in text and "token=" not in text  # the path, never the query string
    assert OPERATOR_TOKEN not in text and "wrong-token" not in text and "Bearer" not in text


def test_text_format_shows_the_request_id_only_inside_a_request() -> None:
    record = logging.LogRecord("service.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.request_id = "abc"
    assert TextFormatter().format(record).endswith(" INFO service.x [abc]: hello you")
    record.request_id = "-"
    assert TextFormatter().format(record).endswith(" INFO service.x: hello you")
