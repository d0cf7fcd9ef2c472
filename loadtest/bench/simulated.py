"""The engine benchmark's side of the simulated accelerator (``service.engine.runners.simulated``): the workload
it serves and how a result names it, so that its numbers are labelled a simulation wherever they appear."""

from __future__ import annotations

from typing import Any

import torch

from loadtest.bench.workload import Workload, make_clips, quantile_budgets
from model.adafocus import AdaFocusV3
from model.config import get_config
from model.macs import cost_report
from service.engine.runners.simulated import SimulatedRunner, tiny_layers
from service.engine.runners.torch_runner import Runner


def runner_info(runner: Runner) -> dict[str, Any]:
    """The runner's name; for the simulated accelerator its cost curve, their source and the calls that overran."""
    if not isinstance(runner, SimulatedRunner):
        return {"name": runner.name, "simulated": False}
    profile = runner.profile
    return {
        "name": runner.name,
        "simulated": True,
        "profile": profile.label,
        "source": profile.source,
        "overruns": runner.overruns,  # calls whose own compute took longer than the curve's time
    }


def simulated_workload(config: str, clips: int, seed: int) -> Workload:
    """A named configuration's exit structure (frames, cubes, classes, skips) at the tiny model's layer sizes and
    random weights, for the simulated runner: its outputs only decide where requests exit (the simulated runner
    sets the time of every call), so the CPU computes little. Budget levels as ``quantile_budgets`` makes them."""
    torch.manual_seed(seed)
    model = AdaFocusV3(tiny_layers(get_config(config))).eval()
    costs = cost_report(model)
    frames, labels, clip_source = make_clips(model.config, clips, seed)
    budgets = quantile_budgets(model, costs, frames)
    source = (
        f"config {config!r} at the tiny model's layer sizes ({model.config.num_cubes} cubes), RANDOM weights, for the "
        "SIMULATED runner; budget levels hand-made from entropy quantiles"
    )
    return Workload(model, budgets, costs, frames, labels, source, clip_source)


def runner_line(info: dict[str, Any]) -> str:
    """The runner line of the text report: a simulated one says so, with its curve and overruns."""
    if not info.get("simulated"):
        return f"runner {info.get('name', '?')}"
    return (
        f"runner {info['name']}: SIMULATED accelerator, {info['profile']} ({info['source']}); "
        f"{info['overruns']} calls overran the curve"
    )
