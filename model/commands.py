"""Model subcommands of the ``adafocus`` CLI: ``cost`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    cost = sub.add_parser("cost", help="multiply-add accounting (GMACs) of a named config or a bundle")
    src = cost.add_mutually_exclusive_group()
    src.add_argument("--config", default=None, help="named config: tiny, default, paper-mn2-r50")
    src.add_argument("--bundle", default=None, help="bundle directory")
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    cost.set_defaults(handler=run_cost)

    info = sub.add_parser("info", help="bundle path, config, labels and budgets")
    info.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=run_info)


def run_cost(args: argparse.Namespace) -> int:
    from model.adafocus import AdaFocusV3
    from model.bundle import load_bundle
    from model.config import get_config
    from model.cost import cost_report

    model = load_bundle(args.bundle).model if args.bundle else AdaFocusV3(get_config(args.config or "default"))
    report = cost_report(model).to_dict()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for key, value in report.items():
        if isinstance(value, list):
            value = ", ".join(f"{v:.4f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        sys.stdout.write(f"{key:34s} {value}\n")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from model.bundle import load_bundle

    info = load_bundle(args.bundle).info()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"bundle  {info['path']}\nsha256  {info['sha256']}\nconfig  {info['config']['name']}\n")
    sys.stdout.write(f"labels  {', '.join(info['labels'])}\n")
    for level in info["budgets"]["levels"]:
        sys.stdout.write(
            f"budget  {level['name']:10s} {level['expected_gmacs']:.4f} GMACs/video  "
            f"acc {level['expected_accuracy']:.3f}\n"
        )
    return 0
