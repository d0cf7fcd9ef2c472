"""Load-test and benchmark subcommands of the ``adafocus`` CLI: ``loadtest`` and ``bench-runners``; the ``bench``
kinds (engine, adaptive, decode, e2e) are in ``loadtest/bench/commands.py``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtest.bench.commands import register as register_bench
from loadtest.cli_args import floats, names, print_result

QUICK_TOTAL_S = 40.0  # --quick: all phases of a load test together send for at most this long


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
        "--rate-sweep", type=floats, default=None, help="open loop: comma-separated rates, one phase each"
    )
    load.add_argument("--step-profile", default=None, help="open loop: factor:seconds,... of --capacity (or measured)")
    lt.add_argument("--capacity", type=float, default=None, help="step profile: videos/s the factors multiply")
    lt.add_argument("--slo-p99", type=float, default=None, help="step profile: PUT /budget mode auto, this p99 (s)")
    lt.add_argument("--min-level", default=None, help="step profile: the automatic budget's floor level")
    lt.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight (default 8)")
    lt.add_argument("--duration", type=float, default=None, help="seconds per phase (default 30 if no --requests)")
    lt.add_argument("--requests", type=int, default=None, help="requests per phase")
    lt.add_argument("--budget-sweep", type=names, default=None, help="levels to switch through ('all' = every level)")
    lt.add_argument("--token", default=None, help="operator token for PUT /budget (budget sweep)")
    lt.add_argument("--budget", default=None, help="per-request budget level (form field)")
    lt.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)")
    lt.add_argument("--max-inflight", type=int, default=1024, help="open loop: client in-flight cap (default 1024)")
    lt.add_argument("--limit", type=int, default=None, help="use only the first N videos of the corpus")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--plots", default=None, help="directory for PNG plots")
    lt.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    lt.add_argument("--markdown", action="store_true", help="print a markdown table (docs/benchmarks.md)")
    lt.add_argument("--quick", action="store_true", help=f"short phases: under {QUICK_TOTAL_S:.0f}s of sending in all")
    lt.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")
    lt.add_argument(
        "--stream",
        action="store_true",
        help="Accept: text/event-stream; also report the time to the first event (after the glance)",
    )
    lt.set_defaults(handler=run_loadtest)
    register_bench(sub)

    runners = sub.add_parser(
        "bench-runners", help="PyTorch vs ONNX Runtime runner: per-step latency and engine throughput, one run"
    )
    src = runners.add_mutually_exclusive_group()
    src.add_argument("--bundle", default=None, help="bundle or ONNX export directory (default: shipped bundle)")
    src.add_argument("--config", default=None, help="time an untrained bundle of this named config instead")
    runners.add_argument("--export", default=None, help="ONNX export directory (default: export into a temp dir)")
    runners.add_argument("--batches", default="1,4,8,16,32", help="stage batch sizes to time (default 1,4,8,16,32)")
    runners.add_argument("--repeats", type=int, default=7, help="timed calls per stage and batch size (default 7)")
    runners.add_argument("--videos", type=int, default=128, help="clips through the engine per runner (default 128)")
    runners.add_argument("--max-batch", type=int, default=32, help="engine max_batch (default 32)")
    runners.add_argument("--rounds", type=int, default=2, help="engine runs per runner, interleaved (default 2)")
    runners.add_argument("--budget", default=None, help="budget level for the engine runs (default: the bundle's)")
    runners.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    runners.add_argument("--json", default=None, help="write the full results as JSON to this file")
    runners.add_argument("--markdown", action="store_true", help="print the results as markdown tables")
    runners.set_defaults(handler=run_bench_runners)


def _quick_duration(args: argparse.Namespace, phases: int) -> float:
    per_phase = QUICK_TOTAL_S / max(phases, 1)
    return max(1.0, min(args.duration or per_phase, per_phase, 8.0))


def _resolve_budgets(args: argparse.Namespace) -> tuple[str, ...]:
    if not args.budget_sweep:
        return ()
    if args.budget_sweep != ("all",):
        return tuple(args.budget_sweep)
    import httpx

    from loadtest.http.load import budget_names

    with httpx.Client(base_url=args.url, timeout=10.0) as client:
        response = client.get("/budget")
        response.raise_for_status()
        return tuple(budget_names(response.json()))


def run_loadtest(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from loadtest.http.corpus import load_corpus
    from loadtest.http.load import LoadConfig, run_load
    from loadtest.schedule import Bound

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request
    corpus = load_corpus(args.corpus, args.limit)
    if args.step_profile is not None:
        from loadtest.http.step_cli import run_step_loadtest

        return run_step_loadtest(args, corpus)
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
        stream=args.stream,
    )
    try:
        result = asyncio.run(run_load(cfg, corpus))
    except RuntimeError as exc:
        sys.stderr.write(f"adafocus loadtest: {exc}\n")
        return 1
    if args.plots:
        from loadtest.plots import plot_accuracy_vs_gmacs, plot_load_vs_offered

        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        made = [
            plot_load_vs_offered(result, out / "loadtest_latency_throughput.png"),
            plot_accuracy_vs_gmacs(result, out / "loadtest_accuracy_gmacs.png"),
        ]
        result["plots"] = [str(p) for p in made if p is not None]
    from loadtest.markdown import loadtest_markdown

    print_result(result, args, _loadtest_text, loadtest_markdown)
    return 0


def _loadtest_text(result: dict[str, Any]) -> str:
    from loadtest.report import format_phase

    lines = [format_phase(phase) for phase in result["phases"]]
    return "\n".join(lines + [f"plot: {path}" for path in result.get("plots", [])])


def run_bench_runners(args: argparse.Namespace) -> int:
    from loadtest.bench.runners import BenchConfig, format_markdown, run_bench

    cfg = BenchConfig(
        batches=tuple(int(b) for b in args.batches.split(",")),
        repeats=args.repeats,
        videos=args.videos,
        max_batch=args.max_batch,
        rounds=args.rounds,
        budget=args.budget,
        threads=args.threads,
    )
    from exporters.manifest import ExportError
    from model.bundle import BundleError

    try:
        results = run_bench(args.bundle, args.export, cfg, args.config)
    except (BundleError, ExportError, ValueError) as exc:
        sys.stderr.write(f"adafocus bench-runners: {exc}\n")
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        sys.stdout.write(format_markdown(results))
    else:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
