"""The automatic budget controller, driven by hand-made arrivals, backlogs, costs and answers (no engine, no clock).

Levels of these tests (glance 1 GMAC, one cube 1 GMAC; 10 ms per glance and per cube at a full batch), so the
service rates are round numbers: ``low`` 0 cubes -> 100 videos/s, ``mid`` 1 cube -> 50/s, ``high`` 4 cubes -> 20/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.engine.autobudget import AutoBudget, AutoBudgetConfig, Decision, VideoCosts


@dataclass(frozen=True)
class Level:
    name: str
    expected_gmacs: float
    expected_accuracy: float


LEVELS = (Level("mid", 2.0, 0.6), Level("high", 5.0, 0.8), Level("low", 1.0, 0.3))  # any order: ranked by accuracy
COSTS = VideoCosts(glance_s=0.01, cube_s=0.01)


def controller(start: str | None = None, **kwargs: object) -> AutoBudget:
    config = AutoBudgetConfig(slo_p99_s=0.5, **kwargs)  # type: ignore[arg-type]
    return AutoBudget(config, LEVELS, glance_gmacs=1.0, cube_gmacs=1.0, start=start, now=0.0)


def arrive(auto: AutoBudget, rate: float, start: float, end: float) -> None:
    """Evenly spaced arrivals at ``rate``/s in (start, end]."""
    first, last = round(start * rate) + 1, round(end * rate)
    for i in range(first, last + 1):
        auto.on_arrival(i / rate)


def test_ladder_is_ranked_by_accuracy_and_starts_at_the_top() -> None:
    auto = controller()
    assert auto.names == ("low", "mid", "high") and auto.level == "high" and auto.floor == "low"
    assert [auto.service_rate(n, COSTS) for n in auto.names] == pytest.approx([100.0, 50.0, 20.0])


def test_stays_at_the_top_while_it_keeps_up() -> None:
    auto = controller()
    arrive(auto, 10, 0, 10)
    d = auto.decide(10.01, queue_depth=0, costs=COSTS)
    assert (d.level, d.changed, d.pinned, d.queue_limit) == ("high", False, False, None)
    assert d.arrival_rate == pytest.approx(10.0) and d.service_rate == pytest.approx(20.0)


@pytest.mark.parametrize(
    "rate,level,pinned,limit",
    [
        (16, "high", False, None),
        (18, "mid", False, None),
        (42, "mid", False, None),
        (43, "low", False, None),
        (85, "low", False, None),
        (90, "low", True, 42),
    ],
)
def test_steps_down_at_once_to_the_most_accurate_level_that_keeps_up(
    rate: float, level: str, pinned: bool, limit: int | None
) -> None:
    auto = controller()
    arrive(auto, rate, 0, 10)
    d = auto.decide(10.001, queue_depth=0, costs=COSTS)
    assert (d.level, d.changed, d.pinned, d.queue_limit) == (level, level != "high", pinned, limit)
    assert d.demand == pytest.approx(rate)


def test_the_backlog_counts_as_demand() -> None:
    auto = controller()
    arrive(auto, 10, 0, 10)
    assert auto.decide(10.001, queue_depth=3, costs=COSTS).level == "high"  # 10 + 3 / 0.5 = 16 <= 17
    d = auto.decide(10.002, queue_depth=4, costs=COSTS)  # 10 + 4 / 0.5 = 18 > 0.85 x 20
    assert d.level == "mid" and d.demand == pytest.approx(18.0)


def drive(auto: AutoBudget, rate: float, start: float, end: float, queue: int = 0) -> dict[float, Decision]:
    """Arrivals at ``rate``/s in (start, end] with a decision every 10 ms, in time order: the decision per tick."""
    decisions = {}
    for tick in range(round(start * 100) + 1, round(end * 100) + 1):
        arrive(auto, rate, (tick - 1) / 100, tick / 100)
        decisions[tick / 100] = auto.decide(tick / 100 + 1e-6, queue, COSTS)
    return decisions


def test_steps_up_only_after_the_margin_held_for_up_hold_s() -> None:
    auto = controller()
    assert {d.level for d in drive(auto, 40, 0, 10).values()} == {"high", "mid"}  # 40 <= 0.85 x 50
    assert auto.level == "mid"
    after = drive(auto, 12, 10, 20)  # 12/s <= 0.65 x 20 = 13 once the 40/s arrivals left the 2 s window
    qualifies = min(t for t, d in after.items() if d.demand <= 13)
    assert 11.8 < qualifies <= 12.0
    up = min(t for t, d in after.items() if d.level == "high")
    assert up == pytest.approx(qualifies + 3.0)
    assert after[up].changed and all(d.level == ("high" if t >= up else "mid") for t, d in after.items())


def test_a_demand_inside_the_band_resets_the_pending_step_up() -> None:
    auto = controller()
    drive(auto, 40, 0, 10)
    drive(auto, 12, 10, 14)  # the hold runs from about 11.9
    assert auto.level == "mid"
    band = drive(auto, 12, 14, 15, queue=1)  # 12 + 1 / 0.5 = 14: in (13, 17]: no step up, the hold restarts
    assert {d.level for d in band.values()} == {"mid"}
    after = drive(auto, 12, 15, 19)
    assert min(t for t, d in after.items() if d.level == "high") == pytest.approx(18.01)  # 3 s after 15.01


def test_no_flapping_between_the_two_headrooms() -> None:
    """Demand between up_headroom and headroom of the level above holds the level, whatever the time."""
    auto = controller()
    drive(auto, 40, 0, 10)
    assert auto.level == "mid"
    # high keeps up with 15/s (<= 17) but not with the margin (> 13): mid for 50 s, no step up, no step down
    assert {d.level for d in drive(auto, 15, 10, 60).values()} == {"mid"}


def test_steps_up_several_levels_at_once() -> None:
    auto = controller()
    arrive(auto, 90, 0, 10)
    assert auto.decide(10.001, 0, COSTS).level == "low"
    # nothing arrives after t = 10: the window empties at 12, the hold runs from there
    assert auto.decide(12.5, 0, COSTS).level == "low"
    assert auto.decide(15.5, 0, COSTS).level == "high"


def test_the_floor_is_never_passed_and_pins() -> None:
    auto = controller(min_level="mid")
    assert auto.names == ("mid", "high")
    arrive(auto, 90, 0, 10)
    d = auto.decide(10.001, 0, COSTS)
    assert (d.level, d.pinned, d.queue_limit) == ("mid", True, 21)  # 50/s x 0.5 s x 0.85
    arrive(auto, 40, 10, 20)
    d = auto.decide(20.001, 0, COSTS)
    assert (d.level, d.pinned, d.queue_limit) == ("mid", False, None)  # 40 <= 0.85 x 50: the floor keeps up


def test_measured_cubes_replace_the_calibration_prior() -> None:
    auto = controller(cubes_weight=0.5)
    assert auto.cubes("high") == 4.0
    auto.on_result("high", 2)
    assert auto.cubes("high") == 2.0 and auto.service_rate("high", COSTS) == pytest.approx(1 / 0.03)
    auto.on_result("high", 4)
    assert auto.cubes("high") == 3.0
    auto.on_result("custom", 9)  # off the ladder: ignored
    assert auto.cubes("mid") == 1.0
    arrive(auto, 20, 0, 10)  # 20 <= 0.85 x 25 with 3 cubes: high keeps up (with 4 cubes it would not)
    assert auto.decide(10.001, 0, COSTS).level == "high"


def test_overhead_scales_the_service_rate() -> None:
    auto = controller()
    slow = VideoCosts(glance_s=0.01, cube_s=0.01, overhead=2.0)
    assert auto.service_rate("low", slow) == pytest.approx(50.0)
    arrive(auto, 10, 0, 10)
    assert auto.decide(10.001, 0, slow).level == "mid"  # high serves 10/s now: 10 > 8.5


def test_without_costs_the_level_stays() -> None:
    auto = controller()
    arrive(auto, 500, 0, 10)
    d = auto.decide(10.001, 0, None)
    assert (d.level, d.changed, d.service_rate, d.pinned) == ("high", False, None, False)
    assert d.arrival_rate == pytest.approx(500.0)


def test_arrival_rate_over_the_window() -> None:
    auto = controller(window_s=2.0)
    for t in (0.1, 0.2, 0.3, 0.4):
        auto.on_arrival(t)
    assert auto.arrival_rate(0.5) == pytest.approx(2.0)  # 4 arrivals over the 2 s window (even at start)
    assert auto.arrival_rate(2.25) == pytest.approx(1.0)  # 0.3 and 0.4 still in (0.25, 2.25]
    assert auto.arrival_rate(3.0) == 0.0


def test_seconds_held_at_each_level() -> None:
    auto = controller(start="mid")
    assert auto.decide(1.5, 0, None).held == ("mid", 1.5)
    arrive(auto, 90, 1.5, 10)
    d = auto.decide(10.0, 0, COSTS)
    assert d.held == ("mid", 8.5) and d.level == "low"
    assert auto.decide(10.25, 0, COSTS).held == ("low", 0.25)


def test_starts_at_the_level_given_and_rejects_bad_settings() -> None:
    assert controller(start="low").level == "low"
    assert controller(start="custom").level == "high"
    with pytest.raises(ValueError, match="min_level: unknown budget level 'nope'"):
        controller(min_level="nope")
    with pytest.raises(ValueError, match="slo_p99_s must be > 0"):
        AutoBudgetConfig(slo_p99_s=0)
    with pytest.raises(ValueError, match="up_headroom <= headroom"):
        AutoBudgetConfig(slo_p99_s=1, headroom=0.5, up_headroom=0.6)
