"""Load-test and benchmark subcommands of the ``adafocus`` CLI: ``loadtest`` and ``bench engine|decode``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

QUICK_TOTAL_S = 40.0  # --quick: all phases of a load test together send for at most this long


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(sub: Any) -> None:
    lt = sub.add_parser(
        "loadtest",
        help="HTTP load generator for POST /classify (open-loop Poisson or closed-loop concurrency)",
        description="Sends the corpus' videos to a running server and reports throughput, latency percentiles "
        "(from the intended send time in open loop), errors, GMACs/video, exit steps and accuracy.",
    )
    lt.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    lt.add_argument("--corpus", required=True, help="directory of videos (+ optional labels.csv)")
    load = lt.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    load.add_argument(
        "--rate-sweep", type=_floats, default=None, help="open loop: comma-separated rates, one phase each"
    )
    lt.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight (default 8)")
    lt.add_argument("--duration", type=float, default=None, help="seconds per phase (default 30 if no --requests)")
    lt.add_argument("--requests", type=int, default=None, help="requests per phase")
    lt.add_argument("--budget-sweep", type=_names, default=None, help="levels to switch through ('all' = every level)")
    lt.add_argument("--token", default=None, help="operator token for PUT /budget (budget sweep)")
    lt.add_argument("--budget", default=None, help="per-request budget level (form field)")
    lt.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")
    lt.add_argument("--max-inflight", type=int, default=1024, help="open loop: client in-flight cap (default 1024)")
    lt.add_argument("--limit", type=int, default=None, help="use only the first N videos of the corpus")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--plots", default=None, help="directory for PNG plots")
    lt.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    lt.add_argument("--quick", action="store_true", help=f"short phases: under {QUICK_TOTAL_S:.0f}s of sending in all")
    lt.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")
    lt.set_defaults(handler=run_loadtest)


def _quick_duration(args: argparse.Namespace, phases: int) -> float:
    per_phase = QUICK_TOTAL_S / max(phases, 1)
    return max(1.0, min(args.duration or per_phase, per_phase, 8.0))


def _resolve_budgets(args: argparse.Namespace) -> tuple[str, ...]:
    if not args.budget_sweep:
        return ()
    if args.budget_sweep != ("all",):
        return tuple(args.budget_sweep)
    import httpx

    from loadtest.http_load import budget_names

    with httpx.Client(base_url=args.url, timeout=10.0) as client:
        response = client.get("/budget")
        response.raise_for_status()
        return tuple(budget_names(response.json()))


def write_json(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_loadtest(args: argparse.Namespace) -> int:
    import asyncio

    from loadtest.corpus import load_corpus
    from loadtest.http_load import LoadConfig, run_load
    from loadtest.report import format_phase
    from loadtest.schedule import Bound

    corpus = load_corpus(args.corpus, args.limit)
    rates: tuple[float, ...] = args.rate_sweep or ((args.rate,) if args.rate is not None else ())
    budgets = _resolve_budgets(args)
    duration, requests = args.duration, args.requests
    if args.quick:
        duration = _quick_duration(args, max(len(rates), 1) * max(len(budgets), 1))
    cfg = LoadConfig(
        url=args.url.rstrip("/"),
        bound=Bound.of(duration, requests),
        mode="open" if rates else "closed",
        rates=rates,
        concurrency=args.concurrency,
        budgets=budgets,
        token=args.token,
        request_budget=args.budget,
        timeout_s=args.timeout,
        max_inflight=args.max_inflight,
        seed=args.seed,
        progress=not args.no_progress,
    )
    result = asyncio.run(run_load(cfg, corpus))
    if args.plots:
        from loadtest.plots import plot_accuracy_vs_throughput, plot_load_vs_offered

        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        made = [
            plot_load_vs_offered(result, out / "loadtest_latency_throughput.png", title=cfg.url),
            plot_accuracy_vs_throughput(result, out / "loadtest_accuracy_throughput.png", title=cfg.url),
        ]
        result["plots"] = [str(p) for p in made if p is not None]
    if args.json:
        write_json(result)
    else:
        for phase in result["phases"]:
            sys.stdout.write(format_phase(phase) + "\n")
        for path in result.get("plots", []):
            sys.stdout.write(f"plot: {path}\n")
    return 0
