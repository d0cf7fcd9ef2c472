"""The budget keeper as the Ray actor it runs as: a restart (Ray re-runs ``__init__``) keeps the operator's budget,
and a keeper setting that does not fit the bundle lets the replica start on its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from fleet.config import KEEPER_NAME, KEEPER_NAMESPACE
from fleet.keeper import BudgetKeeper
from fleet.replica import FleetBudget
from service.budget.control import BudgetControl, BudgetSetting
from service.engine.engine import Engine
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate
from tests.fleet.conftest import Fleet, put_budget, ray, replica_budgets
from tests.service.conftest import wait_until
from tests.service.engine.tiny import build_world, make_engine


def keeper_pid(keeper: Any) -> int | None:
    """The keeper's process id; None while it is dead or restarting."""
    try:
        pid: int = ray.get(keeper.__ray_call__.remote(lambda _: os.getpid()), timeout=5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    return pid


def keeper_setting(keeper: Any) -> BudgetSetting | None:
    try:
        setting: BudgetSetting = ray.get(keeper.get.remote(), timeout=5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    return setting


def test_a_restarted_keeper_keeps_the_last_put_on_every_replica(polling_fleet: Fleet) -> None:
    put = put_budget(polling_fleet, {"level": "mid"})
    wait_until(lambda: {r["setting_version"] for r in replica_budgets(polling_fleet)} == {put["setting_version"]},
               10, "every replica to apply the PUT")
    before = replica_budgets(polling_fleet)
    keeper = ray.get_actor(KEEPER_NAME, namespace=KEEPER_NAMESPACE)
    old_pid = keeper_pid(keeper)
    ray.kill(keeper, no_restart=False)  # Ray restarts it: __init__ runs again
    wait_until(lambda: keeper_pid(keeper) not in (None, old_pid), 60, "the keeper to restart")
    # the restarted keeper starts at version 0; a replica's poll offers it the setting it runs
    wait_until(lambda: keeper_setting(keeper) == BudgetSetting(BudgetUpdate(level="mid"), put["setting_version"]),
               30, "a replica to offer the restarted keeper its setting")
    assert replica_budgets(polling_fleet) == before  # no replica applied anything else meanwhile
    after = put_budget(polling_fleet, {"level": "low"})
    assert after["setting_version"] > put["setting_version"]


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine, _ = make_engine(build_world())
    yield engine
    engine.shutdown(drain=False)


def test_a_keeper_setting_the_bundle_lacks_falls_back_to_the_start_up_setting(ray_cluster: int, engine: Engine) -> None:
    keeper = ray.remote(BudgetKeeper).remote(BudgetUpdate(level="nope"), None)  # an older bundle's level
    applied: list[BudgetState] = []
    store = FleetBudget(keeper, BudgetUpdate(mode="manual"), 3600, push=lambda _: None)
    try:
        state = store.start(BudgetControl(engine.budget, 0.5, applied.append))
    finally:
        store.stop()
    assert (state.name, applied) == ("fast", [state])  # the bundle's default: ready, not a start-up error
    assert ray.get(keeper.get.remote()) == BudgetSetting(BudgetUpdate(level="fast"), state.setting_version)
    ray.kill(keeper)
