"""The CPU priority rule of decodes: a timeline's pass runs at the worker's nice value raised by the setting, capped
at Linux's lowest priority; the thread that runs it takes the raise and the caller's own value stays."""

from __future__ import annotations

import os
import threading

import pytest

from service.decode.priority import MAX_NICE, run_niced, thread_nice, timeline_nice


@pytest.mark.parametrize(
    ("base", "increment", "want"),
    [(0, 10, 10), (0, 0, 0), (5, 10, 15), (12, 10, 19), (19, 5, 19), (0, 19, 19), (-5, 10, 5)],
)
def test_the_timeline_runs_at_the_workers_value_raised_and_capped(base: int, increment: int, want: int) -> None:
    assert timeline_nice(base, increment) == want


def test_a_negative_increment_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        timeline_nice(0, -1)


def test_the_pass_thread_is_niced_and_the_caller_is_not() -> None:
    before = thread_nice()
    seen: list[tuple[int, int]] = []
    run_niced(lambda: seen.append((thread_nice(), threading.get_native_id())), 3)
    assert seen == [(min(MAX_NICE, before + 3), seen[0][1])] and seen[0][1] != threading.get_native_id()
    assert thread_nice() == before == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_pass_threads_exception_reaches_the_caller() -> None:
    def fail() -> None:
        raise RuntimeError("the pass broke")

    with pytest.raises(RuntimeError, match="the pass broke"):
        run_niced(fail, 1)
