"""`adafocus bench engine --quick` with the real runner and with the simulated accelerator: the CI smoke of both."""

import json

import pytest

from loadtest.bench.breakdown import breakdown_markdown
from loadtest.bench.engine import admission_rule, parse_mode, repeats_markdown
from service.cli import main

QUICK = ["bench", "engine", "--config", "tiny", "--quick", "--levels", "max", "--clips", "4", "--json"]
QUICK.append("--default-allocator")  # mallopt is process-wide: not in the test process


@pytest.mark.parametrize("runner", ["torch", "simulated:a=3,c=0.1"])
def test_the_quick_mode_of_both_runners(runner: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*QUICK, "--runner", runner]) == 0
    result = json.loads(capsys.readouterr().out)
    info = result["runner"]
    if runner == "torch":
        assert info == {"name": "torch", "simulated": False}
    else:
        assert (info["name"], info["simulated"]) == ("simulated(torch)", True)
        assert (info["profile"], info["source"]) == ("glance 3+0.1b ms, focus 3+0.1b ms", "stated: a=3,c=0.1")
    assert result["model"] == "tiny" and result["settings"]["repeats"] == 3  # a smoke run still interleaves 3
    (level,) = result["levels"]
    assert [(r["mode"], r["offered_rate"] is None) for r in level["runs"]] == [
        ("continuous", True),
        ("drain", True),
        ("single", True),
        ("continuous", False),
        ("drain", False),
        ("single", False),
    ]
    for r in level["runs"]:
        assert r["completed"] + sum(r["failed"].values()) + r["rejected"] == r["submitted"]
        assert len(r["repeats_videos_per_s"] if r["offered_rate"] is None else r["repeats_p50_s"]) == 3
    assert set(level["ratios"]["saturation_videos_per_s"]) == {"continuous/drain", "continuous/single"}
    for r in level["runs"][:3]:  # saturation: the device time inside the calls, and (simulated) the floor
        assert 0 < r["cubes"] <= sum(int(step) * count for step, count in r["exit_steps"].items())  # skips
        assert r["device_s"]["glance"] > 0 and ("floor_s" in r) == (runner != "torch")
        if runner != "torch":  # every call sleeps to its curve: no schedule's device time is below the floor
            assert sum(r["device_s"].values()) >= r["curve_s"] * 0.999 >= r["floor_s"] * 0.999
    table = breakdown_markdown(result).splitlines()
    assert len(table) == 2 + 3 and table[2].startswith("| max | continuous | ")


def test_a_runner_that_is_neither_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*QUICK, "--runner", "simulated:b=1"]) == 2
    assert main([*QUICK, "--runner", "tpu"]) == 2
    assert capsys.readouterr().err.count("adafocus bench engine: --runner:") == 2


def test_eager_mode_labels_name_the_old_admission() -> None:
    assert parse_mode("continuous-eager") == ("continuous", 1) and admission_rule("continuous-eager") == "eager"
    assert parse_mode("continuous-mg4-eager") == ("continuous", 4) and admission_rule("continuous") == "cost"
    with pytest.raises(ValueError, match="unknown bench mode"):
        parse_mode("drain-eager")


def test_the_repeats_table_gives_median_and_range_of_every_repeat() -> None:
    def run(mode: str, rate: float | None, values: list[float]) -> dict[str, object]:
        key = "repeats_videos_per_s" if rate is None else "repeats_p99_s"
        extra = {} if rate is None else {"repeats_p50_s": [v / 2 for v in values]}
        return {"mode": mode, "offered_rate": rate, key: values, **extra}

    level = {
        "budget": "max",
        "runs": [run("continuous", None, [30.0, 10.0, 20.0]), run("continuous", 8.0, [0.3, 0.1, 0.2])],
        "ratios": {},
    }
    result = {"runner": {"name": "torch", "simulated": False}, "settings": {"repeats": 3}, "levels": [level]}
    assert repeats_markdown(result).splitlines()[:5] == [
        "runner torch; 3 interleaved repeats",
        "",
        "| budget | mode | saturation videos/s | offered load | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        "| max | continuous | 20.0 (10.0-30.0) | 8.0/s | 100 (50-150) | 200 (100-300) |",
    ]
