"""The scheduler as a pure state machine: outputs are built by hand, no model, no threads, no clock."""

import pytest

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
