"""The fleet's budget keeper as a plain object (the Ray actor runs this class): versions, and the budget file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.keeper import BudgetKeeper
from service.budget.control import BudgetSetting, wall_ms
from service.budget.store import BadBudgetFile, BudgetFileReadOnly
from service.schemas import BudgetUpdate


def test_without_a_file_it_starts_on_the_start_up_setting_and_counts_up() -> None:
    before = wall_ms()
    keeper = BudgetKeeper(BudgetUpdate(level="low"), None)
    first = keeper.get()
    assert first.update == BudgetUpdate(level="low") and first.version >= before
    second = keeper.put(BudgetUpdate(mode="auto", p99_s=0.2))
    assert second.version > first.version and keeper.get() == second


def test_with_a_file_it_reads_writes_and_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text('{"level": "mid", "version": 5}')
    keeper = BudgetKeeper(BudgetUpdate(level="low"), path)
    assert (keeper.get().update.level, keeper.get().version) == ("mid", 5)  # the file wins
    put = keeper.put(BudgetUpdate(level="high"))
    assert json.loads(path.read_text()) == {"level": "high", "version": put.version}
    path.write_text(json.dumps({"level": "low", "version": put.version + 1}))  # an operator's edit
    assert (keeper.get().update.level, keeper.get().version) == ("low", put.version + 1)
    path.write_text('{"level": ')  # a broken edit: ignored
    assert keeper.get().update.level == "low"


def test_a_bad_file_stops_the_fleet_and_an_unwritable_one_refuses_puts(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text('{"level": "mid", "gmacs": 1}')
    with pytest.raises(BadBudgetFile):
        BudgetKeeper(BudgetUpdate(mode="manual"), path)
    folder = tmp_path / "gone"
    folder.mkdir()
    keeper = BudgetKeeper(BudgetUpdate(mode="manual"), folder / "budget.json")
    folder.rmdir()  # as good as read-only, for root too
    with pytest.raises(BudgetFileReadOnly):
        keeper.put(BudgetUpdate(level="mid"))
    assert keeper.get().update == BudgetUpdate(mode="manual")


def test_offer_keeps_the_higher_version() -> None:
    keeper = BudgetKeeper(BudgetUpdate(mode="manual"), None)
    start = keeper.get()
    older = BudgetSetting(BudgetUpdate(level="low"), start.version - 1)
    assert keeper.offer(older) == start  # a replica behind the keeper changes nothing
    newer = BudgetSetting(BudgetUpdate(level="mid"), start.version + 1)
    assert keeper.offer(newer) == newer and keeper.get() == newer
    put = keeper.put(BudgetUpdate(level="high"))
    assert put.version > newer.version
