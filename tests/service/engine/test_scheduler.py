"""The scheduler as a pure state machine: outputs are built by hand, no model, no threads, no clock."""

from dataclasses import dataclass

import pytest

from service.engine.admission import Admission
from service.engine.batch_costs import StepCosts
from service.engine.config import EngineConfig
from service.engine.errors import QueueFull
from service.engine.scheduler import (
    Finished,
    RequestOutput,
    RequestStatus,
    Scheduler,
    StepPlan,
)

K = 3


def scheduler(
    mode: str = "continuous", max_batch: int = 2, max_active: int = 3, max_queue: int = 8, min_glance_batch: int = 1
) -> Scheduler:
    config = EngineConfig(
        mode=mode,  # type: ignore[arg-type]
        max_batch=max_batch,
        max_active=max_active,
        max_queue=max_queue,
        min_glance_batch=min_glance_batch,
    )
    return Scheduler(config, K)


def add(s: Scheduler, n: int, start: int = 0) -> None:
    for rid in range(start, start + n):
        s.add(rid)


def stay(s: Scheduler, plan: StepPlan) -> dict[int, RequestOutput]:
    """Every planned request advances one exit without exiting (no skipped cubes)."""
    out = {rid: RequestOutput(exit_index=0) for rid in plan.glance}
    for rid in plan.focus:
        out[rid] = RequestOutput(exit_index=s.running[rid].exit_index + 1, cubes_run=1)
    return out


def test_status_order_puts_terminal_states_last() -> None:
    assert not RequestStatus.WAITING.is_finished and not RequestStatus.RUNNING.is_finished
    terminal = [s for s in RequestStatus if s.is_finished]
    assert terminal == sorted(terminal) and min(terminal) > RequestStatus.RUNNING
    assert len(terminal) == 6


def test_admission_respects_batch_and_active_caps() -> None:
    s = scheduler(max_batch=2, max_active=3)
    add(s, 5)
    p0 = s.plan()
    assert p0 == StepPlan(0, glance=(0, 1), focus=())
    assert s.apply(p0, stay(s, p0)) == []
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(2,), focus=(0, 1))  # only one active slot left
    assert s.apply(p1, stay(s, p1)) == []
    assert (s.num_waiting, s.num_running) == (2, 3)
    assert [s.status(r) for r in range(5)] == [RequestStatus.RUNNING] * 3 + [RequestStatus.WAITING] * 2


def test_round_robin_when_more_are_active_than_fit_a_batch() -> None:
    s = scheduler(max_batch=2, max_active=4)
    add(s, 4)
    plans = []
    for _ in range(4):
        p = s.plan()
        plans.append(p)
        s.apply(p, stay(s, p))
    assert [p.glance for p in plans] == [(0, 1), (2, 3), (), ()]
    # least recently scheduled first, oldest first among equals (the glance counts as being scheduled)
    assert [p.focus for p in plans] == [(), (0, 1), (0, 1), (2, 3)]


def test_exit_frees_the_slot_for_the_very_next_step_in_continuous_mode() -> None:
    s = scheduler(max_batch=2, max_active=2)
    add(s, 3)
    p0 = s.plan()
    done = s.apply(p0, {0: RequestOutput(exit_index=0, exited=True), 1: RequestOutput(exit_index=0)})
    assert done == [Finished(0, RequestStatus.FINISHED_CONFIDENT, exit_index=0, cubes_run=0)]
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(2,), focus=(1,))


def test_min_glance_batch_defers_admission_until_enough_slots_are_free() -> None:
    s = scheduler(max_batch=4, max_active=4, max_queue=16, min_glance_batch=3)
    add(s, 8)
    p0 = s.plan()
    assert p0 == StepPlan(0, glance=(0, 1, 2, 3), focus=())  # nothing active: admit at once
    s.apply(p0, {0: RequestOutput(exit_index=0, exited=True)} | {r: RequestOutput(exit_index=0) for r in (1, 2, 3)})
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(), focus=(1, 2, 3))  # one slot free, 4 waiting: wait for 3
    s.apply(p1, {1: RequestOutput(exit_index=1, cubes_run=1, exited=True)} | stay(s, StepPlan(1, (), (2, 3))))
    p2 = s.plan()
    assert p2 == StepPlan(2, glance=(), focus=(2, 3))  # two free: still short of 3
    s.apply(p2, {2: RequestOutput(exit_index=2, cubes_run=1, exited=True), 3: RequestOutput(exit_index=2, cubes_run=1)})
    p3 = s.plan()
    assert p3 == StepPlan(3, glance=(4, 5, 6), focus=(3,))  # three free: one glance batch of 3
    assert (s.num_waiting, s.num_running) == (1, 4)


def test_min_glance_batch_admits_fewer_when_fewer_wait_and_when_idle() -> None:
    s = scheduler(max_batch=4, max_active=4, min_glance_batch=4)
    add(s, 4)
    p0 = s.plan()
    s.apply(p0, {r: RequestOutput(exit_index=0, exited=r < 2) for r in p0.glance})
    add(s, 2, start=4)
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(4, 5), focus=(2, 3))  # only 2 wait and 2 slots are free: no point waiting
    s.apply(p1, {r: RequestOutput(exit_index=0, exited=True) for r in (4, 5)} | stay(s, StepPlan(1, (), (2, 3))))
    add(s, 3, start=6)
    p2 = s.plan()
    assert p2 == StepPlan(2, glance=(), focus=(2, 3))  # 2 free, 3 wait: defer until min(4, 3) = 3 are free
    s.apply(p2, {2: RequestOutput(exit_index=2, cubes_run=1, exited=True)} | stay(s, StepPlan(2, (), (3,))))
    assert s.plan() == StepPlan(3, glance=(6, 7, 8), focus=(3,))


def test_min_glance_batch_never_idles_with_work_waiting() -> None:
    s = scheduler(max_batch=4, max_active=4, min_glance_batch=4)
    add(s, 1)
    p0 = s.plan()
    assert p0.glance == (0,)  # one request and nothing active: its glance runs alone, no waiting for a batch
    s.apply(p0, {0: RequestOutput(exit_index=0)})
    add(s, 3, start=1)
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(1, 2, 3), focus=(0,))  # 3 free, 3 waiting
    s.apply(p1, {r: RequestOutput(exit_index=0, exited=r > 1) for r in (1, 2, 3)} | stay(s, StepPlan(1, (), (0,))))
    add(s, 4, start=4)
    p2 = s.plan()
    assert p2 == StepPlan(2, glance=(), focus=(0, 1))  # 2 free < min(4, 4): defer
    s.apply(p2, {r: RequestOutput(exit_index=s.running[r].exit_index + 1, cubes_run=1, exited=True) for r in (0, 1)})
    p3 = s.plan()
    assert p3 == StepPlan(3, glance=(4, 5, 6, 7), focus=())  # everyone left: the engine is idle, admit


def test_min_glance_batch_is_validated() -> None:
    with pytest.raises(ValueError, match="min_glance_batch"):
        EngineConfig(max_batch=4, min_glance_batch=5)
    with pytest.raises(ValueError, match="min_glance_batch"):
        EngineConfig(max_batch=4, min_glance_batch=0)
    with pytest.raises(ValueError, match="min_glance_batch"):
        EngineConfig(max_batch=4, max_active=4, min_glance_batch=5)
    config = EngineConfig(max_batch=8, max_active=8, min_glance_batch=4)
    assert Scheduler(config, K).config is config  # the one configuration type, taken as is


def test_drain_admits_the_next_batch_only_when_the_whole_batch_has_left() -> None:
    s = scheduler(mode="drain", max_batch=2, max_active=4)
    add(s, 4)
    p0 = s.plan()
    assert p0.glance == (0, 1)  # a drain batch is max_batch, even with room for more active
    s.apply(p0, {0: RequestOutput(exit_index=0, exited=True), 1: RequestOutput(exit_index=0)})
    p1 = s.plan()
    assert p1 == StepPlan(1, glance=(), focus=(1,))  # a slot is free, but the batch has not drained
    s.apply(p1, {1: RequestOutput(exit_index=1, cubes_run=1, exited=True)})
    assert s.plan() == StepPlan(2, glance=(2, 3), focus=())


def test_single_mode_runs_one_request_end_to_end() -> None:
    s = scheduler(mode="single", max_batch=8, max_active=8)
    add(s, 2)
    plans = []
    while s.has_work:
        p = s.plan()
        plans.append(p)
        s.apply(p, stay(s, p))
    assert [(p.glance, p.focus) for p in plans] == [
        ((0,), ()),
        ((), (0,)),
        ((), (0,)),
        ((), (0,)),
        ((1,), ()),
        ((), (1,)),
        ((), (1,)),
        ((), (1,)),
    ]


def test_last_cube_finishes_with_max_cubes_and_skipped_cubes_advance_without_compute() -> None:
    s = scheduler()
    add(s, 1)
    p = s.plan()
    s.apply(p, {0: RequestOutput(exit_index=0)})
    p = s.plan()
    s.apply(p, {0: RequestOutput(exit_index=2, cubes_run=1)})  # cube 1 covered by cube 0: skipped
    p = s.plan()
    assert p.focus == (0,)
    assert s.apply(p, {0: RequestOutput(exit_index=K, cubes_run=1)}) == [
        Finished(0, RequestStatus.FINISHED_MAX_CUBES, exit_index=K, cubes_run=2)
    ]
    assert not s.has_work


def test_failed_output_fails_only_that_request() -> None:
    s = scheduler()
    add(s, 2)
    p = s.plan()
    done = s.apply(p, {0: RequestOutput(exit_index=0, failed=True), 1: RequestOutput(exit_index=0)})
    assert done == [Finished(0, RequestStatus.FINISHED_FAILED, exit_index=-1, cubes_run=0)]
    assert s.status(1) == RequestStatus.RUNNING


def test_queue_full() -> None:
    s = scheduler(max_queue=2)
    add(s, 2)
    with pytest.raises(QueueFull):
        s.add(2)
    s.apply(s.plan(), {0: RequestOutput(exit_index=0), 1: RequestOutput(exit_index=0)})
    s.add(2)  # admission made room
    assert s.num_waiting == 1


def test_cancel_waiting_running_and_in_flight() -> None:
    s = scheduler(max_batch=2, max_active=2)
    add(s, 4)
    assert s.cancel(3) == Finished(3, RequestStatus.FINISHED_CANCELLED, -1, 0)
    p = s.plan()
    assert s.cancel(0) == Finished(0, RequestStatus.FINISHED_CANCELLED, -1, 0)  # while its glance runs
    assert s.apply(p, {0: RequestOutput(exit_index=0, exited=True), 1: RequestOutput(exit_index=0)}) == []
    assert s.cancel(0) is None and s.cancel(99) is None
    p = s.plan()
    assert p == StepPlan(1, glance=(2,), focus=(1,))  # the cancelled request's slot went to the next one
    s.apply(p, stay(s, p))
    assert s.cancel(1) == Finished(1, RequestStatus.FINISHED_CANCELLED, 1, 1)
    assert (s.num_waiting, s.num_running) == (0, 1)


def test_deadline_expiry_in_queue_and_in_flight() -> None:
    s = scheduler(max_batch=1, max_active=1)
    s.add(0, deadline=10.0)
    s.add(1, deadline=5.0)
    s.add(2)
    s.apply(s.plan(), {0: RequestOutput(exit_index=0)})
    assert s.expire(4.0) == []
    assert s.expire(5.0) == [Finished(1, RequestStatus.FINISHED_DEADLINE, -1, 0)]
    assert s.expire(10.0) == [Finished(0, RequestStatus.FINISHED_DEADLINE, 0, 0)]
    assert s.plan().glance == (2,)


def test_deadline_answers_for_requests_past_their_glance() -> None:
    """With ``answer_within``, a glanced request leaves that long before its deadline, to be answered; one still
    waiting for its glance only fails once its deadline has passed."""
    s = scheduler(max_batch=2, max_active=2)
    s.add(0, deadline=10.0)
    s.add(1, deadline=10.0)
    s.add(2, deadline=9.8)
    s.apply(s.plan(), {0: RequestOutput(exit_index=0), 1: RequestOutput(exit_index=0)})
    s.apply(s.plan(), {0: RequestOutput(exit_index=1, cubes_run=1), 1: RequestOutput(exit_index=1, cubes_run=1)})
    assert s.expire(9.69, answer_within=0.3) == []
    assert s.expire(9.7, answer_within=0.3) == [
        Finished(0, RequestStatus.FINISHED_AT_DEADLINE, 1, 1),
        Finished(1, RequestStatus.FINISHED_AT_DEADLINE, 1, 1),
    ]
    assert s.status(2) == RequestStatus.WAITING  # deadline 9.8 is within 0.3 s, but it has no prediction yet
    assert s.expire(9.8, answer_within=0.3) == [Finished(2, RequestStatus.FINISHED_DEADLINE, -1, 0)]
    assert not s.has_work


def test_abort_all() -> None:
    s = scheduler()
    add(s, 5)
    s.apply(s.plan(), {0: RequestOutput(exit_index=0), 1: RequestOutput(exit_index=0)})
    done = s.abort_all()
    assert sorted(f.request_id for f in done) == [0, 1, 2, 3, 4]
    assert {f.status for f in done} == {RequestStatus.FINISHED_CANCELLED}
    assert not s.has_work


def test_invariants_catch_bookkeeping_bugs() -> None:
    s = scheduler()
    add(s, 2)
    with pytest.raises(ValueError, match="already scheduled"):
        s.add(0)
    p = s.plan()
    with pytest.raises(AssertionError, match="twice"):
        s.plan()
    with pytest.raises(AssertionError, match="no output"):
        s.apply(p, {0: RequestOutput(exit_index=0)})
    s = scheduler()
    add(s, 1)
    p = s.plan()
    s.apply(p, {0: RequestOutput(exit_index=0)})
    p = s.plan()
    with pytest.raises(AssertionError, match="must advance"):
        s.apply(p, {0: RequestOutput(exit_index=0, cubes_run=1)})
    s = scheduler()
    add(s, 1)
    p = s.plan()
    with pytest.raises(AssertionError, match="bad glance"):
        s.apply(p, {0: RequestOutput(exit_index=0, cubes_run=1)})


def test_long_random_run_keeps_invariants_and_finishes_everyone() -> None:
    import random

    rng = random.Random(0)
    for mode, min_glance in (("continuous", 1), ("continuous", 3), ("drain", 1), ("single", 1)):
        s = scheduler(mode=mode, max_batch=3, max_active=5, max_queue=50, min_glance_batch=min_glance)
        add(s, 40)
        finished: list[Finished] = []
        while s.has_work:
            p = s.plan()
            assert len(p.glance) <= 3 and len(p.focus) <= 3 and s.num_running <= 5
            out = {}
            for rid in p.glance:
                out[rid] = RequestOutput(exit_index=0, exited=rng.random() < 0.2)
            for rid in p.focus:
                nxt = min(K, s.running[rid].exit_index + rng.choice([1, 1, 2]))
                out[rid] = RequestOutput(exit_index=nxt, cubes_run=1, exited=rng.random() < 0.3)
            finished += s.apply(p, out)
        assert sorted(f.request_id for f in finished) == list(range(40)), (mode, min_glance)
        assert all(f.cubes_run <= f.exit_index for f in finished)


# ---------------------------------------------------------------------------------------------- the cost rule
LINEAR = StepCosts(glance=(1.0, 2.0, 3.0, 4.0), focus=(1.0, 2.0, 3.0, 4.0))  # t(b) = b
FLAT = StepCosts(glance=(1.0, 1.0, 1.0, 1.0), focus=(1.0, 1.0, 1.0, 1.0))  # t(b) = 1
KNEE = StepCosts(glance=(1.0, 1.0, 2.0, 3.0), focus=(1.0, 1.0, 2.0, 3.0))  # flat up to 2, then linear
EXITS = (0, 3, 1, 3, 2, 3, 3, 1, 0, 2, 3, 1, 3, 3, 2, 0)  # the exit each request leaves at (3 = all K cubes)


@dataclass
class Served:
    finished: list[float]  # when each request left
    glances: list[int]  # the glance batch sizes, in order

    def latency(self, arrivals: tuple[float, ...]) -> float:
        return sum(f - a for f, a in zip(self.finished, arrivals, strict=True))


def serve(
    mode: str,
    costs: StepCosts,
    arrivals: tuple[float, ...],
    admission: str = "cost",
    measured: bool = True,
    exits: tuple[int, ...] = EXITS,
    num_cubes: int = K,
) -> Served:
    """Request i arrives at ``arrivals[i]`` and leaves at exit ``exits[i]``, on a virtual clock where a step lasts
    the glance call plus the focus call of ``costs`` (0 for an empty stage), which ``plan`` gets when ``measured``;
    requests arriving during a step are queued after it. The invariants are checked after every transition."""
    config = EngineConfig(mode=mode, max_batch=4, max_active=4, max_queue=64, admission=admission)  # type: ignore[arg-type]
    s = Scheduler(config, num_cubes)
    now, queued, served = 0.0, 0, Served([0.0] * len(arrivals), [])
    while queued < len(arrivals) or s.has_work:
        while queued < len(arrivals) and arrivals[queued] <= now:
            s.add(queued)
            queued += 1
        if not s.has_work:
            now = arrivals[queued]
            continue
        plan = s.plan(costs if measured else None)
        s.check_invariants()
        assert plan.glance or plan.focus, "an idle step with work waiting"
        stages = ((costs.glance, plan.glance), (costs.focus, plan.focus))
        now += sum(curve[len(ids) - 1] for curve, ids in stages if ids)
        out = {rid: RequestOutput(exit_index=0, exited=exits[rid] == 0) for rid in plan.glance}
        for rid in plan.focus:
            reached = s.exit_index(rid) + 1
            out[rid] = RequestOutput(exit_index=reached, exited=exits[rid] == reached, cubes_run=1)
        for fin in s.apply(plan, out):
            served.finished[fin.request_id] = now
        s.check_invariants()
        served.glances += [len(plan.glance)] if plan.glance else []
    return served


AT_ONCE = (0.0,) * len(EXITS)
ONE_PER_SECOND = tuple(float(i) for i in range(len(EXITS)))


def test_the_cost_rule_waits_on_a_linear_curve_and_refills_on_a_flat_one() -> None:
    outcomes = {}
    for name, costs in (("linear", LINEAR), ("flat", FLAT), ("knee", KNEE)):
        s = scheduler(max_batch=4, max_active=4)
        s.add(0)
        p0 = s.plan(costs)
        s.apply(p0, {0: RequestOutput(exit_index=0)})
        add(s, 3, start=1)  # request 0 has 3 cubes to go, 3 arrive: glance them now, or after request 0 has left?
        outcomes[name] = (s.plan(costs).glance, s.last_admission)
    # flat: they skip a 3 s hold each (9) for 1 s of glance to request 0 and the overhead of a glance call of 3
    # to the arrivals expected meanwhile (1.2 per step, 3 steps), plus the one of them the batch after the hold
    # would have taken along, that now waits 2 s more for the newcomers to leave
    assert outcomes["flat"] == ((1, 2, 3), Admission(gain=9.0, in_flight_cost=1.0, backlog_cost=3.6 + 2.0))
    # linear: sharing stretches the newcomers by the whole hold; request 0 loses the glance and every shared step
    assert outcomes["linear"][0] == () and outcomes["linear"][1] == pytest.approx(
        Admission(gain=3 * 6.0 - 15.0, in_flight_cost=3.0 + 6.0, backlog_cost=12.0)
    )
    assert outcomes["knee"][0] == ()  # a step of 4 costs 3 here: holding pays too


@pytest.mark.parametrize("costs", [LINEAR, FLAT, KNEE], ids=["linear", "flat", "knee"])
@pytest.mark.parametrize("arrivals", [AT_ONCE, ONE_PER_SECOND], ids=["at-once", "one-per-second"])
def test_the_cost_rule_is_never_worse_than_drain(costs: StepCosts, arrivals: tuple[float, ...]) -> None:
    rule, drain = serve("continuous", costs, arrivals), serve("drain", costs, arrivals)
    assert rule.latency(arrivals) <= drain.latency(arrivals) and max(rule.finished) <= max(drain.finished)
    assert rule.latency(arrivals) < serve("continuous", costs, arrivals, admission="eager").latency(arrivals)


def test_on_a_linear_curve_it_waits_as_drain_and_at_the_knee_it_refills_where_that_pays() -> None:
    linear = serve("continuous", LINEAR, ONE_PER_SECOND)
    assert linear == serve("drain", LINEAR, ONE_PER_SECOND) and linear.glances == [1, 1, 4, 4, 4, 2]
    knee, drain = serve("continuous", KNEE, ONE_PER_SECOND), serve("drain", KNEE, ONE_PER_SECOND)
    assert (knee.glances, drain.glances) == ([1, 1, 4, 4, 3, 3], [1, 1, 4, 4, 4, 2])
    assert (knee.latency(ONE_PER_SECOND), drain.latency(ONE_PER_SECOND)) == (188.0, 201.0)


def test_eager_admission_ignores_the_costs() -> None:
    for arrivals in (AT_ONCE, ONE_PER_SECOND):
        eager = serve("continuous", LINEAR, arrivals, admission="eager")
        assert eager == serve("continuous", LINEAR, arrivals, measured=False)  # nothing measured: admit eagerly
    assert serve("continuous", FLAT, AT_ONCE, admission="eager").glances == [4, 1, 1, 3, 1, 2, 3, 1]


def test_plan_keeps_the_last_decision_and_learns_exit_hazards_and_arrivals() -> None:
    s = scheduler(max_batch=2, max_active=2)
    add(s, 3)
    p0 = s.plan(LINEAR)
    assert s.arrivals_per_step == 2.0 and s.last_admission is None  # a burst counts up to one batch; none in flight
    s.apply(p0, {0: RequestOutput(exit_index=0, exited=True), 1: RequestOutput(exit_index=0)})
    assert s.hazards.hazards == pytest.approx((0.05 - 0.05 * 0.05, 0.0, 0.0))  # exit 0: one left, one went on
    assert s.plan(LINEAR) == StepPlan(1, glance=(), focus=(1,))  # a free slot, but the cost rule holds request 2
    assert s.arrivals_per_step == pytest.approx(2.0 - 0.1 * 2.0)
    assert s.last_admission is not None and not s.last_admission.admit


def test_hazards_count_cubes_run_so_skipped_cubes_shorten_the_lives() -> None:
    s = scheduler(max_batch=1, max_active=1)
    add(s, 1)
    s.apply(s.plan(), {0: RequestOutput(exit_index=0)})
    assert s.apply(s.plan(), {0: RequestOutput(exit_index=K, cubes_run=1)})  # cubes 2..3 skipped: it left after 1
    assert s.hazards.hazards == pytest.approx((0.0, 0.05, 0.0))
