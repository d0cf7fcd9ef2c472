"""The compose stack's optional OpenTelemetry Collector (profile `otel`), checked with the real docker-compose: the
server's image has the [otel] extra, its endpoint comes from the host's ADAFOCUS_OTLP_ENDPOINT (empty: tracing
off), and the collector receives OTLP/HTTP on the port that endpoint names, in a traces pipeline."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings
from tests.deploy.conftest import require_tool


def compose(root: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [require_tool("docker-compose"), "-f", "docker-compose.yml", *extra, "config"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_tracing_is_off_unless_the_host_sets_the_endpoint(root: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    for name in ("server", "server-cpu"):
        service = compose(root, env)["services"][name]
        assert service["build"]["args"]["EXTRAS"] == "otel"
        endpoint = service["environment"]["ADAFOCUS_OTLP_ENDPOINT"]
        assert endpoint == "" and Settings(otlp_endpoint=endpoint).otlp_endpoint is None  # empty: off


def test_the_otel_profile_starts_a_collector_the_server_reaches(root: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ADAFOCUS_OTLP_ENDPOINT": "http://otel-collector:4318"}
    services = compose(root, env, "--profile", "otel")["services"]
    collector = services["otel-collector"]
    assert collector["profiles"] == ["otel"]
    assert services["server"]["environment"]["ADAFOCUS_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    (mount,) = collector["volumes"]
    source, target = mount.split(":")[:2] if isinstance(mount, str) else (mount["source"], mount["target"])
    assert collector["command"] == [f"--config={target}"]
    config = yaml.safe_load(Path(source).read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    published = {str(p.get("target") if isinstance(p, dict) else p).split(":")[-1] for p in collector["ports"]}
    assert "4318" in published
