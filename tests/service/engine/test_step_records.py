"""The engine's step records of a traced request (``EngineRequest.record_steps``): one per model call it took part
in, in order, with that call's batch size; none for a request that is not traced."""

from __future__ import annotations

from collections import Counter

from service.engine.engine import run_offline
from tests.service.engine.tiny import World, check, make_engine, requests


def test_a_traced_request_records_every_model_call_it_took_part_in(world: World) -> None:
    engine, obs = make_engine(world, mode="continuous", max_batch=4, max_active=6)
    results = run_offline(engine, requests(world, record_steps=True))
    engine.shutdown()
    check(world, results, world.budgets.get("fast").thresholds)  # recording changes no answer
    calls = Counter((s.stage, s.start) for r in results for s in r.steps)  # records per model call
    for r in results:
        glance, *cubes = r.steps
        assert (glance.stage, glance.exit_index) == ("glance", 0)
        assert [s.stage for s in cubes] == ["focus"] * r.cubes_used  # skipped cubes cost no call
        indices = [s.exit_index for s in r.steps]
        assert indices == sorted(set(indices)) and indices[-1] == r.exit_step
        assert [s.exited for s in r.steps] == [False] * len(cubes) + [r.exit_reason == "confident"]
        assert all(a.start <= a.end <= b.start for a, b in zip(r.steps, r.steps[1:], strict=False))
        assert all(s.batch_size == calls[s.stage, s.start] for s in r.steps)
        assert r.queue_seconds >= 0 and glance.start - r.queue_seconds >= 0
    for stage in ("glance", "focus"):  # every model call the observer saw, and no other
        assert sorted(obs.batch_sizes(stage)) == sorted(n for (s, _), n in calls.items() if s == stage)


def test_an_untraced_request_records_nothing(world: World) -> None:
    engine, _ = make_engine(world, mode="continuous", max_batch=4, max_active=6)
    results = run_offline(engine, requests(world))
    engine.shutdown()
    assert [r.steps for r in results] == [()] * len(results)
