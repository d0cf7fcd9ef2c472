"""``adafocus loadtest --step-profile`` against a real `adafocus serve` (tiny random bundle): the schedule sent,
per-second rows that add up, the automatic budget switched on and back, the measured capacity, the CLI."""

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.http.corpus import load_corpus
from loadtest.http.step_load import StepLoadConfig, format_step_load, parse_profile, run_step_load
from loadtest.schedule import schedule
from service.cli import main
from tests.service.conftest import OPERATOR_TOKEN, Server, make_bundle, serve

PROFILE = ((0.5, 1.0), (2.0, 2.0), (0.5, 1.0))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("step-server")
    yield from serve(make_bundle(tmp / "tiny"), tmp, operator_token=OPERATOR_TOKEN)


def test_parse_profile() -> None:
    assert parse_profile("0.5:10, 3:30,0.5:20") == ((0.5, 10.0), (3.0, 30.0), (0.5, 20.0))
    for bad in ("3", "0:10", "1:-1", "a:b", ""):
        with pytest.raises(ValueError, match="factor:seconds"):
            parse_profile(bad)
    with pytest.raises(ValueError, match="token"):
        StepLoadConfig("http://x", PROFILE, slo_p99_s=0.5)


def test_step_profile_at_a_given_capacity_in_auto_mode(server: Server, corpus_dir: Path) -> None:
    cfg = StepLoadConfig(server.url, PROFILE, capacity=10.0, slo_p99_s=0.5, token=OPERATOR_TOKEN, seed=3)
    result = asyncio.run(run_step_load(cfg, load_corpus(corpus_dir), out=io.StringIO()))
    arrivals, spans = schedule(PROFILE, 10.0, 3)
    assert (result["capacity_per_s"], result["capacity_measured"], result["budget_mode"]) == (10.0, False, "auto")
    assert result["offered"] == result["answered_ok"] == len(arrivals) and result["answered_ok_fraction"] == 1.0
    assert result["errors_by_code"] == {}
    rows = result["per_second"]
    assert [r["t_s"] for r in rows] == list(range(len(rows))) and len(rows) >= 4
    assert sum(r["offered_per_s"] for r in rows) == sum(r["answered_per_s"] for r in rows) == len(arrivals)
    assert all(r["refused_per_s"] == 0 for r in rows)
    assert [r["offered_per_s"] for r in rows[:4]] == [sum(1 for a in arrivals if s <= a < s + 1) for s in range(4)]
    assert {r["level"] for r in rows if r["answered_per_s"]} <= {"low", "mid", "high"}
    assert all(r["level"] is None and r["p99_s"] is None for r in rows if not r["answered_per_s"])
    assert sum(result["levels_used"].values()) == len(arrivals)
    assert [(p["factor"], p["start_s"], p["end_s"]) for p in result["phases"]] == [
        (s["factor"], s["start_s"], s["end_s"]) for s in spans
    ]
    budget = httpx.get(f"{server.url}/budget").json()
    assert (budget["mode"], budget["name"]) == ("manual", "high")  # switched back to the level it had
    table = format_step_load(result).splitlines()
    assert table[0].startswith("capacity 10.00/s (given), budget auto, slo p99 0.500 s") and len(table) == 4 + len(rows)


def test_cli_step_profile_measures_the_capacity(
    server: Server, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["loadtest", "--url", server.url, "--corpus", str(corpus_dir), "--step-profile", "0.5:1,1:1"]
    assert main([*argv, "--requests", "8", "--concurrency", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["capacity_measured"] is True and result["capacity_per_s"] > 0
    assert result["budget_mode"] == "manual" and result["slo_p99_s"] is None
    assert result["offered"] == result["answered_ok"] == sum(r["answered_per_s"] for r in result["per_second"])
    assert result["levels_used"] == {"high": result["answered_ok"]}
    assert {r["level"] for r in result["per_second"] if r["answered_per_s"]} == {"high"}
    assert main([*argv, "--capacity", "4", "--slo-p99", "0.5"]) == 2
    assert "token" in capsys.readouterr().err
    assert main([*argv[:-1], "0.5", "--capacity", "4"]) == 2
