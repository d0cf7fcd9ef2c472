"""Where the engine benchmark's device time goes: per saturation run, the glance and focus calls (count, mean
batch, seconds inside the calls), and the floor no schedule can beat on the same requests (``schedule_floor``
over the simulated runner's stated curve), so that a mode ratio can be read against what any scheduler could reach:
drain's device time over the floor bounds continuous/drain at saturation."""

from __future__ import annotations

from typing import Any

from service.engine.batch_costs import StepCosts, schedule_floor
from service.engine.runners.simulated import SimulatedRunner


def stated_curve(runner: Any, cap: int) -> StepCosts | None:
    """The cost curve at batch sizes 1..cap where the runner states it (the simulated accelerator); else None."""
    if not isinstance(runner, SimulatedRunner):
        return None
    g, f = runner.profile.glance, runner.profile.focus
    return StepCosts(tuple(g.seconds(b) for b in range(1, cap + 1)), tuple(f.seconds(b) for b in range(1, cap + 1)))


def add_floors(levels: list[dict[str, Any]], curve: StepCosts | None) -> list[dict[str, Any]]:
    """Each saturation run gains ``floor_s``: the device seconds no schedule can go below on its requests."""
    if curve is None:
        return levels
    for level in levels:
        for run in level["runs"]:
            if run["offered_rate"] is None:
                run["floor_s"] = schedule_floor(curve, run["completed"], run["cubes"])
    return levels


def breakdown_markdown(result: dict[str, Any]) -> str:
    """Per level and mode, the median saturation run: calls x mean batch = seconds per stage, and the floor."""
    lines = [
        "| budget | mode | glance calls x batch = s | focus calls x batch = s | cubes | device s | wall s "
        "| floor s | drain device / floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in result["levels"]:
        runs = [r for r in level["runs"] if r["offered_rate"] is None and "device_s" in r]
        drain = next((r for r in runs if r["mode"] == "drain"), None)
        for r in runs:
            steps, batch, device = r["steps"], r["mean_batch"], r["device_s"]
            floor = r.get("floor_s")
            bound = f"{sum(drain['device_s'].values()) / floor:.2f}x" if floor and drain else "-"
            lines.append(
                f"| {level['budget']} | {r['mode']} | {steps['glance']} x {batch['glance']:.1f} = "
                f"{device['glance']:.3f} | {steps['focus']} x {batch['focus']:.1f} = {device['focus']:.3f} | "
                f"{r['cubes']} | {sum(device.values()):.3f} | {r['wall_s']:.3f} | "
                f"{'-' if floor is None else f'{floor:.3f}'} | {bound} |"
            )
    return "\n".join(lines)
