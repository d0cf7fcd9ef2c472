"""The Python client (sync in-process through the TestClient, async and `adafocus classify` against a real server),
and what `adafocus serve` says before it loads anything: bad settings in one line naming the flag or variable,
a busy port; plus the clear messages for the usual mistakes (a file in the wrong form field, a non-JSON budget)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import OPERATOR_TOKEN, Server, serve

ADAFOCUS = str(Path(sys.executable).parent / "adafocus")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tiny_bundle, tmp_path_factory.mktemp("client"), operator_token=OPERATOR_TOKEN)


def run_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
    environ.update(env)
    return subprocess.run([ADAFOCUS, "serve", *args], capture_output=True, text=True, timeout=60, env=environ)


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            (),
            {"ADAFOCUS_PORT": "abc"},
            "invalid settings: ADAFOCUS_PORT: Input should be a valid integer, unable to parse string as an integer",
        ),
        (("--port", "70000"), {}, "invalid settings: --port: Input should be less than or equal to 65535"),
        (
            (),
            {"ADAFOCUS_MAX_BATCH": "0", "ADAFOCUS_LOG_FORMAT": "xml"},
            "invalid settings: ADAFOCUS_MAX_BATCH: Input should be greater than or equal to 1; "
            "ADAFOCUS_LOG_FORMAT: Input should be 'text' or 'json'",
        ),
        (("--bundle", "/nonexistent"), {}, "invalid settings: --bundle=/nonexistent is not a directory"),
        (
            (),
            {"ADAFOCUS_OPERATOR_TOKEN": "short-secret"},
            "invalid settings: ADAFOCUS_OPERATOR_TOKEN: ADAFOCUS_OPERATOR_TOKEN must have at least 16 characters",
        ),
    ],
)
def test_bad_settings_exit_2_with_one_line(args: tuple[str, ...], env: dict[str, str], line: str) -> None:
    run = run_serve(*args, **env)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"ERROR service.commands: {line}"), run.stderr
    assert "short-secret" not in run.stderr


def test_a_busy_port_is_reported_before_the_model_loads(tiny_bundle: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_serve("--host", "127.0.0.1", "--port", str(port), "--bundle", str(tiny_bundle))
    assert run.returncode == 2
    assert run.stderr.strip().endswith(f"cannot listen on 127.0.0.1:{port} (--host / --port): Address already in use")
    assert "loaded bundle" not in run.stderr
