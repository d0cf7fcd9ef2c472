"""The one way a budget setting reaches the engine (service/budget/control.py): the update's shapes validated once,
the version rule, newest-first settings, and a bare ``mode: manual`` pinned to the level it keeps."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from model.budgets import BudgetError
from service.budget.control import BudgetControl, BudgetSetting, wall_ms
from service.engine.active_budget import next_version
from service.engine.autobudget import AutoBudgetConfig
from service.engine.engine import Engine
from service.engine.types import BudgetState
from service.schemas import BudgetUpdate
from tests.service.engine.tiny import World, build_world, make_engine


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture
def engine(world: World) -> Iterator[Engine]:
    engine, _ = make_engine(world)
    yield engine
    engine.shutdown(drain=False)


REFUSED = [
    (BudgetUpdate(gmacs=0.0001), "no level fits"),
    (BudgetUpdate(thresholds=[0.1, 0.2]), "expected 4 thresholds"),
    (BudgetUpdate(thresholds=[0.1, float("nan"), -1.0, 0.0]), "finite and non-negative"),
    (BudgetUpdate(level="turbo"), "unknown budget level"),
    (BudgetUpdate(mode="auto", p99_s=1.0, min_level="turbo"), "unknown budget level"),
    (BudgetUpdate(mode="auto"), "no default objective"),  # this control has no default_p99_s
]


def test_every_shape_of_update_and_its_validation(engine: Engine) -> None:
    control = BudgetControl(engine.budget)
    assert control.current().name == "fast" and control.current().version == 1
    assert control.apply(BudgetUpdate(gmacs=0.00045)).name == "mid"
    assert control.apply(BudgetUpdate(gmacs=1.0)).name == "full"
    state = control.apply(BudgetUpdate(thresholds=[0.5, 0.5, 0.5, 0.0]))
    assert (state.name, state.thresholds, state.version) == ("custom", (0.5, 0.5, 0.5, 0.0), 4)
    for update, message in REFUSED:
        with pytest.raises(BudgetError, match=message):
            control.validate(update)
        with pytest.raises(BudgetError, match=message):
            control.apply(update)
    control.validate(BudgetUpdate(level="mid"))  # accepted, not applied
    assert control.current() is state  # failed swaps (and a validation) change nothing


def test_a_given_version_below_the_engines_never_takes_the_version_back(engine: Engine) -> None:
    control = BudgetControl(engine.budget)
    control.apply(BudgetUpdate(level="mid"))
    assert control.apply(BudgetUpdate(level="full")).version == 3  # as the automatic budget's own changes count up
    state = control.apply(BudgetUpdate(level="fast"), version=2)  # e.g. a budget file with "version": 2
    assert (state.name, state.version, state.setting_version) == ("fast", 4, 2)
    state = control.apply(BudgetUpdate(level="mid"), version=40)
    assert (state.version, state.setting_version) == (40, 40)  # a higher one is taken as given


def test_the_version_rule() -> None:
    assert next_version(7) == 8  # the engine's own change
    assert next_version(5, 1_000) == 1_000  # a new setting: the wall clock
    assert next_version(2_000, 1_000) == 2_001  # a clock behind the last version: still after it
    before = wall_ms()
    fresh = BudgetSetting.new(BudgetUpdate(level="mid"))
    assert fresh.update == BudgetUpdate(level="mid") and before <= fresh.version <= wall_ms()
    assert BudgetSetting.new(BudgetUpdate(level="mid"), after=10**15).version == 10**15 + 1


def test_a_setting_applies_only_when_newer_unless_forced(engine: Engine) -> None:
    applied: list[BudgetState] = []
    control = BudgetControl(engine.budget, on_apply=applied.append)
    first = control.apply_setting(BudgetSetting(BudgetUpdate(level="mid"), 10))
    assert (first.name, first.version, first.setting_version) == ("mid", 10, 10)
    assert control.apply_setting(BudgetSetting(BudgetUpdate(level="full"), 10)) is first  # the same again: skipped
    assert control.apply_setting(BudgetSetting(BudgetUpdate(level="full"), 9)) is first  # older: skipped
    forced = control.apply_setting(BudgetSetting(BudgetUpdate(level="full"), 9), force=True)
    assert (forced.name, forced.version, forced.setting_version) == ("full", 11, 9)
    assert applied == [first, forced]


def test_mode_auto_with_the_default_objective_then_a_bare_manual_keeps_its_level(engine: Engine) -> None:
    control = BudgetControl(engine.budget, default_p99_s=0.7)
    state = control.apply(BudgetUpdate(mode="auto", min_level="mid"))  # "fast" is below the floor: from the top
    assert (state.name, state.version, state.auto) == ("full", 2, AutoBudgetConfig(slo_p99_s=0.7, min_level="mid"))
    controller = engine.budget.auto_controller
    assert controller is not None and controller.names == ("mid", "full")
    manual = control.apply(BudgetUpdate(mode="manual"))
    assert (manual.name, manual.version, manual.auto, engine.budget.auto_controller) == ("full", 3, None, None)


def test_a_bare_manual_update_pins_the_active_level_or_its_thresholds(engine: Engine) -> None:
    control = BudgetControl(engine.budget)
    control.apply(BudgetUpdate(mode="auto", p99_s=5.0))
    assert control.pinned(BudgetUpdate(mode="manual")) == BudgetUpdate(level="fast")
    assert control.pinned(BudgetUpdate(level="mid")) == BudgetUpdate(level="mid")
    thresholds = [0.5] * engine.num_exits
    control.apply(BudgetUpdate(thresholds=thresholds))
    assert control.pinned(BudgetUpdate(mode="manual")) == BudgetUpdate(thresholds=thresholds)
    kept = control.apply(BudgetUpdate(mode="manual"))
    assert (kept.name, kept.thresholds, kept.auto) == ("custom", tuple(thresholds), None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"thresholds": [True, 0.1, 0.1, 0.1]}, "thresholds[0] must be a number, got bool True"),
        ({"thresholds": [0.1, "0.1", 0.1, 0.1]}, "thresholds[1] must be a number, got str '0.1'"),
        ({"gmacs": False}, "it must be a number, got bool False"),
        ({"mode": "auto", "p99_s": 1e-300}, "greater than or equal to 0.001"),
        ({"mode": "auto", "p99_s": 86400}, "less than or equal to 3600"),
        ({"mode": "auto", "p99_s": float("nan")}, "p99_s"),
        ({"level": "mid", "lvl": "fast", "why": 1}, "2 validation errors"),
    ],
)
def test_an_update_is_numbers_within_range_and_no_unknown_key(data: dict[str, object], message: str) -> None:
    """What PUT /budget's body and the budget file (validated laxly: ``strict=False``) are refused for, before any
    engine sees them."""
    for strict in (None, False):
        with pytest.raises(ValidationError, match=re.escape(message)):
            BudgetUpdate.model_validate(data, strict=strict)


def test_each_unknown_key_is_named() -> None:
    with pytest.raises(ValidationError) as unknown:
        BudgetUpdate.model_validate({"level": "mid", "lvl": "fast", "why": 1})
    assert [(e["loc"], e["type"]) for e in unknown.value.errors()] == [(("lvl",), "extra_forbidden"),
                                                                       (("why",), "extra_forbidden")]


def test_an_update_takes_integers_as_numbers(engine: Engine) -> None:
    control = BudgetControl(engine.budget)
    state = control.apply(BudgetUpdate.model_validate({"thresholds": [1, 0, 0, 0]}))
    assert (state.name, state.thresholds) == ("custom", (1.0, 0.0, 0.0, 0.0))
    auto = control.apply(BudgetUpdate.model_validate({"mode": "auto", "p99_s": 3600}))
    assert auto.auto == AutoBudgetConfig(slo_p99_s=3600.0, min_level=None)
