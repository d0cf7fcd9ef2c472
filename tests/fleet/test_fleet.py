"""The fleet on a local Ray cluster, end to end: one port, two replicas, one budget."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.config import KEEPER_NAME, KEEPER_NAMESPACE
from service.budget.control import BudgetSetting
from service.schemas import BudgetUpdate
from tests.fleet.conftest import AUTH, Fleet, ray, replica_budgets
from tests.service.conftest import wait_until

SPREAD_S = 1.0  # a budget change must reach every replica within this (by the push: the fleet polls once a minute)


def classify_many(fleet: Fleet, count: int) -> list[dict[str, Any]]:
    """``count`` concurrent /classify answers (200 each), with the X-Replica header checked against the body."""

    def one(_: int) -> dict[str, Any]:
        upload = {"video": ("clip.mp4", fleet.video, "video/mp4")}
        answer = httpx.post(f"{fleet.url}/classify", files=upload, timeout=60)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert answer.headers["X-Replica"] == body["replica"]
        return body

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def answers_from(fleet: Fleet, replicas: set[str], rounds: int = 20) -> list[dict[str, Any]]:
    """Answers until every one of ``replicas`` has answered at least once (Ray routes at random between two)."""
    answers: list[dict[str, Any]] = []
    for _ in range(rounds):
        answers += classify_many(fleet, 8)
        if replicas <= {a["replica"] for a in answers}:
            return answers
    raise AssertionError(f"replicas {replicas} never all answered: {sorted({a['replica'] for a in answers})}")


def test_two_replicas_answer_through_one_port(fleet: Fleet) -> None:
    replicas = replica_budgets(fleet)
    names = {r["replica"] for r in replicas}
    assert len(names) == 2
    assert len({r["setting_version"] for r in replicas}) == 1  # one budget
    answers = answers_from(fleet, names)
    assert {a["replica"] for a in answers} == names


def test_metrics_name_every_replica(fleet: Fleet) -> None:
    names = {r["replica"] for r in replica_budgets(fleet)}
    text = httpx.get(f"{fleet.url}/metrics", timeout=30).text
    ready = {s.labels["replica"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "adafocus_ready"}
    assert ready == {name: 1.0 for name in names}


def test_one_budget_switch_reaches_every_replica_within_a_second(fleet: Fleet) -> None:
    before = replica_budgets(fleet)
    start = time.monotonic()
    put = httpx.put(f"{fleet.url}/budget", json={"level": "low"}, headers=AUTH, timeout=30)
    assert put.status_code == 200, put.text
    version = put.json()["version"]
    assert version > before[0]["setting_version"] and put.json()["name"] == "low"
    wait_until(
        lambda: {(r["name"], r["setting_version"]) for r in replica_budgets(fleet)} == {("low", version)},
        10, "every replica to report the new budget",
    )
    spread = time.monotonic() - start
    assert spread <= SPREAD_S, f"the change took {spread:.2f} s to reach every replica"
    answers = answers_from(fleet, {r["replica"] for r in before})  # every answer after the switch, both replicas
    assert {(a["budget"], a["budget_version"]) for a in answers} == {("low", version)}


def test_a_bare_manual_put_is_recorded_as_the_level_it_keeps(fleet: Fleet) -> None:
    level = replica_budgets(fleet)[0]["name"]
    put = httpx.put(f"{fleet.url}/budget", json={"mode": "manual"}, headers=AUTH, timeout=30)
    assert put.status_code == 200, put.text
    keeper = ray.get_actor(KEEPER_NAME, namespace=KEEPER_NAMESPACE)
    recorded = ray.get(keeper.get.remote(), timeout=30)
    assert recorded == BudgetSetting(BudgetUpdate(level=level), put.json()["setting_version"])
    assert {(r["name"], r["setting_version"]) for r in replica_budgets(fleet)} == {(level, recorded.version)}


def test_an_invalid_budget_is_refused_before_the_fleet_records_it(fleet: Fleet) -> None:
    before = replica_budgets(fleet)
    refused = httpx.put(f"{fleet.url}/budget", json={"level": "nope"}, headers=AUTH, timeout=30)
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_budget")
    assert replica_budgets(fleet) == before


def test_a_killed_replica_is_replaced_with_the_current_budget(fleet: Fleet) -> None:
    put = httpx.put(f"{fleet.url}/budget", json={"level": "mid"}, headers=AUTH, timeout=30)
    assert put.status_code == 200
    version = put.json()["version"]
    before = {r["replica"] for r in replica_budgets(fleet)}
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "AdaFocusReplica" in a["name"]]
    assert len(actors) == 2
    victim = actors[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    killed = next(name for name in before if name in victim["name"])

    def replaced() -> bool:
        now = replica_budgets(fleet)
        return len(now) == 2 and killed not in {r["replica"] for r in now}

    wait_until(replaced, 120, "the killed replica's replacement to be ready")
    now = replica_budgets(fleet)
    assert {(r["name"], r["setting_version"]) for r in now} == {("mid", version)}
    newcomer = {r["replica"] for r in now} - before
    assert len(newcomer) == 1
    answers = answers_from(fleet, newcomer)
    assert {(a["budget"], a["budget_version"]) for a in answers if a["replica"] in newcomer} == {("mid", version)}


@pytest.fixture(autouse=True)
def _nothing_left_in_flight(fleet: Fleet) -> None:
    """Every test starts with the fleet answering."""
    assert httpx.get(f"{fleet.url}/readyz", timeout=30).status_code == 200
