"""Fairness between request groups (a long video's segments) and single clips: the pure pick, table-tested with
hand-built states, and the scheduler using it, its invariants checked at every step."""

import random

import pytest

from service.engine.config import EngineConfig
from service.engine.fairness import active_per_group, check, group_key, pick
from service.engine.scheduler import RequestOutput, Scheduler

V = "video"  # one long video's group
W = "other-video"

# (waiting (id, group) in queue order, active per group, n, cap) -> the ids admitted, in order
CASES = [
    pytest.param([(0, None), (1, None), (2, None)], {}, 2, 4, [0, 1], id="no groups: FIFO"),
    pytest.param([(0, V), (1, V), (2, V), (3, None)], {}, 3, 8, [0, 3, 1], id="round robin: the clip's turn comes"),
    pytest.param([(0, V), (1, V), (2, V), (3, None)], {"g:video": 2}, 4, 3, [0, 3], id="capped group: one more slot"),
    pytest.param([(0, V), (1, V), (2, None)], {"g:video": 3}, 3, 3, [2], id="group at its cap waits"),
    pytest.param(
        [(0, V), (1, V), (2, W), (3, W), (4, None)], {}, 5, 8, [0, 2, 4, 1, 3], id="two videos and a clip alternate"
    ),
    pytest.param([(0, V), (1, V)], {}, 0, 8, [], id="n = 0"),
    pytest.param([(5, None), (6, V), (7, V)], {"#5": 0}, 8, 1, [5, 6], id="cap 1: one per group"),
]


@pytest.mark.parametrize(("waiting", "active", "n", "cap", "admitted"), CASES)
def test_pick_table(
    waiting: list[tuple[int, str | None]], active: dict[str, int], n: int, cap: int, admitted: list[int]
) -> None:
    assert pick(waiting, active, n, cap) == admitted


def test_group_keys_and_the_cap_invariant() -> None:
    assert group_key(3, None) == "#3" and group_key(3, V) == "g:video"
    counts = active_per_group([(0, V), (1, V), (2, None)])
    assert counts == {"g:video": 2, "#2": 1}
    check(counts, 2)
    with pytest.raises(AssertionError, match="over their cap"):
        check(counts, 1)


def scheduler(cap: int, max_batch: int = 4, max_active: int = 8) -> Scheduler:
    config = EngineConfig(max_batch=max_batch, max_active=max_active, max_queue=400, group_max_active=cap)
    return Scheduler(config, 3)


def step(s: Scheduler, exits: set[int]) -> list[int]:
    """One step where the requests in ``exits`` leave at their next exit and the rest advance; returns who left."""
    plan = s.plan()
    out = {rid: RequestOutput(exit_index=0, exited=rid in exits) for rid in plan.glance}
    for rid in plan.focus:
        out[rid] = RequestOutput(exit_index=s.running[rid].exit_index + 1, exited=rid in exits, cubes_run=1)
    return [f.request_id for f in s.apply(plan, out)]


def test_a_long_video_holds_at_most_its_cap_and_a_clip_behind_it_gets_the_next_free_slot() -> None:
    s = scheduler(cap=3)
    for rid in range(300):
        s.add(rid, group=V)
    s.add(1000)  # a single clip, behind 300 segments
    plan = s.plan()
    assert plan.glance == (0, 1000, 1, 2)  # round robin: the clip's glance in the very first batch
    s.apply(plan, {rid: RequestOutput(exit_index=0) for rid in plan.glance})
    assert sorted(s.running) == [0, 1, 2, 1000] and s.num_waiting == 297
    s.add(1001)
    assert step(s, exits=set()) == [] and 1001 in s.running  # the video is at its cap: the new clip goes first


def test_random_mix_keeps_the_cap_every_step_and_finishes_everyone() -> None:
    rng = random.Random(7)
    s = scheduler(cap=3, max_batch=4, max_active=8)
    left: list[int] = []
    next_id = 0
    for _ in range(400):
        if rng.random() < 0.3:
            group = rng.choice([V, W, None, None])
            for _ in range(rng.randint(1, 6) if group else 1):
                s.add(next_id, group=group)
                next_id += 1
        if s.has_work:
            exits = {rid for rid in s.running if rng.random() < 0.4}
            left += step(s, exits)  # plan() and apply() assert the invariants, the cap among them
            groups = active_per_group((r.request_id, r.group) for r in s.running.values())
            assert max(groups.values(), default=0) <= 3
    while s.has_work:
        left += step(s, set(s.running))
    assert sorted(left) == list(range(next_id))


def test_the_cap_is_validated() -> None:
    with pytest.raises(ValueError, match="group_max_active"):
        EngineConfig(group_max_active=0)
