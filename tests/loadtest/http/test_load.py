import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest

from loadtest.http.corpus import load_corpus
from loadtest.http.load import LoadConfig, run_load
from loadtest.schedule import HARD_MAX_REQUESTS, Bound, poisson_arrivals
from service.cli import main
from tests.loadtest.conftest import CORPUS_SIZE, TOKEN, FakeServer


def run(cfg: LoadConfig, corpus_dir: Path) -> dict:
    return asyncio.run(run_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))


def test_poisson_schedule_has_the_asked_for_mean_rate() -> None:
    times = poisson_arrivals(50.0, Bound(requests=20_000), seed=0)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert len(times) == 20_000
    assert abs(gaps.mean() - 1 / 50) < 0.02 * (1 / 50)  # mean gap within 2% (std error is 0.7%)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential gaps: coefficient of variation 1
    timed = poisson_arrivals(50.0, Bound(duration_s=200.0), seed=1)
    assert timed.max() < 200.0
    assert abs(len(timed) - 10_000) < 4 * np.sqrt(10_000)


def test_bounds_are_always_finite() -> None:
    assert Bound.of(None, None).duration_s == 30.0
    assert Bound.of(None, 10).max_duration_s == 3600.0
    with pytest.raises(ValueError, match="requests must be"):
        Bound(requests=HARD_MAX_REQUESTS + 1)
    assert len(poisson_arrivals(1e6, Bound(duration_s=1.0))) <= HARD_MAX_REQUESTS


def test_open_loop_counts_add_up_with_errors(server: FakeServer, corpus_dir: Path) -> None:
    server.behaviour.reject_every = 4
    server.behaviour.latency_s = 0.01
    bound = Bound(duration_s=1.5)
    result = run(LoadConfig(server.url, bound, mode="open", rates=(40.0,), seed=3), corpus_dir)
    (phase,) = result["phases"]
    expected = len(poisson_arrivals(40.0, bound, seed=3))
    assert phase["sent"] == expected == server.behaviour.received
    assert phase["completed"] + phase["errors"] == phase["sent"]
    assert phase["unanswered"] == 0
    assert phase["errors"] == server.behaviour.rejected == expected // 4
    assert phase["errors_by_status"] == {"503": expected // 4}
    assert phase["errors_by_code"] == {"queue_full": expected // 4}
    assert phase["elapsed_s"] < 1.5 + 1.0
    # from the two /metrics scrapes: one 0.01 s "model call" (a batch of 1) per answered request
    server_side = phase["server"]
    assert server_side["steps"] == {"glance": phase["completed"], "focus": 0}
    assert server_side["mean_batch"] == {"glance": 1.0, "focus": None}
    assert server_side["runner_busy_fraction"] == pytest.approx(phase["completed"] * 0.01 / phase["elapsed_s"], 0.1)


def test_open_loop_latency_counts_from_the_intended_send_time(server: FakeServer, corpus_dir: Path) -> None:
    # a server with capacity 10/s offered 25/s: a queue builds; a closed-loop view would report ~0.1 s
    server.behaviour.serial = True
    server.behaviour.latency_s = 0.1
    bound = Bound(duration_s=1.0)
    arrivals = poisson_arrivals(25.0, bound, seed=5)
    result = run(LoadConfig(server.url, bound, mode="open", rates=(25.0,), seed=5), corpus_dir)
    (phase,) = result["phases"]
    assert phase["completed"] == len(arrivals)
    # the last request cannot finish before n service times; its latency counts from its intended send
    assert phase["latency_s"]["max"] >= len(arrivals) * 0.1 - arrivals[-1] - 0.05
    assert phase["latency_s"]["max"] > 0.8


def test_closed_loop_stops_at_its_request_bound(server: FakeServer, corpus_dir: Path) -> None:
    result = run(LoadConfig(server.url, Bound(requests=25), concurrency=4), corpus_dir)
    (phase,) = result["phases"]
    assert phase["sent"] == phase["completed"] == server.behaviour.received == 25
    assert phase["errors"] == 0
    assert phase["concurrency"] == 4


def test_closed_loop_stops_at_its_duration_bound(server: FakeServer, corpus_dir: Path) -> None:
    server.behaviour.latency_s = 0.05
    result = run(LoadConfig(server.url, Bound(duration_s=1.0), concurrency=2), corpus_dir)
    (phase,) = result["phases"]
    assert phase["elapsed_s"] < 1.0 + 0.5
    assert 2 <= phase["sent"] <= 2 * (1.0 / 0.05) + 2
    assert phase["sent"] == phase["completed"] == server.behaviour.received


def test_budget_sweep_switches_levels_reports_accuracy_and_restores(server: FakeServer, corpus_dir: Path) -> None:
    cfg = LoadConfig(server.url, Bound(requests=CORPUS_SIZE), budgets=("low", "high"), token=TOKEN, concurrency=2)
    result = run(cfg, corpus_dir)
    low, high = result["phases"]
    assert (low["budget_level"], high["budget_level"]) == ("low", "high")
    assert low["budgets"] == {"low": CORPUS_SIZE} and high["budgets"] == {"high": CORPUS_SIZE}
    assert low["gmacs_per_video"] == pytest.approx(0.1) and high["gmacs_per_video"] == pytest.approx(0.3)
    assert low["exit_step_histogram"] == {"1": CORPUS_SIZE} and high["exit_step_histogram"] == {"3": CORPUS_SIZE}
    assert low["accuracy"] == pytest.approx(5 / 6)  # every video once; clip_0 is labelled wrong on purpose
    assert server.behaviour.budget == "high"  # restored
    assert server.behaviour.version == 1 + 3  # low, high, restore
    with pytest.raises(ValueError, match="needs the operator token"):
        LoadConfig(server.url, Bound(requests=1), budgets=("low",))


def test_budget_sweep_with_a_bad_token_fails_loudly(server: FakeServer, corpus_dir: Path) -> None:
    cfg = LoadConfig(server.url, Bound(requests=2), budgets=("low",), token="wrong")
    with pytest.raises(RuntimeError, match="PUT /budget 'low' failed: 401"):
        run(cfg, corpus_dir)
    assert server.behaviour.received == 0


def test_an_unreachable_server_fails_fast(corpus_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match=r"cannot reach http://127\.0\.0\.1:9"):
        run(LoadConfig("http://127.0.0.1:9", Bound(requests=1)), corpus_dir)
    assert main(["loadtest", "--url", "http://127.0.0.1:9", "--corpus", str(corpus_dir), "--requests", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_cli_rate_and_budget_sweep_writes_json_and_plots(
    server: FakeServer, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["loadtest", "--url", server.url, "--corpus", str(corpus_dir), "--rate-sweep", "10,20", "--requests", "6"]
    argv += ["--budget-sweep", "all", "--token", TOKEN, "--json", "--no-progress", "--plots", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(p["budget_level"], p["offered_rate"]) for p in result["phases"]] == [
        ("low", 10.0),
        ("low", 20.0),
        ("high", 10.0),
        ("high", 20.0),
    ]
    assert [p["sent"] for p in result["phases"]] == [6, 6, 6, 6]
    assert server.behaviour.received == 24
    assert result["phases"][0]["accuracy"] == pytest.approx(5 / 6)
    assert sorted(Path(p).name for p in result["plots"]) == [
        "loadtest_accuracy_gmacs.png",
        "loadtest_latency_throughput.png",
    ]
    assert all(Path(p).stat().st_size > 1000 for p in result["plots"])
