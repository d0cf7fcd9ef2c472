"""The load generator against a real `adafocus serve` (tiny random bundle): budget sweep, counts, /metrics."""

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.http.corpus import load_corpus
from loadtest.http.load import LoadConfig, run_load
from loadtest.schedule import Bound
from model.bundle import load_bundle
from model.macs import cost_report
from service.cli import main
from tests.service.conftest import OPERATOR_TOKEN, Server, make_bundle, serve


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("real-server")
    bundle = make_bundle(tmp / "tiny")
    yield from ((s, bundle) for s in serve(bundle, tmp, operator_token=OPERATOR_TOKEN))


def test_budget_sweep_against_the_real_server(real_server: tuple[Server, Path], corpus_dir: Path) -> None:
    server, bundle = real_server
    exit_gmacs = cost_report(load_bundle(bundle).model).exit_gmacs
    cfg = LoadConfig(server.url, Bound(requests=8), budgets=("low", "high"), token=OPERATOR_TOKEN, concurrency=4)
    result = asyncio.run(run_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))
    low, high = result["phases"]
    for phase in (low, high):
        assert phase["sent"] == phase["completed"] == 8 and phase["errors"] == 0
        assert phase["server"]["steps"]["glance"] >= 1
        assert 0 < phase["server"]["runner_busy_fraction"] <= 1
    assert low["exit_step_histogram"] == {"0": 8} and low["budgets"] == {"low": 8}
    assert high["exit_step_histogram"] == {str(len(exit_gmacs) - 1): 8} and high["budgets"] == {"high": 8}
    assert low["gmacs_per_video"] == pytest.approx(exit_gmacs[0])
    assert high["gmacs_per_video"] == pytest.approx(exit_gmacs[-1])
    assert low["server"]["steps"]["focus"] == 0 and high["server"]["steps"]["focus"] >= 3


def test_open_loop_against_the_real_server(real_server: tuple[Server, Path], corpus_dir: Path) -> None:
    server, _ = real_server
    cfg = LoadConfig(server.url, Bound(requests=12), mode="open", rates=(20.0,))
    (phase,) = asyncio.run(run_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))["phases"]
    assert phase["completed"] + phase["errors"] == phase["sent"] == 12
    assert phase["completed"] == 12
    assert phase["latency_s"]["p50"] is not None and phase["server"]["decode_ms_mean"] > 0


def test_streamed_load_times_the_first_event_and_the_answer(real_server: tuple[Server, Path], corpus_dir: Path) -> None:
    server, bundle = real_server
    cubes = load_bundle(bundle).config.num_cubes
    cfg = LoadConfig(server.url, Bound(requests=6), concurrency=2, stream=True)
    result = asyncio.run(run_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))
    assert result["stream"] is True
    (phase,) = result["phases"]
    assert (phase["sent"], phase["completed"], phase["errors"]) == (6, 6, 0)
    assert phase["budgets"] == {"high": 6} and phase["exit_step_histogram"] == {str(cubes): 6}
    stream = phase["stream"]
    assert stream["streamed"] == 6 and stream["result_s"] == phase["latency_s"]
    first, answer = stream["first_event_s"], stream["result_s"]
    for key in ("p50", "p90", "p99", "max", "mean"):  # each request's first event comes before its answer
        assert 0 < first[key] <= answer[key]


def test_streamed_load_counts_errors_before_the_first_event(real_server: tuple[Server, Path], corpus_dir: Path) -> None:
    server, _ = real_server
    cfg = LoadConfig(server.url, Bound(requests=3), concurrency=1, stream=True, request_budget="nope")
    (phase,) = asyncio.run(run_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))["phases"]
    assert (phase["sent"], phase["completed"], phase["errors"]) == (3, 0, 3)
    assert phase["errors_by_status"] == {"422": 3} and "stream" not in phase


def test_cli_stream_reports_the_first_event(
    real_server: tuple[Server, Path], corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = real_server
    argv = ["loadtest", "--url", server.url, "--corpus", str(corpus_dir), "--requests", "4", "--concurrency", "2"]
    assert main([*argv, "--stream", "--no-progress", "--json"]) == 0
    (phase,) = json.loads(capsys.readouterr().out)["phases"]
    assert phase["completed"] == phase["stream"]["streamed"] == 4
    assert main([*argv, "--stream", "--no-progress", "--markdown"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.endswith("| first event p50 ms | first event p99 ms |")
    assert row.startswith("| concurrency=2 | 4 | 4 | 0 |") and len(row.split("|")) == len(header.split("|"))
    assert main([*argv, "--stream", "--no-progress"]) == 0
    assert "first event p50 " in capsys.readouterr().out
