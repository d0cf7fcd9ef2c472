"""The ``adafocus`` command: one CLI, subcommands contributed by each package's ``commands`` module.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands and
sets ``handler`` (a function of the parsed arguments returning an exit code). Handlers import heavy
dependencies lazily so that ``adafocus --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service.logs import configure_logging

COMMAND_MODULES = (
    "model.commands",  # cost, info, synth, train, calibrate, evaluate
    "service.commands",  # serve, classify
    "loadtest.commands",  # loadtest, bench-runners, and bench engine|adaptive|decode|e2e (loadtest/bench/commands.py)
    "exporters.commands",  # export onnx
    "fleet.commands",  # serve-ray, bench-fleet (Ray imported only when they run)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adafocus", description="AdaFocusV3 early-exit video recognition server")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)  # `serve` reconfigures it from its settings (ADAFOCUS_LOG_FORMAT ...)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
