"""Fairness between requests that come in groups (the segments of one long video) and single clips: which of the
waiting requests a step admits (pure: no torch, no numpy, no clock).

The scheduler's admission rules (``service.engine.scheduler``, ``service.engine.admission``) decide *how many*
waiting requests a step admits; this module decides *which*. Two rules:
- a cap: one group never holds more than ``group_max_active`` active slots (``EngineConfig.group_max_active``,
  ``ADAFOCUS_GROUP_MAX_ACTIVE``); its further requests wait while others are admitted past them;
- round robin: the groups waiting take turns, one request each per round, in the order of each group's oldest
  waiting request; within a group, first come first served. A request without a group is a group of its own, so
  with no groups waiting the order is plain FIFO, as before.
A 300-segment video therefore holds at most the cap of the slots, and a single clip that arrives behind it waits
for at most one round, not for the video.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def group_key(request_id: int, group: str | None) -> str:
    """The group a request counts in: its own, or (none given) a group of one."""
    return f"#{request_id}" if group is None else f"g:{group}"


def active_per_group(running: Iterable[tuple[int, str | None]]) -> dict[str, int]:
    """Active slots per group, of the running ``(request id, group)`` pairs."""
    counts: dict[str, int] = {}
    for rid, group in running:
        key = group_key(rid, group)
        counts[key] = counts.get(key, 0) + 1
    return counts


def pick(
    waiting: Sequence[tuple[int, str | None]], active: Mapping[str, int], n: int, group_cap: int
) -> list[int]:
    """Up to ``n`` of the ``waiting`` ``(request id, group)`` pairs (queue order) to admit now, in admission order:
    round robin across groups in the order of their oldest waiting request, none past ``group_cap`` active."""
    if n <= 0:
        return []
    queues: dict[str, list[int]] = {}
    for rid, group in waiting:  # dicts keep insertion order: groups by their oldest waiting request
        queues.setdefault(group_key(rid, group), []).append(rid)
    room = {key: group_cap - active.get(key, 0) for key in queues}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        took = False
        for key, rids in queues.items():
            if depth < len(rids) and depth < room[key]:
                chosen.append(rids[depth])
                took = True
                if len(chosen) == n:
                    break
        if not took:
            break
        depth += 1
    return chosen


def check(active: Mapping[str, int], group_cap: int) -> None:
    """The invariant: no group holds more than ``group_cap`` active slots."""
    over = {key: count for key, count in active.items() if count > group_cap}
    assert not over, f"groups over their cap of {group_cap} active slots: {over}"
