"""Argument types and output helpers shared by the load-test and benchmark subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

Formatter = Callable[[dict[str, Any]], str]


def log_line(line: str) -> None:
    """Progress lines of the benchmarks, on stderr (stdout holds the result)."""
    sys.stderr.write(line + "\n")


def floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def write_json(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_result(result: dict[str, Any], args: argparse.Namespace, text: Formatter, markdown: Formatter) -> None:
    """The result on stdout: JSON with ``--json``, markdown tables (docs/benchmarks.md) with ``--markdown``, else
    the text table."""
    if args.json:
        write_json(result)
    else:
        sys.stdout.write((markdown if args.markdown else text)(result) + "\n")
