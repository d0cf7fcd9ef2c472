import json
import platform
import subprocess
import sys

import pytest

from loadtest.bench.decode import DecodeBenchConfig, run_decode_bench
from loadtest.bench.engine import EngineBenchConfig, _ratio_pairs, mode_label, parse_mode, run_engine_bench
from loadtest.bench.workload import Workload, load_workload
from loadtest.encode import DECODE_SPECS
from loadtest.schedule import Bound, poisson_arrivals
from service.cli import main


@pytest.fixture(scope="module")
def tiny() -> Workload:
    return load_workload(None, "tiny", clips=6, seed=0)


def test_tiny_workload_has_random_weights_and_ordered_hand_made_levels(tiny: Workload) -> None:
    assert "RANDOM weights" in tiny.source
    assert tiny.frames.shape == (6, 4, 32, 32, 3)
    assert [lvl.name for lvl in tiny.budgets.levels][-1] == "max"
    costs = [lvl.expected_gmacs for lvl in tiny.budgets.levels]
    assert costs == sorted(costs)
    assert tiny.budgets.get("max").thresholds == (0.0,) * (tiny.model.config.num_cubes + 1)


def test_engine_bench_counts_add_up_in_every_mode(tiny: Workload) -> None:
    cfg = EngineBenchConfig(
        levels=("min", "max"), saturation_requests=12, rates=(200.0,), rate_duration_s=0.3, deadline_s=5.0, clips=6
    )
    result = run_engine_bench(tiny, cfg)
    K = tiny.model.config.num_cubes
    arrivals = len(poisson_arrivals(200.0, Bound(duration_s=0.3), cfg.seed))
    assert [lvl["budget"] for lvl in result["levels"]] == ["min", "max"]
    for level in result["levels"]:
        runs = level["runs"]
        assert sorted((r["mode"], r["offered_rate"] or 0.0) for r in runs) == sorted(
            (m, rate) for m in ("continuous", "drain", "single") for rate in (0.0, 200.0)
        )
        for r in runs:
            assert r["completed"] + sum(r["failed"].values()) + r["rejected"] == r["submitted"]
            assert sum(r["exit_steps"].values()) == r["completed"]
            assert r["mean_batch"]["glance"] * r["steps"]["glance"] == pytest.approx(r["completed"])
            assert 0.0 < r["busy_fraction"] <= 1.0
            if r["offered_rate"] is None:
                assert r["submitted"] == r["completed"] == 12 and r["failed"] == {} and r["rejected"] == 0
            else:
                assert r["submitted"] + r["rejected"] == arrivals
            if r["mode"] == "single":
                assert r["mean_batch"]["glance"] == 1.0
                assert r["mean_batch"]["focus"] in (0.0, 1.0)
        assert set(level["ratios"]["saturation_videos_per_s"]) == {"continuous/drain", "continuous/single"}
        assert set(level["ratios"]["p99_at_rate"]["200"]) == {"drain/continuous", "single/continuous"}
    top = result["levels"][1]["runs"]
    for r in top:  # "max" never exits early: every video runs all K cubes
        assert r["exit_steps"] == {str(K): r["completed"]}
        assert r["gmacs_per_video"] == pytest.approx(tiny.costs.exit_gmacs[K])
        assert r["steps"]["focus"] * r["mean_batch"]["focus"] == pytest.approx(K * r["completed"])


def test_bench_engine_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "engine", "--config", "tiny", "--levels", "max", "--requests", "8", "--repeats", "2"]
    argv.append("--default-allocator")  # mallopt is process-wide: not in the test process (see the subprocess test)
    code = main(
        [*argv, "--rates", "100", "--rate-duration", "0.2", "--clips", "4", "--modes", "continuous,single", "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["modes"] == ["continuous", "single"] and result["allocator"] == "default"
    assert result["model"] == "tiny" and result["torch_threads"] == 1
    (level,) = result["levels"]
    assert [(r["mode"], r["offered_rate"]) for r in level["runs"]] == [
        ("continuous", None),
        ("single", None),
        ("continuous", 100.0),
        ("single", 100.0),
    ]
    assert [len(r["repeats_videos_per_s"]) for r in level["runs"][:2]] == [2, 2]
    assert [len(r["repeats_p99_s"]) for r in level["runs"][2:]] == [2, 2]


def test_bench_mode_labels_carry_min_glance_batch() -> None:
    assert [parse_mode(m) for m in ("continuous", "drain", "continuous-mg4")] == [
        ("continuous", 1),
        ("drain", 1),
        ("continuous", 4),
    ]
    assert mode_label("continuous", 1) == "continuous" and mode_label("continuous", 6) == "continuous-mg6"
    for bad in ("drain-mg4", "continuous-mg", "continuous-mgx", "continuous-mg0", "batch"):
        with pytest.raises(ValueError, match="unknown bench mode"):
            parse_mode(bad)
    assert _ratio_pairs(["continuous", "drain", "continuous-mg4"]) == [
        ("continuous", "drain"),
        ("continuous", "continuous-mg4"),
        ("continuous-mg4", "drain"),
    ]


def test_bench_engine_cli_min_glance_batch_adds_a_continuous_variant(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "engine", "--config", "tiny", "--levels", "max", "--requests", "8", "--repeats", "1", "--json"]
    argv.append("--default-allocator")
    variant = ["--modes", "continuous,drain", "--min-glance-batch", "3"]
    code = main([*argv, "--rates", "100", "--rate-duration", "0.2", "--clips", "4", "--max-batch", "4", *variant])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["modes"] == ["continuous", "drain", "continuous-mg3"]
    (level,) = result["levels"]
    sat = {r["mode"]: r for r in level["runs"] if r["offered_rate"] is None}
    assert {m: r["completed"] for m, r in sat.items()} == {"continuous": 8, "drain": 8, "continuous-mg3": 8}
    assert set(level["ratios"]["saturation_videos_per_s"]) == {
        "continuous/drain",
        "continuous/continuous-mg3",
        "continuous-mg3/drain",
    }
    assert main([*argv, "--modes", "continuous,drain-mg2"]) == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_steady_allocator_sets_glibc_malloc_in_a_fresh_process() -> None:
    code = "from loadtest.bench.workload import steady_allocator; print(steady_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "glibc mallopt: 1 arena, mmap threshold 32 MiB, trim threshold 1 GiB"


def test_decode_bench_decodes_real_files_in_a_worker_pool() -> None:
    cfg = DecodeBenchConfig(
        seconds=1.0,
        fps=10,
        width=64,
        height=48,
        num_frames=4,
        size=32,
        max_workers=1,
        clips_per_worker=1,
        specs=DECODE_SPECS[1:2],
    )
    result = run_decode_bench(cfg)
    (fmt,) = result["formats"]
    assert fmt["format"] == "h264-gop250" and fmt["file_bytes"] > 0
    (run,) = fmt["runs"]
    assert run["workers"] == 1 and run["clips"] == 6 and run["clips_per_s"] > 0 and run["speedup_vs_1"] == 1.0


def test_bench_mode_label_for_the_automatic_glance_batch() -> None:
    assert mode_label("continuous", None) == "continuous-auto"
    assert parse_mode("continuous-auto") == ("continuous", None)
    with pytest.raises(ValueError):
        parse_mode("drain-auto")


def test_ratios_pair_interleaved_repeats_and_report_median_and_range() -> None:
    from loadtest.report import format_ratio, ratio_stats

    stats = ratio_stats([200.0, 150.0, 300.0], [100.0, 100.0, 100.0])  # repeat i of one mode over repeat i
    assert stats == {"median": 2.0, "min": 1.5, "max": 3.0, "repeats": [1.5, 2.0, 3.0]}
    assert format_ratio(stats) == "2.00x (1.50-3.00x, 3 repeats)"
    assert ratio_stats([1.0, 3.0], [1.0, 1.0])["median"] == 2.0  # even count: mean of the middle two
