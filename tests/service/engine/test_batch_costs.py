"""The cost-aware glance admission: the knee rule on hand-made cost tables, the online table, and the scheduler's
decisions with costs as an input (pure: no model, no clock)."""

import pytest

from service.engine.batch_costs import StepCosts, StepCostTable, fewest_seconds, knee_batch, schedule_floor
from service.engine.config import EngineConfig
from service.engine.scheduler import RequestOutput, Scheduler

K = 6


@pytest.mark.parametrize(
    ("per_call", "tolerance", "knee"),
    [
        ((1.0, 1.0, 1.0, 1.0), 0.10, 4),  # a fixed cost per call: the largest batch is the only near-best one
        ((1.0, 2.0, 3.0, 4.0), 0.10, 1),  # linear: batching gains nothing, admit at once
        ((1.0, 1.2, 2.0, 4.0), 0.10, 2),  # per video 1.0, 0.6, 0.67, 1.0: two is best
        ((1.0, 1.1, 1.2, 1.3), 0.10, 4),  # per video 1.0, 0.55, 0.4, 0.325: keeps falling
        ((1.0, 1.1, 1.2, 1.3), 0.25, 3),  # ... but 0.4 is within 25% of 0.325
        ((0.010, 0.011, 0.016, 0.021, 0.026, 0.031, 0.036, 0.041), 0.05, 3),  # 5.3 ms/video within 5% of 5.1
        ((0.010, 0.011, 0.016, 0.021, 0.026, 0.031, 0.036, 0.041), 0.10, 2),  # 5.5 ms/video within 10% of 5.1
    ],
)
def test_knee_is_the_smallest_batch_near_the_best_cost_per_video(
    per_call: tuple[float, ...], tolerance: float, knee: int
) -> None:
    assert knee_batch(per_call, tolerance) == knee


def test_cost_table_fills_unmeasured_sizes_and_needs_both_stages() -> None:
    table = StepCostTable(cap=4, weight=0.5)
    table.record("glance", 1, 1.0)
    table.record("glance", 4, 2.0)
    assert table.snapshot() is None  # no focus measurement yet
    table.record("focus", 2, 0.4)
    costs = table.snapshot()
    assert costs is not None
    assert costs.glance == pytest.approx((1.0, 4 / 3, 5 / 3, 2.0))
    assert costs.focus == pytest.approx((0.2, 0.4, 0.6, 0.8))  # per-sample cost held beyond the measured size
    table.record("glance", 4, 4.0)  # an online refinement moves the estimate by the weight
    costs = table.snapshot()
    assert costs is not None and costs.glance[3] == pytest.approx(3.0)
    table.record("glance", 9, 1.0)  # outside 1..cap: ignored
    with pytest.raises(ValueError):
        StepCosts(glance=(), focus=(1.0,))


def auto_scheduler(max_wait: int = 3) -> Scheduler:
    """The knee rule alone: admitted eagerly once its glance batch is free (the cost rule on top: test_admission)."""
    config = EngineConfig(
        max_batch=4,
        max_active=4,
        max_queue=16,
        min_glance_batch=None,
        max_glance_wait_steps=max_wait,
        admission="eager",
    )
    return Scheduler(config, K)


def advance(s: Scheduler, costs: StepCosts | None, exit_ids: tuple[int, ...] = ()) -> tuple[int, ...]:
    """One step: glance for the admitted, one cube for the rest; ``exit_ids`` exit. Returns the admitted ids."""
    plan = s.plan(costs)
    outputs = {rid: RequestOutput(exit_index=0, exited=rid in exit_ids) for rid in plan.glance}
    for rid in plan.focus:
        nxt = s.running[rid].exit_index + 1
        outputs[rid] = RequestOutput(exit_index=nxt, exited=rid in exit_ids, cubes_run=1)
    s.apply(plan, outputs)
    return plan.glance


FLAT = StepCosts(glance=(1.0, 1.0, 1.0, 1.0), focus=(1.0, 1.0, 1.0, 1.0))  # knee 4
LINEAR = StepCosts(glance=(1.0, 2.0, 3.0, 4.0), focus=(1.0, 1.0, 1.0, 1.0))  # knee 1


@pytest.mark.parametrize(
    ("costs", "admitted_after_two_exits"),
    [
        (None, (4, 5)),  # no costs measured yet: refill at once, as min_glance_batch 1
        (LINEAR, (4, 5)),  # batching the glance gains nothing: refill at once
        (FLAT, ()),  # the glance costs the same for 4 as for 2: wait for 4 free slots
    ],
)
def test_automatic_glance_batch_follows_the_cost_table(
    costs: StepCosts | None, admitted_after_two_exits: tuple[int, ...]
) -> None:
    s = auto_scheduler()
    for rid in range(8):
        s.add(rid)
    assert advance(s, costs) == (0, 1, 2, 3)  # nothing active: admit a full batch, whatever the costs
    assert advance(s, costs, exit_ids=(0, 1)) == ()  # two leave; no slot was free when this step was planned
    assert s.glance_batch(costs) == (4 if costs is FLAT else 1)
    assert advance(s, costs) == admitted_after_two_exits


def test_the_oldest_waiting_request_waits_at_most_max_glance_wait_steps() -> None:
    s = auto_scheduler(max_wait=3)
    for rid in range(6):
        s.add(rid)
    assert advance(s, FLAT) == (0, 1, 2, 3)  # step 0; requests 4 and 5 were queued at step 0
    assert advance(s, FLAT, exit_ids=(0,)) == ()  # step 1
    assert advance(s, FLAT) == ()  # step 2: one free slot, the knee is 4
    assert advance(s, FLAT) == (4,)  # step 3: request 4 has waited 3 steps: admit what fits


@pytest.mark.parametrize(
    ("per_call", "samples", "seconds"),
    [
        ((10.0, 11.0, 12.0, 13.0), 9, 2 * 13.0 + 10.0),  # flat-ish: full calls, then one for the rest
        ((1.0, 2.0, 3.0, 4.0), 9, 9.0),  # linear: any split costs the same
        ((2.0, 3.0, 9.0, 12.0), 6, 9.0),  # a knee: three calls of 2 beat a full one and a pair (15)
        ((5.0,), 3, 15.0),  # a cap of one sample per call
        ((5.0, 6.0), 0, 0.0),
    ],
)
def test_the_fewest_seconds_of_a_stage_is_its_cheapest_split(
    per_call: tuple[float, ...], samples: int, seconds: float
) -> None:
    assert fewest_seconds(per_call, samples) == pytest.approx(seconds)


def test_the_schedule_floor_sums_both_stages_cheapest_calls() -> None:
    a, c = 12.5e-3, 2.23e-3  # the simulated V100's glance; focus 12.5 ms + 0.104 ms per cube, batch cap 32
    costs = StepCosts(tuple(a + c * b for b in range(1, 33)), tuple(12.5e-3 + 0.104e-3 * b for b in range(1, 33)))
    floor = schedule_floor(costs, 128, 56)  # 4 full glance calls; 56 cubes: one call of 32 and one of 24
    assert floor == pytest.approx(4 * a + 128 * c + 2 * 12.5e-3 + 56 * 0.104e-3)
