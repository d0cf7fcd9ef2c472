"""A local Ray cluster running the fleet (2 replicas of the tiny model on this CPU) for a module's tests: small
(4 logical CPUs, no dashboard, an 80 MB object store), shut down by the fixture's finaliser. Skipped, saying so,
when Ray is not installed (CI installs it: `make install` takes the `ray` extra).

Two fleets, one per module (each module gets its own cluster, so the keeper one module kills is not another's):
``fleet`` polls the keeper once a minute, so a budget change that reaches every replica within a second got there
by the push; ``polling_fleet`` polls every 0.25 s, for what only the poll does (offering a restarted keeper the
replicas' setting)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make install does)")
serve = pytest.importorskip("ray.serve")

from fleet.config import APP_NAME, FleetConfig  # noqa: E402  (after the skip: these import Ray)
from fleet.replica import fleet_app  # noqa: E402
from service.decode.pool import self_test_video  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.service.conftest import OPERATOR_TOKEN, free_port, make_bundle  # noqa: E402

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass(frozen=True)
class Fleet:
    url: str
    video: bytes


def put_budget(fleet: Fleet, body: dict[str, Any]) -> dict[str, Any]:
    """PUT /budget on the fleet (200 asserted); the answer."""
    put = httpx.put(f"{fleet.url}/budget", json=body, headers=AUTH, timeout=30)
    assert put.status_code == 200, put.text
    answer: dict[str, Any] = put.json()
    return answer


def replica_budgets(fleet: Fleet) -> list[dict[str, Any]]:
    """GET /budget's ``replicas``: every replica's budget."""
    got = httpx.get(f"{fleet.url}/budget", timeout=30)
    assert got.status_code == 200
    replicas: list[dict[str, Any]] = got.json()["replicas"]
    return replicas


def fleet_settings(bundle: Path, **values: object) -> Settings:
    """The replicas' settings: small CPU batches, one decoder each; the environment's ADAFOCUS_* ignored."""
    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith("ADAFOCUS_"):
                env.delenv(key)
        return Settings(
            bundle=bundle, device="cpu", decode_workers=1, torch_threads=1, max_batch=4, max_active=4, max_queue=32,
            operator_token=OPERATOR_TOKEN, **values,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[int]:
    """A local Ray cluster with Serve's HTTP proxy on a free port (the port)."""
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(port: int, tmp: Path, poll_s: float) -> Fleet:
    bundle = make_bundle(tmp / "tiny")
    video = self_test_video(tmp, 4, 32).read_bytes()
    config = FleetConfig(replicas=2, num_cpus=1, poll_s=poll_s)
    serve.run(fleet_app(fleet_settings(bundle), config), name=APP_NAME, route_prefix="/")
    return Fleet(f"http://127.0.0.1:{port}", video)


@pytest.fixture(scope="module")
def fleet(ray_cluster: int, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Replicas that poll the keeper once a minute: within a test, only the push spreads a budget."""
    return deploy(ray_cluster, tmp_path_factory.mktemp("fleet"), poll_s=60.0)


@pytest.fixture(scope="module")
def polling_fleet(ray_cluster: int, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Replicas that poll the keeper every 0.25 s."""
    return deploy(ray_cluster, tmp_path_factory.mktemp("fleet"), poll_s=0.25)
