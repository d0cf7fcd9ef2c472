"""Real subprocesses for the integration tests: a Prometheus server on a free local port, and HTTP polling helpers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loadtest.http.server_process import free_port

T = TypeVar("T")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def wait_for(
    check: Callable[[], T | None], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> T:
    """Poll ``check`` every 0.2 s until it returns a value other than None (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            value = check()
        except (OSError, urllib.error.URLError):
            value = None
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def running(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` with stdout+stderr in ``log``; terminate it (then kill) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@dataclass(frozen=True)
class Prometheus:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API (/api/v1/query): the vector's samples."""
        status, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", payload
        return list(payload["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.url}/api/v1/targets")
        assert status == 200
        return list(json.loads(body)["data"]["activeTargets"])


def scrape_config(target: str, rule_file: Path | None, interval: str = "1s") -> str:
    rules = f"rule_files:\n  - {json.dumps(str(rule_file))}\n" if rule_file else ""
    return (
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n{rules}"
        "scrape_configs:\n  - job_name: adafocus\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: [{json.dumps(target)}]\n"
    )


@contextmanager
def prometheus(binary: str, workdir: Path, target: str, rule_file: Path | None = None) -> Iterator[Prometheus]:
    """A real Prometheus scraping ``target`` (host:port) every second, with storage in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(target, rule_file))
    port = free_port()
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running(args, workdir / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: True if http_get(f"{url}/-/ready")[0] == 200 else None, 60, "Prometheus /-/ready", proc)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{(workdir / 'prometheus.log').read_text()[-3000:]}") from err
        yield Prometheus(url, proc)
