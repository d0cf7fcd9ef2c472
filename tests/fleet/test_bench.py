"""The decode-tier benchmark's arithmetic (no Ray cluster): CPU per video by role, and its table."""

from __future__ import annotations

import pytest

from fleet.bench import cpu_per_video, tier_markdown, tier_row
from tests.fleet.conftest import ray  # noqa: F401  (skips without Ray: fleet.bench imports it)


def test_cpu_per_video_counts_the_processes_alive_at_both_snapshots() -> None:
    before = {10: ("model", 1.0), 11: ("model", 0.5), 20: ("decode", 2.0), 30: ("proxy", 0.0), 40: ("decode", 9.0)}
    after = {10: ("model", 1.5), 11: ("model", 1.0), 20: ("decode", 3.0), 30: ("proxy", 0.25), 50: ("decode", 7.0)}
    # 40 exited and 50 started during the phase: neither is counted (no CPU seconds at both ends)
    assert cpu_per_video(before, after, videos=100) == {"model": 10.0, "decode": 10.0, "proxy": 2.5}


def test_the_table_has_a_row_per_layout() -> None:
    phase = {"throughput": 36.04, "busy": 0.918, "batch": 4.96, "cpu_ms": {"model": 13.4, "decode": 14.1, "proxy": 5.9},
             "completed": 738, "errors": 0, "latency_s": {"p50": 0.852, "p99": 1.559}}
    without = {**phase, "cpu_ms": {"model": 20.5, "decode": 0.0, "proxy": 6.7}}
    result = {"config": {"replicas": 1, "step_s": 0.02}, "rows": [tier_row(0, without), tier_row(2, phase)]}
    lines = tier_markdown(result).splitlines()
    assert lines[0].startswith("| layout (1 model replica(s), 20 ms per model call) | videos/s |")
    assert lines[2:] == [
        "| each model replica decodes (1 decoder process) | 36.0 | 0.92 | 4.96 | 20.5 / 0.0 / 6.7 | 0.852 | 1.559 | "
        "738 | 0 |",
        "| decode tier of 2 replica(s) | 36.0 | 0.92 | 4.96 | 13.4 / 14.1 / 5.9 | 0.852 | 1.559 | 738 | 0 |",
    ]


@pytest.mark.parametrize("videos", [0, 1])
def test_no_video_answered_divides_by_one(videos: int) -> None:
    assert cpu_per_video({1: ("proxy", 0.0)}, {1: ("proxy", 0.002)}, videos) == {"model": 0.0, "decode": 0.0,
                                                                                  "proxy": 2.0}
