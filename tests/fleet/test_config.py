"""The fleet's deployment options and its `serve run` / KubeRay config, checked against Ray Serve's own schema."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet import commands
from fleet.config import (
    DECODE_DEPLOYMENT,
    DEPLOYMENT,
    FleetConfig,
    decode_options,
    deployment_options,
    max_ongoing_requests,
    serve_config,
)
from service.cli import main
from service.settings import Settings
from tests.fleet.conftest import fleet_settings, ray, serve
from tests.service.conftest import make_bundle

schema = pytest.importorskip("ray.serve.schema")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fleet_settings(make_bundle(tmp_path_factory.mktemp("b") / "tiny"))


def test_a_replica_takes_a_full_engine_and_its_queue(settings: Settings) -> None:
    options = deployment_options(FleetConfig(replicas=3), settings)
    assert options["max_ongoing_requests"] == max_ongoing_requests(settings) > settings.max_active + settings.max_queue
    assert (options["num_replicas"], options["ray_actor_options"]) == (3, {"num_cpus": 1.0, "num_gpus": 0.0})


def test_autoscaling_targets_a_full_engine_per_replica(settings: Settings) -> None:
    options = deployment_options(FleetConfig(replicas=2, max_replicas=6, num_gpus=1), settings)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": settings.max_active
    }
    assert options["ray_actor_options"]["num_gpus"] == 1


def test_the_serve_config_is_a_valid_serve_deploy_document(settings: Settings) -> None:
    document = serve_config(FleetConfig(replicas=2, max_replicas=4, num_gpus=1), settings, port=8000)
    parsed = schema.ServeDeploySchema.model_validate(document)  # what `serve run` / KubeRay's serveConfigV2 read
    (app,) = parsed.applications
    assert (app.import_path, app.route_prefix) == ("fleet.replica:build", "/")
    assert FleetConfig(**app.args) == FleetConfig(replicas=2, max_replicas=4, num_gpus=1)


def test_a_bad_fleet_is_refused() -> None:
    with pytest.raises(ValueError, match="max_replicas"):
        FleetConfig(replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="max_decode_replicas"):
        FleetConfig(decode_replicas=3, max_decode_replicas=2)
    with pytest.raises(ValueError, match="max_decode_replicas"):
        FleetConfig(decode_replicas=0, max_decode_replicas=2)  # autoscaling a tier that is not there


def test_the_decode_tier_is_cpu_only_and_takes_what_its_pool_queues(settings: Settings) -> None:
    options = decode_options(FleetConfig(decode_replicas=3, decode_num_cpus=2, num_gpus=1), settings)
    assert options == {
        "name": DECODE_DEPLOYMENT, "max_ongoing_requests": settings.decode_queue,
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.0}, "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": settings.max_decode_s, "num_replicas": 3,
    }


def test_the_decode_tier_autoscales_on_its_own_queue(settings: Settings) -> None:
    config = FleetConfig(replicas=2, max_replicas=4, decode_replicas=2, max_decode_replicas=16)
    options = decode_options(config, settings)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 16, "target_ongoing_requests": 2 * settings.decode_workers
    }
    assert deployment_options(config, settings)["autoscaling_config"]["max_replicas"] == 4  # the model tier's own


def test_the_serve_config_has_the_decode_deployment(settings: Settings) -> None:
    config = FleetConfig(replicas=2, num_gpus=1, decode_replicas=4, max_decode_replicas=8, decode_num_cpus=2)
    parsed = schema.ServeDeploySchema.model_validate(serve_config(config, settings, port=8000))
    (app,) = parsed.applications
    assert [d.name for d in app.deployments] == [DEPLOYMENT, DECODE_DEPLOYMENT]
    assert (app.deployments[1].ray_actor_options.num_cpus, app.deployments[1].ray_actor_options.num_gpus) == (2, 0)
    assert FleetConfig(**app.args) == config
    plain = serve_config(FleetConfig(replicas=2), settings, port=8000)
    assert [d["name"] for d in plain["applications"][0]["deployments"]] == [DEPLOYMENT]  # no tier: as before


def test_serve_ray_prints_the_config_it_would_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("ADAFOCUS_")]:
        monkeypatch.delenv(key)
    bundle = make_bundle(tmp_path / "tiny")
    args = ["serve-ray", "--replicas", "2", "--max-replicas", "5", "--num-gpus", "1", "--port", "8100"]
    tier = ["--decode-replicas", "3", "--max-decode-replicas", "6", "--decode-num-cpus", "2"]
    assert main([*args, *tier, "--bundle", str(bundle), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    settings = Settings(bundle=bundle, port=8100)
    fleet = FleetConfig(
        replicas=2, max_replicas=5, num_gpus=1, decode_replicas=3, max_decode_replicas=6, decode_num_cpus=2
    )
    assert printed == serve_config(fleet, settings, 8100)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (None, ["init local", "run adafocus", "serve.shutdown", "ray.shutdown"]),  # its own cluster: all of Serve
        ("auto", ["init auto", "run adafocus", "serve.delete adafocus", "ray.shutdown"]),  # shared: its app alone
    ],
)
def test_serve_ray_takes_down_only_what_it_started(
    address: str | None, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("ADAFOCUS_")]:
        monkeypatch.delenv(key)
    calls: list[str] = []
    handlers: dict[int, Callable[..., Any]] = {}

    def run(app: Any, name: str, route_prefix: str) -> None:
        calls.append(f"run {name}")
        handlers[signal.SIGTERM](signal.SIGTERM, None)  # the operator stops it once it is up

    monkeypatch.setattr(commands.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(ray, "init", lambda address, **_: calls.append(f"init {address}"))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(serve, "start", lambda **_: None)
    monkeypatch.setattr(serve, "run", run)
    monkeypatch.setattr(serve, "delete", lambda name: calls.append(f"serve.delete {name}"))
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    args = ["serve-ray", "--bundle", str(make_bundle(tmp_path / "tiny"))]
    assert main([*args, *(["--address", address] if address else [])]) == 0
    assert calls == expected

