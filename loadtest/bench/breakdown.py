"""Where the engine benchmark's device time goes: per saturation run, the glance and focus calls (count, mean
batch, seconds inside the calls as the engine timed them: the curve plus the CPU's work around each call), and,
for the simulated runner, the seconds its stated curve gives those calls and the floor no schedule can beat on the
same requests (``schedule_floor``), so that a mode ratio can be read against what any scheduler could reach: drain's
time on the curve over the floor bounds continuous/drain at saturation, single's bounds continuous/single."""

from __future__ import annotations

from typing import Any

from service.engine.batch_costs import StepCosts, schedule_floor
from service.engine.runners.simulated import SimulatedRunner, StepProfile


def stated_profile(runner: Any) -> StepProfile | None:
    """The cost curve where the runner states it (the simulated accelerator); else None."""
    return runner.profile if isinstance(runner, SimulatedRunner) else None


def add_floors(levels: list[dict[str, Any]], profile: StepProfile | None, cap: int) -> list[dict[str, Any]]:
    """Each saturation run gains ``curve_s``, the seconds ``profile`` gives its calls (linear: calls x a + samples
    x c per stage), and ``floor_s``, the device seconds no schedule can go below on its requests."""
    if profile is None:
        return levels
    sizes = range(1, cap + 1)
    curve = StepCosts(tuple(profile.glance.seconds(b) for b in sizes), tuple(profile.focus.seconds(b) for b in sizes))
    for level in levels:
        for run in level["runs"]:
            if run["offered_rate"] is None:
                steps, batch = run["steps"], run["mean_batch"]
                run["curve_s"] = sum(
                    steps[stage] * (t.a + t.c * batch[stage])
                    for stage, t in (("glance", profile.glance), ("focus", profile.focus))
                )
                run["floor_s"] = schedule_floor(curve, run["completed"], run["cubes"])
    return levels


def breakdown_markdown(result: dict[str, Any]) -> str:
    """Per level and mode, the median saturation run: calls x mean batch = seconds per stage, and the floor."""
    lines = [
        "| budget | mode | glance calls x batch = s | focus calls x batch = s | cubes | in calls s | wall s "
        "| on the curve s | floor s | on the curve / floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in result["levels"]:
        runs = [r for r in level["runs"] if r["offered_rate"] is None and "device_s" in r]
        for r in runs:
            steps, batch, device = r["steps"], r["mean_batch"], r["device_s"]
            floor, curve = r.get("floor_s"), r.get("curve_s")
            stated = "- | - | -"
            if floor is not None and curve is not None:
                stated = f"{curve:.3f} | {floor:.3f} | {curve / floor:.2f}x"
            lines.append(
                f"| {level['budget']} | {r['mode']} | {steps['glance']} x {batch['glance']:.1f} = "
                f"{device['glance']:.3f} | {steps['focus']} x {batch['focus']:.1f} = {device['focus']:.3f} | "
                f"{r['cubes']} | {sum(device.values()):.3f} | {r['wall_s']:.3f} | {stated} |"
            )
    return "\n".join(lines)
