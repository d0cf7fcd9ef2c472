"""``adafocus bench e2e --quick`` end to end against a tiny bundle: a real ``adafocus serve`` (uvicorn, decoder
processes), a real closed-loop client, the in-process engine and the decode pool; structure and relations only."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import e2e as e2e_bench
from loadtest.bench.e2e import BenchServer, E2EBenchConfig, run_e2e_bench
from loadtest.http.hey_client import HEY_CLIENT, PYTHON_CLIENT, HeyHung, parse_hey, run_hey
from service.cli import main
from tests.service.conftest import make_bundle

PARTS = ("server_main", "decode_workers", "server_other_children", "client", "other_processes")
HEY_OUTPUT = """
Summary:
  Total:	10.1678 secs
  Slowest:	0.4012 secs
  Fastest:	0.0596 secs
  Requests/sec:	64.0200

Latency distribution:
  10% in 0.1917 secs
  50% in 0.2307 secs
  99% in 0.3837 secs

Status code distribution:
  [200]	649 responses
  [503]	2 responses

Error distribution:
  [3]	Post "http://127.0.0.1:8765/classify": context deadline exceeded
"""


def test_parse_hey_counts_answers_errors_and_percentiles() -> None:
    assert parse_hey(HEY_OUTPUT) == {"ok": 649, "errors": 5, "p50": 0.2307, "p99": 0.3837}
    no_p99 = HEY_OUTPUT.replace("  99% in 0.3837 secs\n", "")  # hey skips a rank that under 100 answers miss
    assert parse_hey(no_p99)["p99"] == 0.4012  # the slowest answer instead


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("e2e") / "tiny")


def quick_run(
    bundle: Path, tmp_path: Path, client: str, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], str]:
    out = tmp_path / "e2e.json"
    argv = ["bench", "e2e", "--quick", "--bundle", str(bundle), "--clips", "2", "--concurrency", "4"]
    assert main([*argv, "--duration", "1.5", "--client", client, "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_a_hey_that_never_exits_is_killed(tmp_path: Path) -> None:
    spinning = tmp_path / "hey"
    spinning.write_text("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.1; done\n")  # ignores SIGTERM, as the hung one
    spinning.chmod(0o755)
    body = tmp_path / "body.bin"
    body.write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(HeyHung, match="killed"):
        run_hey(str(spinning), "http://127.0.0.1:9", [body, body], 2, duration_s=0.1, timeout_s=0.1, grace_s=0.5)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("client", ["python", "hey"])
def test_quick_run_reports_rates_ratios_and_the_cpu_split(
    bundle: Path, tmp_path: Path, client: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if client == "hey" and shutil.which("hey") is None:
        pytest.skip("hey is not installed (Debian: apt-get install hey)")
    result, text = quick_run(bundle, tmp_path, client, capsys)
    assert result["client"] == {"name": HEY_CLIENT if client == "hey" else PYTHON_CLIENT, "concurrency": 4,
                                "duration_s": 1.5}
    assert result["repeats"] == len(result["rounds"]) == 3  # --quick still interleaves 3 rounds
    assert result["budget"] == "high" and result["server"]["decode_workers"] == 2
    for r in result["rounds"]:
        http, engine, decode = r["http"], r["engine"], r["decode"]
        assert http["answered"] > 0 and http["errors"] == 0 and http["requests_per_s"] > 0
        assert http["decode_workers"] == 2 and 0 < http["runner_busy_fraction"] <= 1
        assert engine["videos_per_s"] > 0 and engine["mode"] == "continuous"
        assert decode["clips"] == 8 and decode["clips_per_s"] > 0
        assert decode["cpu_ms_per_clip"] > 0 and decode["bare_decode_cpu_ms_per_clip"] > 0
        cpu = http["cpu_s"]
        assert cpu["server_main_s"] > 0 and cpu["decode_workers_s"] > 0 and cpu["client_s"] >= 0
        ours = sum(cpu[f"{part}_s"] for part in PARTS if part != "other_processes")
        assert ours + cpu["other_processes_s"] == pytest.approx(cpu["machine_busy_s"])
        assert ours <= cpu["machine_busy_s"] * 1.05 + 0.1  # the processes' ticks fit in the machine's
    http = [r["http"]["requests_per_s"] for r in result["rounds"]]
    engine = [r["engine"]["videos_per_s"] for r in result["rounds"]]
    ratios = result["ratios"]["http_vs_in_process"]
    assert ratios["repeats"] == pytest.approx(sorted(a / b for a, b in zip(http, engine, strict=True)))
    assert ratios["median"] == pytest.approx(statistics.median(ratios["repeats"]))
    assert result["summary"]["http_requests_per_s"]["median"] == pytest.approx(statistics.median(http))
    decode = result["ratios"]["decode_pool_cpu_vs_bare"]
    assert result["targets"]["http_vs_in_process"]["met"] == (ratios["median"] >= 0.6)
    assert result["targets"]["decode_pool_cpu_vs_bare"]["met"] == (decode["median"] <= 1.3)
    assert set(result["summary"]["cpu_share_of_machine_busy"]) == set(PARTS)
    assert "HTTP requests/s" in text and "HTTP / in-process" in text and "decode pool / bare decode" in text
    assert result["client"]["name"] in text


@pytest.mark.parametrize("failing", ["DecodePool", "TorchRunner", "ProcessPoolExecutor"])
def test_a_bench_that_fails_to_set_up_stops_the_server_it_started(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    servers: list[BenchServer] = []

    class RecordedServer(BenchServer):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            servers.append(self)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{failing} refused")

    monkeypatch.setattr(e2e_bench, "BenchServer", RecordedServer)
    monkeypatch.setattr(e2e_bench, failing, refuse)
    with pytest.raises(RuntimeError, match=f"^{failing} refused$"):
        run_e2e_bench(E2EBenchConfig(bundle=str(bundle), clips=2, client="python"))
    (server,) = servers
    assert server.process.returncode is not None and server.process.poll() is not None  # stopped and reaped
