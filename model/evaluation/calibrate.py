"""``adafocus calibrate``: threshold sets for a range of compute budgets, solved on the calibration split.

The solver (``model.evaluation.operating_points``) sweeps MSDNet-style threshold sets on the calibration split and keeps
only levels worth shipping: on the accuracy/cost frontier and above the fixed-count mixing line. The bundle's model card
and Figure 6 are then drawn from ``adafocus evaluate``'s report on the test split (never used for solving).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

from model.budgets import BudgetTable, Criterion
from model.bundle import load_bundle, save_bundle
from model.config import AdaFocusConfig
from model.data.datasets import PRESETS, DataSpec, Sample, build_dataset, generated_spec, preset_name
from model.data.fashion import FashionConfig
from model.evaluation.card import draw_figure6, render_card
from model.evaluation.collect import ExitRecord, collect, exit_accuracy
from model.evaluation.operating_points import (
    NothingWorthShipping,
    Operating,
    budget_table,
    choose_levels,
    fixed_level,
    frontier,
    sweep,
)
from model.evaluation.report import evaluation_report, targets_summary
from model.evaluation.served import served_report
from model.macs import cost_report

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ command
def _split_dataset(
    args: argparse.Namespace, benchmark: str | None, which: str, cfg: AdaFocusConfig
) -> tuple[Dataset[Sample], str]:
    folder = args.calib_data if which == "calibration" else args.test_data
    if folder:
        return build_dataset(DataSpec(folder), cfg.num_frames, cfg.frame_size, cfg.class_names), (
            f"class folders under `{folder}`"
        )
    if benchmark is None:
        raise SystemExit("real data needs --calib-data and --test-data folders (the bundle names no benchmark)")
    seed, count = (args.calib_seed, args.calib_count) if which == "calibration" else (args.test_seed, args.test_count)
    spec = generated_spec(benchmark, which, seed, count)
    desc = f"`{benchmark}` {which} stream seed {seed}, {count} clips"
    return build_dataset(spec, cfg.num_frames, cfg.frame_size, cfg.class_names), desc


def solve_levels(
    calib: ExitRecord, criterion: Criterion, exit_gmacs: list[float], default: str, min_gain: float
) -> tuple[BudgetTable, list[Operating]]:
    """The budget table worth shipping and the calibration frontier (for Figure 6)."""
    points = sweep(calib, criterion, exit_gmacs)
    fixed = list(zip(exit_gmacs, exit_accuracy(calib).tolist(), strict=True))
    try:
        levels = choose_levels(points, fixed, margin=min_gain)
    except NothingWorthShipping:
        log.warning("no threshold set beats fixed cube counts on the calibration split: shipping one fixed level")
        levels = [fixed_level(fixed, criterion)]
    names = [name for name, _ in levels]
    table = budget_table(levels, criterion, default if default in names else names[len(names) // 2])
    return table, frontier(points)


def calibrate_command(args: argparse.Namespace, command: str) -> int:
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle, device=args.device)
    model, cfg = bundle.model, bundle.config
    exit_gmacs = cost_report(model.cpu()).exit_gmacs
    model.to(args.device)
    benchmark = preset_name(args.data, args.preset) if args.data else bundle.benchmark
    calib_data, calib_desc = _split_dataset(args, benchmark, "calibration", cfg)
    test_data, test_desc = _split_dataset(args, benchmark, "test", cfg)
    calib = collect(model, calib_data, "policy", args.batch_size, args.workers)
    table, front = solve_levels(calib, args.criterion, exit_gmacs, args.default_level, args.min_gain)
    report = evaluation_report(model, table, exit_gmacs, test_data, test_desc, args.batch_size, args.workers, front)
    bench = PRESETS.get(benchmark or "")
    if isinstance(bench, FashionConfig) and args.served_count > 0 and not args.test_data:
        with tempfile.TemporaryDirectory(prefix="adafocus-served-") as tmp:
            report["served"] = served_report(
                model, bench, Path(tmp), "test", args.test_seed, args.served_count, args.batch_size
            )
    plot = Path(args.plot) if args.plot else Path(args.bundle) / "figure6.png"
    draw_figure6(plot, report, f"{cfg.name}: test split, {test_desc.replace('`', '')}")
    card = render_card(bundle.model_card, cfg, benchmark, report, calib_desc, command, plot.name)
    save_bundle(args.bundle, model.cpu(), table, card, benchmark=benchmark)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(targets_summary(report), indent=2) + "\n")
    sys.stdout.write(f"wrote {Path(args.bundle) / 'budgets.json'}, model_card.md and {plot}\n")
    return 0
