"""``adafocus calibrate``: threshold sets for a range of compute budgets, solved on the calibration split.

The solver is MSDNet's ``dynamic_eval``: for a ratio q the target share of samples leaving at exit k is
proportional to q^k. Walking the exits in order, the n_k = floor(N * p_k) most confident samples that have not
exited yet set exit k's threshold (the n_k-th best score); n_k = 0 means nobody exits there (entropy threshold
0.0, max-probability threshold above 1). The last exit takes everyone left. Sweeping q gives (GMACs/video,
accuracy) points; named levels are picked on their accuracy/cost frontier. Thresholds are then applied to the
test split (never used for solving) to report accuracy and to draw the paper's Figure 6.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.budgets import BudgetLevel, BudgetTable, Criterion, exit_scores, validate_thresholds
from model.evaluate import ExitRecord

log = logging.getLogger(__name__)

LEVEL_NAMES = ("min", "low", "balanced", "high", "max")
NEVER_MAX_PROB = 2.0  # a max-probability threshold no sample reaches


@dataclass(frozen=True)
class Operating:
    """A threshold set simulated on one split."""

    q: float
    start: int  # first exit anyone may leave at (earlier exits get a zero share)
    thresholds: tuple[float, ...]
    proportions: tuple[float, ...]  # share of samples leaving at each exit
    gmacs: float  # mean GMACs/video
    accuracy: float


def scores_of(logits: np.ndarray, criterion: Criterion) -> np.ndarray:
    """(N, E) exit scores from logits (N, E, C): entropy in nats or max probability."""
    N, E, C = logits.shape
    flat = exit_scores(torch.from_numpy(logits.reshape(N * E, C)), criterion)
    return flat.numpy().reshape(N, E).astype(np.float64)


def exit_proportions(q: float, num_exits: int, start: int = 0) -> np.ndarray:
    """Shares proportional to q^(k - start) from exit ``start`` on, zero before it; q = 0 sends everyone out at
    exit ``start``, q = inf everyone to the last exit."""
    p = np.zeros(num_exits, dtype=np.float64)
    if math.isinf(q):
        p[-1] = 1.0
        return p
    p[start:] = q ** np.arange(num_exits - start, dtype=np.float64)
    return p / p.sum()


def exits_taken(scores: np.ndarray, thresholds: tuple[float, ...], criterion: Criterion) -> np.ndarray:
    """(N,) index of the exit each sample leaves at; the last exit always stops."""
    N = scores.shape[0]
    thr = np.asarray(thresholds[:-1], dtype=np.float64)  # (E-1,)
    stop = scores[:, :-1] <= thr if criterion == "entropy" else scores[:, :-1] >= thr  # (N, E-1)
    stop = np.concatenate([stop, np.ones((N, 1), dtype=bool)], axis=1)  # (N, E)
    return stop.argmax(axis=1)


def solve_thresholds(scores: np.ndarray, proportions: np.ndarray, criterion: Criterion) -> tuple[float, ...]:
    """MSDNet's solver: thresholds (E,) that let about ``proportions`` of the samples leave at each exit."""
    N, E = scores.shape
    remaining = np.ones(N, dtype=bool)
    thresholds: list[float] = []
    for k in range(E - 1):
        n_k = math.floor(N * proportions[k] + 1e-9)
        candidates = scores[remaining, k]
        if n_k == 0 or candidates.size == 0:
            thr = 0.0 if criterion == "entropy" else NEVER_MAX_PROB
        else:
            ordered = np.sort(candidates) if criterion == "entropy" else -np.sort(-candidates)
            thr = float(ordered[min(n_k, ordered.size) - 1])
        thresholds.append(max(thr, 0.0))
        leave = scores[:, k] <= thr if criterion == "entropy" else scores[:, k] >= thr
        remaining &= ~leave
    # last exit: a threshold every sample meets, so that it reads right even if applied literally
    thresholds.append(float(max(scores[:, -1].max(), 0.0)) if criterion == "entropy" else 0.0)
    return validate_thresholds(thresholds, E)


def simulate(
    record: ExitRecord,
    thresholds: tuple[float, ...],
    criterion: Criterion,
    exit_gmacs: list[float],
    q: float = 0.0,
    start: int = 0,
) -> Operating:
    scores = scores_of(record.logits, criterion)
    taken = exits_taken(scores, thresholds, criterion)  # (N,)
    E = scores.shape[1]
    correct = record.correct[np.arange(len(taken)), taken]
    proportions = np.bincount(taken, minlength=E) / len(taken)
    return Operating(
        q=q,
        start=start,
        thresholds=thresholds,
        proportions=tuple(float(p) for p in proportions),
        gmacs=float(np.dot(proportions, exit_gmacs)),
        accuracy=float(correct.mean()),
    )


def sweep(
    record: ExitRecord, criterion: Criterion, exit_gmacs: list[float], qs: np.ndarray | None = None
) -> list[Operating]:
    """One operating point per (start exit, q), solved and simulated on ``record`` (the calibration split).

    MSDNet's family (start 0) alone cannot express "nobody leaves before exit j"; with a glance-only exit near
    chance that is what the cheap budgets want, so every start exit is swept too (start j, q = 0 is exactly
    "every video takes j cubes").
    """
    qs = np.concatenate([[0.0], np.geomspace(0.01, 100.0, 81), [math.inf]]) if qs is None else qs
    scores = scores_of(record.logits, criterion)
    E = scores.shape[1]
    points = []
    for start in range(E):
        for q in qs:
            thresholds = solve_thresholds(scores, exit_proportions(float(q), E, start), criterion)
            points.append(simulate(record, thresholds, criterion, exit_gmacs, float(q), start))
    return points


def frontier(points: list[Operating]) -> list[Operating]:
    """Points no cheaper-or-equal point beats in accuracy, cheapest first."""
    out: list[Operating] = []
    for p in sorted(points, key=lambda p: (p.gmacs, -p.accuracy)):
        if not out or p.accuracy > out[-1].accuracy:
            out.append(p)
    return out


def choose_levels(points: list[Operating], names: tuple[str, ...] = LEVEL_NAMES) -> list[tuple[str, Operating]]:
    """Named levels with strictly increasing cost spanning the range: the cheapest point, the most accurate one
    (costlier points are dominated), and in between the most accurate point within evenly spaced cost targets."""
    by_cost: dict[float, Operating] = {}
    for p in points:
        key = round(p.gmacs, 9)
        if key not in by_cost or p.accuracy > by_cost[key].accuracy:
            by_cost[key] = p
    pool = sorted(by_cost.values(), key=lambda p: p.gmacs)
    if len(pool) < len(names):
        raise ValueError(f"only {len(pool)} operating points of distinct cost; cannot name {len(names)} levels")
    best = max(range(len(pool)), key=lambda j: (pool[j].accuracy, -j))
    pool = pool[: (best if best >= len(names) - 1 else len(pool) - 1) + 1]
    lo, hi = pool[0].gmacs, pool[-1].gmacs
    chosen = [0]
    for i in range(1, len(names) - 1):
        target = lo + (hi - lo) * i / (len(names) - 1)
        last_allowed = len(pool) - (len(names) - i)  # leave one point for each later name
        cand = [j for j in range(chosen[-1] + 1, last_allowed + 1) if pool[j].gmacs <= target]
        chosen.append(max(cand, key=lambda j: (pool[j].accuracy, j)) if cand else chosen[-1] + 1)
    chosen.append(len(pool) - 1)
    return [(name, pool[j]) for name, j in zip(names, chosen, strict=True)]


def budget_table(levels: list[tuple[str, Operating]], criterion: Criterion, default: str) -> BudgetTable:
    return BudgetTable(
        criterion=criterion,
        levels=tuple(
            BudgetLevel(name, tuple(round(t, 6) for t in op.thresholds), round(op.gmacs, 6), round(op.accuracy, 4))
            for name, op in levels
        ),
        default=default,
    )


def random_exit_accuracy(record: ExitRecord, proportions: tuple[float, ...], seed: int = 0) -> float:
    """Accuracy when samples leave at random exits with the given shares (Figure 6's random-exit baseline)."""
    N = record.labels.shape[0]
    counts = np.floor(np.asarray(proportions) * N + 0.5).astype(int)
    counts[-1] = N - counts[:-1].sum()
    exits = np.repeat(np.arange(len(counts)), np.clip(counts, 0, None))[:N]
    exits = np.random.default_rng(seed).permutation(exits)
    return float(record.correct[np.arange(N), exits].mean())


# ------------------------------------------------------------------------------------------------ figure
def draw_figure6(
    path: Path,
    entropy_points: list[Operating],
    random_points: list[tuple[float, float]],
    fixed: list[tuple[float, float]],
    fixed_random_centres: list[tuple[float, float]],
    levels: list[tuple[str, Operating]],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    pts = sorted(entropy_points, key=lambda p: p.gmacs)
    ax.plot([p.gmacs * 1e3 for p in pts], [p.accuracy * 100 for p in pts], "-", color="C0", label="entropy exits")
    rp = sorted(random_points)
    ax.plot([g * 1e3 for g, _ in rp], [a * 100 for _, a in rp], "--", color="C1", label="random exits, same shares")
    # a fixed cube count is a point, not a curve: mixing two counts is what the random-exit baseline measures
    ax.plot([g * 1e3 for g, _ in fixed], [a * 100 for _, a in fixed], "s", color="C2", label="fixed number of cubes")
    ax.plot(
        [g * 1e3 for g, _ in fixed_random_centres],
        [a * 100 for _, a in fixed_random_centres],
        "x",
        color="C7",
        label="fixed cubes, random centres",
    )
    for name, op in levels:
        ax.plot(op.gmacs * 1e3, op.accuracy * 100, "o", color="C3")
        ax.annotate(name, (op.gmacs * 1e3, op.accuracy * 100), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("MMACs / video (multiply-adds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ command
def _split_dataset(args: argparse.Namespace, which: str, num_frames: int, size: int, labels: tuple[str, ...]):  # type: ignore[no-untyped-def]
    from model.data import DataSpec, build_dataset
    from model.synth import SYNTH_PRESETS

    folder = args.calib_data if which == "calibration" else args.test_data
    if folder:
        return build_dataset(DataSpec(folder), num_frames, size, labels), f"class folders under `{folder}`"
    if args.data != "synth":
        raise SystemExit(f"real data needs --calib-data and --test-data folders (got --data {args.data})")
    seed, count = (args.calib_seed, args.calib_count) if which == "calibration" else (args.test_seed, args.test_count)
    spec = DataSpec("synth", seed, count, SYNTH_PRESETS[args.preset])
    return build_dataset(spec, num_frames, size, labels), f"synthetic `{args.preset}` stream seed {seed}, {count} clips"


def calibrate_command(args: argparse.Namespace, command: str) -> int:
    import sys

    from model.bundle import load_bundle, save_bundle
    from model.cost import cost_report
    from model.evaluate import collect, exit_accuracy, hit_rates

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle, device=args.device)
    model, cfg = bundle.model, bundle.config
    exit_gmacs = cost_report(model.cpu()).exit_gmacs
    model.to(args.device)
    calib_data, calib_desc = _split_dataset(args, "calibration", cfg.num_frames, cfg.frame_size, cfg.class_names)
    test_data, test_desc = _split_dataset(args, "test", cfg.num_frames, cfg.frame_size, cfg.class_names)
    calib = collect(model, calib_data, "policy", args.batch_size, args.workers)
    test = collect(model, test_data, "policy", args.batch_size, args.workers)
    test_random = collect(model, test_data, "random", args.batch_size, args.workers, seed=12345)

    criterion: Criterion = args.criterion
    points = sweep(calib, criterion, exit_gmacs)
    levels = choose_levels(points)
    table = budget_table(levels, criterion, args.default_level)
    front = frontier(points)  # the operating points worth having, chosen on the calibration split
    test_points = [simulate(test, p.thresholds, criterion, exit_gmacs, p.q, p.start) for p in front]
    test_levels = [(n, simulate(test, op.thresholds, criterion, exit_gmacs, op.q, op.start)) for n, op in levels]
    random_points = [(p.gmacs, random_exit_accuracy(test, p.proportions, seed=i)) for i, p in enumerate(test_points)]
    acc, acc_rand = exit_accuracy(test), exit_accuracy(test_random)
    fixed = list(zip(exit_gmacs, acc.tolist(), strict=True))
    fixed_rand = list(zip(exit_gmacs, acc_rand.tolist(), strict=True))
    plot = Path(args.plot) if args.plot else Path(args.bundle) / "figure6.png"
    draw_figure6(
        plot, test_points, random_points, fixed, fixed_rand, test_levels, f"{cfg.name}: test split ({test_desc})"
    )

    hits = None
    if test.has_targets:
        hits = (hit_rates(test, model.cube_shape), hit_rates(test_random, model.cube_shape))
    results = ResultTables(
        exit_gmacs, acc, acc_rand, hits, levels, test_levels, front, test_points, random_points, calib_desc, test_desc
    )
    card = render_card(bundle.model_card, cfg.name, results, criterion, command, plot.name)
    save_bundle(args.bundle, model.cpu(), table, card)
    sys.stdout.write(results.summary())
    sys.stdout.write(f"wrote {Path(args.bundle) / 'budgets.json'}, model_card.md and {plot}\n")
    return 0


@dataclass(frozen=True)
class ResultTables:
    exit_gmacs: list[float]
    accuracy: np.ndarray  # (K+1,) learned policy, test split
    accuracy_random: np.ndarray  # (K+1,) random centres
    hits: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None  # (policy, random) x (per, any)
    levels: list[tuple[str, Operating]]  # on the calibration split
    test_levels: list[tuple[str, Operating]]
    calib_points: list[Operating]  # the calibration frontier
    test_points: list[Operating]  # the same threshold sets on the test split
    random_points: list[tuple[float, float]]
    calib_desc: str
    test_desc: str

    def entropy_vs_fixed(self) -> list[tuple[int, float, float]]:
        """For each fixed cube count k: (k, its test accuracy, test accuracy of the threshold set that the
        calibration split says is best within k cubes' cost). The choice never looks at the test split."""
        out = []
        for k, (g, a) in enumerate(zip(self.exit_gmacs, self.accuracy, strict=True)):
            within = [i for i, p in enumerate(self.calib_points) if p.gmacs <= g + 1e-12]
            best = max(within, key=lambda i: self.calib_points[i].accuracy) if within else None
            out.append((k, float(a), self.test_points[best].accuracy if best is not None else float("nan")))
        return out

    def summary(self) -> str:
        lines = ["exit  MMACs  acc(policy)  acc(random centres)"]
        for k, g in enumerate(self.exit_gmacs):
            lines.append(f"{k:4d}  {g * 1e3:5.1f}  {self.accuracy[k]:.3f}        {self.accuracy_random[k]:.3f}")
        if self.hits is not None:
            (per, _), (rper, _) = self.hits
            lines.append("hit rate per cube (policy): " + " ".join(f"{h:.3f}" for h in per))
            lines.append("hit rate per cube (random): " + " ".join(f"{h:.3f}" for h in rper))
        for (name, op), (_, top) in zip(self.levels, self.test_levels, strict=True):
            lines.append(
                f"level {name:9s} calib {op.gmacs * 1e3:6.2f} MMACs acc {op.accuracy:.3f} | "
                f"test {top.gmacs * 1e3:6.2f} MMACs acc {top.accuracy:.3f}"
            )
        return "\n".join(lines) + "\n"


def _training_part(card: str) -> str:
    """The ``## Training`` section of an existing card (written by ``adafocus train``)."""
    start = card.find("## Training")
    if start < 0:
        return ""
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start : end + 1]


def render_card(old_card: str, name: str, r: ResultTables, criterion: Criterion, command: str, plot_name: str) -> str:
    K = len(r.exit_gmacs) - 1
    exits = "\n".join(
        f"| {k} | {g * 1e3:.1f} | {r.accuracy[k] * 100:.1f} | {r.accuracy_random[k] * 100:.1f} |"
        for k, g in enumerate(r.exit_gmacs)
    )
    hit_part = ""
    if r.hits is not None:
        (per, anyh), (rper, ranyh) = r.hits
        hit_rows = "\n".join(
            f"| {k + 1} | {per[k] * 100:.1f} | {anyh[k] * 100:.1f} | {rper[k] * 100:.1f} | {ranyh[k] * 100:.1f} |"
            for k in range(K)
        )
        hit_part = (
            "\nHit rate: share of cubes that share a visible frame with the target and cover at least half of it.\n\n"
            "| cube | learned: this cube hits (%) | learned: any of cubes 1..k (%) | random: this cube (%) "
            "| random: any of 1..k (%) |\n|---|---|---|---|---|\n" + hit_rows + "\n"
        )
    levels = "\n".join(
        f"| `{n}` | {', '.join(f'{t:.4g}' for t in op.thresholds)} | {op.gmacs * 1e3:.2f} | {op.accuracy * 100:.1f} "
        f"| {top.gmacs * 1e3:.2f} | {top.accuracy * 100:.1f} | {', '.join(f'{p:.2f}' for p in top.proportions)} |"
        for (n, op), (_, top) in zip(r.levels, r.test_levels, strict=True)
    )
    versus = "\n".join(
        f"| {k} | {a * 100:.1f} | {b * 100:.1f} | {'yes' if b >= a - 1e-9 else 'no'} |"
        for k, a, b in r.entropy_vs_fixed()
    )
    training = _training_part(old_card)
    train_cmd, resumed_note = "", ""
    if "```\n" in training:
        train_cmd = training.split("```\n")[1].strip()
    if " --resume" in train_cmd:
        train_cmd = train_cmd.replace(" --resume", "")
        resumed_note = (
            "The shipped run was stopped once and continued with `--resume` (same stages, same clips, checkpointed "
            "optimizer); without `--resume` the command trains from scratch.\n\n"
        )
    return f"""# AdaFocusV3 `{name}` bundle

Early-exit video classifier (AdaFocusV3): a cheap glance over the whole clip, then up to {K} cubes placed by a
learned policy, each followed by an exit. Thresholds (criterion `{criterion}`) trade compute for accuracy at
runtime; see `budgets.json`. Costs are multiply-adds (the paper's "GFLOPs") counted by `model/cost.py`.

Data: the synthetic focus benchmark of `model/synth.py` (or the class folders named below). Each clip hides its
class in a small textured patch (a 4x4 binary tile repeated; every 4x4 window has the same mean, so the
low-resolution glance sees a uniform square) that is visible for a few frames at a random place and time, among
moving distractors and a panning, noisy background. Exit 0 (glance only) is at chance by construction; a cube on
the patch classifies it.

{training}
## Results (test split: {r.test_desc})

Measured by `adafocus calibrate`. Thresholds were solved on the calibration split ({r.calib_desc}); the test
split was used only for the numbers below.

### Accuracy at every exit (all clips take k cubes)

| exit (cubes) | MMACs/video | learned policy (%) | random centres (%) |
|---|---|---|---|
{exits}
{hit_part}
### Budget levels (`budgets.json`)

| level | thresholds eta_0..eta_{K} | calib MMACs | calib acc (%) | test MMACs | test acc (%) | test exit shares |
|---|---|---|---|---|---|---|
{levels}

### Entropy exits vs a fixed number of cubes (test split)

| cubes k | fixed k: acc (%) | entropy exits, best set within its cost on calibration: test acc (%) | at least as good |
|---|---|---|---|
{versus}

![Figure 6: test accuracy vs MMACs/video]({plot_name})

## Reproduce

{resumed_note}```
{train_cmd}
{command}
```
"""
