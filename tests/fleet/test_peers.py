"""``RayPeers`` when a broadcast fails as a whole, and the routes that then answer with this replica's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import DeploymentUnavailableError

from fleet.replica import RayPeers
from service.app import create_app
from service.budget.control import BudgetSetting
from service.schemas import BudgetUpdate, ReplicaBudget
from tests.fleet.conftest import fleet_settings
from tests.service.conftest import make_bundle


class FailingBroadcast:
    """A ``DeploymentHandle`` whose broadcast raises ``error`` when its results are read."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[str] = []

    def broadcast(self, method: str, *args: Any) -> FailingBroadcast:
        self.calls.append(method)
        return self

    def results(self, timeout_s: float, return_exceptions: bool) -> list[Any]:
        raise self.error


class NoPeers:
    """Peers that never answer (what ``RayPeers`` gives when its broadcast fails)."""

    def budgets(self) -> list[ReplicaBudget]:
        return []

    def metrics(self) -> bytes:
        return b""


ERRORS = [
    TimeoutError("Timed out waiting for broadcast results."),
    DeploymentUnavailableError(DeploymentID("AdaFocusReplica", "adafocus")),
]


@pytest.mark.parametrize("error", ERRORS, ids=["timeout", "unavailable"])
def test_a_failed_broadcast_gives_nothing_rather_than_raising(error: Exception) -> None:
    handle = FailingBroadcast(error)
    peers = RayPeers(handle)  # type: ignore[arg-type]
    peers.push(BudgetSetting(BudgetUpdate(level="low"), 7))
    assert (peers.budgets(), peers.metrics()) == ([], b"")
    assert handle.calls == ["apply_budget", "replica_budget", "metric_families"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    bundle = make_bundle(tmp_path_factory.mktemp("b") / "tiny")
    settings = fleet_settings(bundle)
    with TestClient(create_app(settings, peers=NoPeers(), replica="r-1")) as client:
        yield client


def test_budget_and_metrics_fall_back_to_this_replica(replica: TestClient) -> None:
    got = replica.get("/budget")
    assert got.status_code == 200
    body = got.json()
    own = {"replica": "r-1", "name": body["name"], "version": body["version"], "setting_version": body["version"]}
    assert body["replicas"] == [own]
    metrics = replica.get("/metrics")
    assert metrics.status_code == 200
    ready = [(s.labels, s.value) for f in text_string_to_metric_families(metrics.text) for s in f.samples
             if s.name == "adafocus_ready"]
    assert ready == [({"replica": "r-1"}, 1.0)]
