"""The engine with the tiny model on CPU: batch-composition independence, budget swaps at step boundaries,
backpressure, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from model.adafocus import FocusState
from model.budgets import BudgetError
from model.exits import GlanceResult
from service.budget.control import BudgetControl
from service.engine.engine import run_offline
from service.engine.errors import DeadlineExceeded, EngineDraining, EngineError, QueueFull, RequestCancelled
from service.engine.runners.torch_runner import TorchRunner
from service.engine.types import EngineRequest, EngineResult
from service.schemas import BudgetUpdate
from tests.service.engine.tiny import NUM_CLIPS, World, check, deadline_scenario, make_engine, requests


@pytest.mark.parametrize(
    "mode,max_batch,max_active",
    [("single", 8, 8), ("continuous", 4, 6), ("continuous", 32, 64), ("drain", 5, 8)],
)
def test_same_label_and_exit_step_in_every_mode(world: World, mode: str, max_batch: int, max_active: int) -> None:
    engine, obs = make_engine(world, mode=mode, max_batch=max_batch, max_active=max_active)
    engine.warmup()
    results = run_offline(engine, requests(world, explain=True))
    engine.shutdown()
    fast = world.budgets.get("fast").thresholds
    check(world, results, fast)
    steps = sorted({r.exit_step for r in results})
    assert len(steps) >= 3, f"the budget must make clips exit at different steps, got {steps}"
    assert {r.budget for r in results} == {"fast"} and {r.budget_version for r in results} == {1}
    for r in results:
        assert r.cubes is not None and len(r.cubes) == r.exit_step
        assert sum(not c.skipped for c in r.cubes) == r.cubes_used
        assert r.queue_seconds >= 0 and r.compute_seconds >= 0
    cap = 1 if mode == "single" else max_batch
    for stage in ("glance", "focus"):
        sizes = obs.batch_sizes(stage)
        assert sizes and max(sizes) <= cap
    assert len(obs.results) == NUM_CLIPS and obs.busy_seconds() > 0
    if mode == "single":
        assert set(obs.batch_sizes("focus")) == {1}
    if mode == "continuous" and max_batch == 4:
        assert max(obs.batch_sizes("focus")) == 4  # mixed step indices shared focus batches


def test_drain_batches_run_until_every_sample_exits(world: World) -> None:
    engine, obs = make_engine(world, mode="drain", max_batch=6, max_active=6)
    run_offline(engine, requests(world))
    engine.shutdown()
    assert obs.batch_sizes("glance") == [6, 6]  # the second batch only starts once the first has drained


def test_continuous_refills_freed_slots_at_the_next_step(world: World) -> None:
    engine, obs = make_engine(world, mode="continuous", max_batch=6, max_active=6, admission="eager")
    engine.warmup()  # outside the step statistics (inline: run_offline starts the engine on a full queue)
    assert obs.steps == []
    run_offline(engine, requests(world))
    engine.shutdown()
    glances = obs.batch_sizes("glance")
    assert glances[0] == 6 and len(glances) > 2  # waiting clips joined as soon as the first ones exited


def test_min_glance_batch_keeps_every_result_and_batches_admissions(world: World) -> None:
    engine, obs = make_engine(world, mode="continuous", max_batch=4, max_active=4, min_glance_batch=3)
    results = run_offline(engine, requests(world))
    engine.shutdown()
    check(world, results, world.budgets.get("fast").thresholds)  # same label, exit step and cubes as every mode
    glances = obs.batch_sizes("glance")
    assert sum(glances) == NUM_CLIPS and glances[0] == 4
    assert all(size >= 3 for size in glances[:-1]), glances  # a smaller batch only for the last stragglers


def test_per_request_budget_level(world: World) -> None:
    engine, _ = make_engine(world, max_batch=4)
    results = run_offline(engine, requests(world, budget="mid"))
    engine.shutdown()
    check(world, results, world.budgets.get("mid").thresholds)
    assert {r.budget for r in results} == {"mid"}


def test_budget_swaps_are_atomic_under_concurrent_submits(world: World) -> None:
    engine, obs = make_engine(world, max_batch=4, max_active=8)
    engine.start()
    versions = {1: world.budgets.get("fast").thresholds}
    results: list[tuple[int, EngineResult]] = []
    grew = threading.Condition()
    stop = threading.Event()

    def client(offset: int) -> None:
        n = 0
        while not stop.is_set():
            i = (n + offset) % NUM_CLIPS
            r = engine.submit_blocking(EngineRequest(frames=world.clips[i])).result(timeout=30)
            with grew:
                results.append((i, r))
                grew.notify_all()
            n += 1

    threads = [threading.Thread(target=client, args=(k * 5,)) for k in range(3)]
    for t in threads:
        t.start()
    custom = world.budgets.get("mid").thresholds
    control = BudgetControl(engine.budget)
    swaps = [
        BudgetUpdate(level="full"),
        BudgetUpdate(thresholds=list(custom)),
        BudgetUpdate(gmacs=0.00035),  # best within: "fast"
        BudgetUpdate(level="mid"),
    ]
    for n in range(12):
        state = control.apply(swaps[n % len(swaps)])
        versions[state.version] = state.thresholds
        with grew:  # at most 3 requests were in flight at the swap: 6 more results include newer versions
            target = len(results) + 6
            assert grew.wait_for(lambda t=target: len(results) >= t, timeout=30)
    stop.set()
    for t in threads:
        t.join()
    engine.shutdown()
    for i, r in results:
        label, step, _ = world.expected(i, versions[r.budget_version])
        assert (r.class_id, r.exit_step) == (label, step), f"clip {i} under version {r.budget_version}"
    names = {1: "fast", 2: "full", 3: "custom", 4: "fast", 5: "mid"}
    assert all(r.budget == names[(r.budget_version - 2) % 4 + 2] for _, r in results if r.budget_version > 1)
    assert len({r.budget_version for _, r in results}) >= 7
    assert obs.budgets[0] == ("fast", 1) and obs.budgets[-1] == ("mid", 13)


def test_submit_refuses_an_unknown_level_and_bad_frames(world: World) -> None:
    engine, _ = make_engine(world)
    with pytest.raises(BudgetError, match="unknown budget level"):
        engine.submit(EngineRequest(frames=world.clips[0], budget="turbo"))
    with pytest.raises(ValueError, match="uint8 array of shape"):
        engine.submit(EngineRequest(frames=world.clips[0][:2]))
    assert engine.queue_depth == 0 and engine.budget.current().version == 1


def test_queue_full_and_start_later(world: World) -> None:
    engine, obs = make_engine(world, max_queue=2)
    futures = [engine.submit(r) for r in requests(world)[:2]]
    with pytest.raises(QueueFull):
        engine.submit(EngineRequest(frames=world.clips[2]))
    assert engine.queue_depth == 2 and obs.rejects == {"queue_full": 1}
    engine.start()
    assert [f.result(timeout=30).exit_step for f in futures] == [
        world.expected(i, world.budgets.get("fast").thresholds)[1] for i in range(2)
    ]
    engine.shutdown()


def test_cancel_in_queue_and_by_future_cancel(world: World) -> None:
    engine, obs = make_engine(world)
    futures = [engine.submit(r) for r in requests(world)[:4]]
    engine.cancel(futures[1])
    assert futures[2].cancel()  # e.g. an asyncio wrapper cancelled: the engine drops it too
    assert engine.queue_depth == 2
    engine.start()
    with pytest.raises(RequestCancelled):
        futures[1].result(timeout=30)
    assert futures[0].result(timeout=30).request_id == 0 and futures[3].result(timeout=30).request_id == 3
    engine.cancel(futures[0])  # already answered: no-op
    engine.shutdown()
    assert obs.rejects == {"cancelled": 2}


def test_deadline_in_queue_and_in_flight_without_deadline_answers(world: World) -> None:
    run = deadline_scenario(world, deadline_answers=False)
    with pytest.raises(DeadlineExceeded):
        run.late.result(timeout=30)
    with pytest.raises(DeadlineExceeded):
        run.near.result(timeout=30)
    assert run.free.result(timeout=30).exit_step == world.config.num_cubes
    run.engine.shutdown()
    assert run.observer.rejects == {"deadline": 2}


class PoisonRunner:
    """Fails any glance batch that holds an all-white clip (a stand-in for one bad sample breaking a batch)."""

    name = "torch"

    def __init__(self, inner: TorchRunner) -> None:
        self.inner, self.device = inner, inner.device

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        if bool((frames_small.flatten(1).min(1).values == 255).any()):
            raise RuntimeError("poisoned clip")
        return self.inner.glance(frames_small)

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        return self.inner.focus(cubes, state)


def test_a_failing_sample_fails_alone_and_the_engine_keeps_serving(world: World) -> None:
    engine, obs = make_engine(world, runner=PoisonRunner(TorchRunner(world.model)), max_batch=4)
    reqs = requests(world)[:6]
    white = np.full_like(world.clips[0], 255)
    reqs.insert(2, EngineRequest(frames=white))
    engine.start()
    futures = engine.submit_many(reqs)
    with pytest.raises(EngineError, match="poisoned clip"):
        futures[2].result(timeout=30)
    good = [f.result(timeout=30) for k, f in enumerate(futures) if k != 2]
    check(world, good, world.budgets.get("fast").thresholds)
    assert run_offline(engine, requests(world)[:1])[0].exit_step == good[0].exit_step
    engine.shutdown()
    assert obs.rejects == {"error": 1}


def test_shutdown_drains_in_flight_and_queued_work(world: World) -> None:
    engine, _ = make_engine(world, max_batch=2, max_active=2)
    engine.start()
    futures = [engine.submit(r) for r in requests(world)]
    engine.shutdown(drain=True)
    assert engine.draining
    results = [f.result(timeout=0) for f in futures]
    check(world, results, world.budgets.get("fast").thresholds)
    with pytest.raises(EngineDraining):
        engine.submit(EngineRequest(frames=world.clips[0]))


def test_shutdown_without_drain_fails_what_is_left(world: World) -> None:
    engine, obs = make_engine(world)
    futures: list[Future[EngineResult]] = [engine.submit(r) for r in requests(world)[:3]]
    engine.shutdown(drain=False)
    for f in futures:
        with pytest.raises(EngineDraining):
            f.result(timeout=0)
    assert obs.rejects == {"draining": 3}
