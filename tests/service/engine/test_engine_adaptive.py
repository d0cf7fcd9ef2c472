"""The engine bending instead of breaking, with the tiny model and a fake clock that each model call moves by one
second: answers at the deadline, anytime progress events, and the automatic budget at step boundaries."""

from __future__ import annotations

import logging

import pytest

from service.budget.control import BudgetControl
from service.engine.autobudget import AutoBudgetConfig
from service.engine.errors import DeadlineExceeded, QueueFull
from service.engine.runners.torch_runner import TorchRunner
from service.engine.types import EngineRequest, Progress
from service.schemas import BudgetUpdate
from tests.service.engine.tiny import FakeClock, TickingRunner, World, check, deadline_scenario, make_engine, requests


def reached_after_first_cube(world: World, i: int) -> int:
    """The exit index clip ``i`` reaches after its first cube: 1, plus the cubes right after it that are skipped."""
    k = 1
    while k < world.config.num_cubes and bool(world.skip[i, k]):
        k += 1
    return k


def test_a_request_near_its_deadline_is_answered_with_its_prediction_so_far(world: World) -> None:
    run = deadline_scenario(world, deadline_answers=True)
    # step 1 (t=100): clip 0 is past its deadline with no glance -> 504; clip 1's glance (t=101, step 1 s)
    # step 2 (t=101): clip 1's first cube + clip 2's glance (t=103, step 2 s, mean step 1.2 s)
    # step 3 (t=103): clip 1's deadline 102.5 <= 103 + 1.2: it leaves with its prediction after the first cube
    with pytest.raises(DeadlineExceeded):
        run.late.result(timeout=30)
    answer = run.near.result(timeout=30)
    step = reached_after_first_cube(world, 1)
    assert (answer.exit_reason, answer.exit_step, answer.cubes_used) == ("deadline", step, 1)
    assert answer.class_id == int(world.labels[1, step])
    assert answer.confidence == pytest.approx(float(world.probs[1, step]), abs=1e-5)
    assert answer.gmacs == pytest.approx(world.costs.glance_gmacs + world.costs.focus_step_gmacs)
    assert (answer.budget, answer.budget_version) == ("full", 2)
    assert run.free.result(timeout=30).exit_step == world.config.num_cubes
    run.engine.shutdown()
    assert run.observer.rejects == {"deadline": 1}
    assert sorted(r.exit_reason for r in run.observer.results) == ["deadline", "max_cubes"]


def test_progress_events_after_the_glance_and_every_cube(world: World) -> None:
    engine, _ = make_engine(world, max_batch=4, max_active=4)
    BudgetControl(engine.budget).apply(BudgetUpdate(level="mid"))
    events: dict[int, list[Progress]] = {i: [] for i in range(len(world.clips))}
    reqs = [
        EngineRequest(frames=clip, explain=True, on_progress=events[i].append) for i, clip in enumerate(world.clips)
    ]
    futures = [engine.submit(r) for r in reqs]
    engine.start()
    results = [f.result(timeout=30) for f in futures]
    engine.shutdown()
    check(world, results, world.budgets.get("mid").thresholds)
    costs = world.costs
    for i, result in enumerate(results):
        got = events[i]
        assert [e.final for e in got] == [False] * (len(got) - 1) + [True]
        assert got[0].exit_index == 0 and got[0].cube is None and got[0].gmacs == pytest.approx(costs.glance_gmacs)
        assert got[-1].exit_index == result.exit_step and got[-1].gmacs == pytest.approx(result.gmacs)
        assert [e.exit_index for e in got] == sorted({e.exit_index for e in got})  # one event per step, in order
        assert len(got) == 1 + result.cubes_used
        for e in got:
            assert e.class_id == int(world.labels[i, e.exit_index])
            assert e.confidence == pytest.approx(float(world.probs[i, e.exit_index]), abs=1e-5)
            assert e.score == pytest.approx(float(world.scores[i, e.exit_index]), abs=1e-4)
        assert result.cubes is not None
        assert [e.cube for e in got[1:]] == [c for c in result.cubes if not c.skipped]
        assert [e.gmacs for e in got] == pytest.approx(
            [costs.glance_gmacs + k * costs.focus_step_gmacs for k in range(len(got))]
        )


def test_a_failing_progress_callback_does_not_break_the_request(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(_: Progress) -> None:
        raise RuntimeError("client side bug")

    engine, _ = make_engine(world, max_batch=2, max_active=2)
    future = engine.submit(EngineRequest(frames=world.clips[0], on_progress=boom, client_id="client-7"))
    with caplog.at_level(logging.ERROR, logger="service.engine.engine"):
        engine.start()
        result = future.result(timeout=30)
        engine.shutdown()
    check(world, [result], world.budgets.get("fast").thresholds)  # clip 0's usual answer
    message = f"the progress callback failed (engine key {result.request_id})"
    failed = [r for r in caplog.records if r.getMessage() == message]
    assert len(failed) == 1 + result.cubes_used  # one per event: after the glance and after every cube
    assert {getattr(r, "request_id", None) for r in failed} == {"client-7"}  # the client's X-Request-ID


def test_auto_budget_steps_down_at_a_step_boundary_and_manual_turns_it_off(world: World) -> None:
    clock = FakeClock()
    runner = TickingRunner(TorchRunner(world.model), clock)
    engine, obs = make_engine(world, runner=runner, clock=clock, max_batch=4, max_active=4)
    engine.warmup()  # cost table: 1 s per call at batch 1 and 4 -> 0.25 s per video per glance and per cube
    control = BudgetControl(engine.budget)
    state = control.apply(BudgetUpdate(mode="auto", p99_s=1.0))
    assert (state.name, state.version, state.auto) == ("fast", 2, AutoBudgetConfig(slo_p99_s=1.0))
    # "fast" is the default: the auto budget starts there; make it start at the top instead
    control.apply(BudgetUpdate(level="full"))
    state = control.apply(BudgetUpdate(mode="auto", p99_s=1.0))
    assert (state.name, state.version) == ("full", 4)
    futures = [engine.submit(r) for r in requests(world)]  # 12 waiting: demand >= 12 / 1 s >> 4 videos/s
    engine.start()
    results = [f.result(timeout=30) for f in futures]
    first = obs.decisions[0]
    assert (first.level, first.changed, first.pinned) == ("fast", True, True)
    assert first.demand == pytest.approx(12 / 2.0 + 12 / 1.0)  # 12 arrivals over the 2 s window + backlog
    assert first.queue_limit == 3  # 4 videos/s x 1 s x 0.85: the floor (glance-only prior) serves 3 in time
    assert {(r.budget, r.budget_version) for r in results[:4]} == {("fast", 5)}  # every answer names its level
    check(world, results[:4], world.budgets.get("fast").thresholds)
    manual = control.apply(BudgetUpdate(level="mid"))
    assert manual.auto is None and engine.budget.auto_controller is None
    engine.shutdown()


def test_pinned_at_the_floor_refuses_beyond_the_queue_it_serves_in_time(world: World) -> None:
    clock = FakeClock()
    runner = TickingRunner(TorchRunner(world.model), clock)
    engine, obs = make_engine(world, runner=runner, clock=clock, max_batch=4, max_active=4)
    engine.warmup()
    BudgetControl(engine.budget).apply(BudgetUpdate(mode="auto", p99_s=1.0, min_level="mid"))
    auto = engine.budget.auto_controller
    assert auto is not None and auto.names == ("mid", "full")
    auto.on_result("mid", 0)  # measured: "mid" answers after the glance -> 1 / 0.25 s = 4 videos/s
    for _ in range(20):
        auto.on_arrival(clock.now)  # 20 arrivals in the window: 10/s, far above what "mid" serves
    decision = auto.decide(clock.now, 0, engine.pilot.video_costs())
    assert decision.pinned and decision.level == "mid" and decision.queue_limit == 3
    accepted = [engine.submit(r) for r in requests(world)[:3]]
    with pytest.raises(QueueFull, match="cannot keep up: 3 requests already wait"):
        engine.submit(requests(world)[3])
    assert obs.rejects == {"queue_full": 1}
    engine.start()
    assert all(f.result(timeout=30).budget == "mid" for f in accepted)
    engine.shutdown()
