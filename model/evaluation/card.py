"""The model card and the paper's Figure 6, drawn from an evaluation report (``model.evaluation.report``).

``adafocus calibrate`` writes both into the bundle; every number comes from the report built on the test split,
with the thresholds solved on the calibration split. The card keeps the ``## Training`` section that
``adafocus train`` wrote and any ``## Diagnosis`` and ``## Ablations`` sections (measured by separate runs, see
their commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from model.config import AdaFocusConfig
from model.evaluation.report import targets_summary
from model.evaluation.served import served_section

DATA_TEXT = {
    "fashion": (
        "Data: the moving Fashion-MNIST benchmark of `model/data/fashion.py`: real product images (Debian's "
        "`dataset-fashion-mnist`, MIT licence) moving over a cluttered, panning background among distractors cut from "
        "other products with their blocks shuffled. Each clip draws one of three kinds: `clear` (a large clean product "
        "the low-resolution glance can classify), `small` (a small clean product one well-placed cube can classify) "
        "and `degraded` (every frame hides a different part of the product behind an occluder, with noise, blur and "
        "partial visibility, so that cubes on different frames add up). Train clips use train images 0-53,999, "
        "calibration clips train images 54,000-59,999, test clips the t10k images."
    ),
    "synth": (
        "Data: the procedural focus benchmark of `model/data/synth.py`. Each clip hides its class in a small textured "
        "patch (a 4x4 binary tile repeated; every 4x4 window has the same mean, so the low-resolution glance sees a "
        "uniform square) that is visible for a few frames at a random place and time, among moving distractors and a "
        "panning, noisy background. Exit 0 (glance only) is at chance by construction."
    ),
}


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no cheaper-or-equal point beats, cheapest first (the Pareto frontier)."""
    out: list[tuple[float, float]] = []
    for g, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or a > out[-1][1]:
            out.append((g, a))
    return out


def draw_figure6(path: Path, report: dict[str, Any], title: str) -> None:
    """Test accuracy vs MMACs/video: entropy exits (the Pareto frontier of the calibration-chosen threshold sets),
    random exits with the same shares, the fixed-count mixing line, fixed cube counts (learned and random
    centres) and the shipped levels."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=110)
    curve = report["curve"]
    front = _frontier([(p["gmacs"], p["accuracy"]) for p in curve])
    ax.plot([g * 1e3 for g, _ in front], [a * 100 for _, a in front], "-", color="C0", label="entropy exits")
    rand = sorted((p["gmacs"], p["random_exit_accuracy"]) for p in curve)
    ax.plot([g * 1e3 for g, _ in rand], [a * 100 for _, a in rand], ":", color="C1", label="random exits, same shares")
    exits = report["exits"]
    mix = sorted((p["gmacs"], p["fixed_mix_accuracy"]) for p in curve)
    ax.plot([g * 1e3 for g, _ in mix], [a * 100 for _, a in mix], "--", color="C2", label="fixed-count mixing line")
    ax.plot([e["gmacs"] * 1e3 for e in exits], [e["accuracy"] * 100 for e in exits], "s", color="C2", label="k cubes")
    ax.plot(
        [e["gmacs"] * 1e3 for e in exits],
        [e["accuracy_random_centres"] * 100 for e in exits],
        "x",
        color="C7",
        label="k cubes, random centres",
    )
    for lvl in report["levels"]:
        ax.plot(lvl["gmacs"] * 1e3, lvl["accuracy"] * 100, "o", color="C3")
        ax.annotate(lvl["name"], (lvl["gmacs"] * 1e3, lvl["accuracy"] * 100), xytext=(4, -11), fontsize=8,
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("MMACs / video (multiply-adds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(card: str, heading: str) -> str:
    """The ``## heading`` section of a card (up to the next ``## ``), or empty."""
    start = card.find(f"## {heading}")
    if start < 0:
        return ""
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start : end + 1]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def _hit_rate_part(h: dict[str, list[float]]) -> str:
    """The hit-rate table of the results section (clips with ground-truth boxes only)."""
    rows = "\n".join(
        f"| {k + 1} | {_pct(h['per_cube'][k])} | {_pct(h['any_of_first_k'][k])} | "
        f"{_pct(h['random_per_cube'][k])} | {_pct(h['random_any_of_first_k'][k])} |"
        for k in range(len(h["per_cube"]))
    )
    return (
        "\nHit rate: share of cubes that, in their frame, see the visible product and cover at least half of its "
        "box (or half the cube, for products larger than a cube).\n\n"
        "| cube | learned: this cube (%) | learned: any of cubes 1..k (%) | random: this cube (%) "
        "| random: any of 1..k (%) |\n|---|---|---|---|---|\n" + rows + "\n"
    )


def _level_row(lv: dict[str, Any]) -> str:
    """One budget level's row of the results section's levels table."""
    return (
        f"| `{lv['name']}` | {', '.join(repr(t) for t in lv['thresholds'])} | {lv['calibration_gmacs'] * 1e3:.2f} | "
        f"{_pct(lv['calibration_accuracy'])} | {lv['gmacs'] * 1e3:.2f} | {_pct(lv['accuracy'])} | "
        f"{_pct(lv['fixed_mix_accuracy'])} | {_pct(lv['random_exit_accuracy'])} | "
        f"{', '.join(f'{p:.2f}' for p in lv['exit_shares'])} |"
    )


def results_section(report: dict[str, Any], calib_desc: str, plot_name: str) -> str:
    """The card's ``## Results`` section: exits, hit rates, budget levels against both baselines, targets."""
    exits = "\n".join(
        f"| {e['k']} | {e['gmacs'] * 1e3:.1f} | {_pct(e['accuracy'])} | {_pct(e['accuracy_random_centres'])} |"
        for e in report["exits"]
    )
    hit_part = "" if report["hit_rate"] is None else _hit_rate_part(report["hit_rate"])
    levels = "\n".join(_level_row(lv) for lv in report["levels"])
    t = targets_summary(report)
    at99 = t["cost_share_at_99pct_of_k"]
    at99_text = "not reached" if at99 is None else f"{at99 * 100:.0f}% of the K-cube cost ({1 / at99:.2f}x fewer GMACs)"
    K = len(report["exits"]) - 1
    return f"""## Results (test split: {report["data"]})

Measured by `adafocus evaluate` (the staged API, as the server runs it); thresholds were solved on the
calibration split ({calib_desc}); the test split was used only for the numbers below.

### Accuracy at every exit (all clips take k cubes)

| exit (cubes) | MMACs/video | learned policy (%) | random centres (%) |
|---|---|---|---|
{exits}
{hit_part}
Cubes land on {report["distinct_cube_frames_mean"]:.2f} distinct frames per clip on average; \
{_pct(report["clips_with_cubes_on_2_or_more_frames"])}% of clips have cubes on at least 2 frames.

### Budget levels (`budgets.json`) against fixed compute at the same cost (test split)

Fixed mix: the best mix of fixed cube counts with the same mean GMACs (the upper hull of the k-cube points).
Random exits: every clip leaves at a random exit, with the level's exit shares.

| level | thresholds eta_0..eta_{K} | calib MMACs | calib acc (%) | test MMACs | test acc (%) | fixed mix (%) \
| random exits (%) | test exit shares |
|---|---|---|---|---|---|---|---|---|
{levels}

### Targets, as measured

- Glance (exit 0) accuracy {_pct(t["glance_accuracy"])}%, {t["glance_gap_points"]:.1f} points below the K-cube \
accuracy ({_pct(t["k_cube_accuracy"])}%).
- K cubes vs 1 cube: {t["k_vs_1_cube_points"]:+.1f} points; learned vs random placement after 1 cube: \
{t["learned_vs_random_1_cube_points"]:+.1f} points.
- Entropy exits reach 99% of the K-cube accuracy at {at99_text}.

{served_section(report["served"]) if report.get("served") else ""}
![Figure 6: test accuracy vs MMACs/video]({plot_name})
"""


def method_notes(config: AdaFocusConfig, training: str) -> str:
    """What this model does that the paper does not (or does differently), from its config and training log."""
    notes = []
    if config.placement == "distinct_frames":
        notes.append(
            "**Cubes on distinct frames.** The policy still places all K cubes at once from the glance, but cube k "
            "takes the frame of its heatmap with the most mass among the frames cubes 1..k-1 left free, then the "
            "soft-argmax of that frame's spatial map (the paper takes each heatmap's expectation independently; here "
            "that made the K cubes copies of each other). The frame choice is an argmax: the deep-feature gradient "
            "(Eq. 5-6) reaches x and y, and the frame is learned by the policy-discovery stage."
        )
    if config.glance_pool == "mean_max":
        notes.append(
            "**Glance feature = mean and max pooling** of f_G's maps over (T, h, w), concatenated: a small product "
            "must be able to dominate the clip feature (mean pooling alone barely learned in the benchmark's spike)."
        )
    if "| policy |" in training:
        notes.append(
            "**Policy-discovery stage** before the paper's objective: cube cells are sampled from the heatmaps "
            "(cube k excluding the frames of cubes 1..k-1) and trained with REINFORCE; the reward of cube k is its "
            "marginal gain, CE at exit k-1 minus CE at exit k (plus half the CE of its own auxiliary head), so a cube "
            "that repeats what earlier cubes saw earns nothing."
            + ("" if "| placement |" in training else " The local encoder is first pretrained on cubes centred on the "
               "ground-truth boxes (standing in for ImageNet pretraining); the policy never sees them.")
        )
    if "| pretrain_local_still |" in training or "| pretrain_glance |" in training:
        notes.append(
            "**Encoder pretraining on stills** (standing in for the paper's ImageNet weights): one-frame stills of "
            "the benchmark from the train images (`model/data/stills.py`), the glance on whole stills, the local "
            "encoder on cubes centred on the product."
        )
    if "| placement |" in training:
        notes.append(
            "**Placement curriculum**: before policy discovery, f_G and the policy learn where the product is from the "
            "generator's boxes (the heatmaps' log-mass on the product's cells; training only, inference never sees "
            "boxes), and the same term keeps weight in the later stages (`--placement-weight`)."
        )
    if config.skip_covered_frames:
        notes.append("**Covered cubes are skipped** (paper 4.1) and cost nothing, in calibration and in answers.")
    if not notes:
        return ""
    return "## Not in the paper\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def render_card(
    old_card: str,
    config: AdaFocusConfig,
    benchmark: str | None,
    report: dict[str, Any],
    calib_desc: str,
    command: str,
    plot_name: str,
) -> str:
    K = len(report["exits"]) - 1
    name = config.name
    training = section(old_card, "Training")
    ablations = section(old_card, "Ablations")
    diagnosis = section(old_card, "Diagnosis")  # measured by separate runs (adafocus diagnose), kept like Ablations
    train_cmd, resumed_note = "", ""
    if "```\n" in training:
        train_cmd = training.split("```\n")[1].strip()
    if " --resume" in train_cmd:
        train_cmd = train_cmd.replace(" --resume", "")
        resumed_note = (
            "The shipped run was started with `--resume` (it continues a checkpoint in `--run-dir` when one exists; "
            "same stages, same clips); without it the command trains from scratch.\n\n"
        )
    data = DATA_TEXT.get((benchmark or "").split(":")[0], "Data: class folders of videos (see the training section).")
    return f"""# AdaFocusV3 `{name}` bundle

Early-exit video classifier (AdaFocusV3): a cheap glance over the whole clip, then up to {K} cubes placed by a
learned policy, each followed by an exit. Thresholds (criterion `{report["criterion"]}`) trade compute for accuracy
at runtime; see `budgets.json`. Costs are multiply-adds (the paper's "GFLOPs") counted by `model/macs.py`.

{data}

{method_notes(config, training)}
{training}
{results_section(report, calib_desc, plot_name)}
{diagnosis}
{ablations}
## Reproduce

{resumed_note}```
{train_cmd}
{command}
```
"""
