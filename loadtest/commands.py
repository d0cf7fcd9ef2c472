"""Load-test and benchmark subcommands of the ``adafocus`` CLI: ``loadtest``, ``bench engine|decode`` and
``bench-runners``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

QUICK_TOTAL_S = 40.0  # --quick: all phases of a load test together send for at most this long


def _log(line: str) -> None:
    """Progress lines of the in-process benchmarks, on stderr (stdout holds the result)."""
    sys.stderr.write(line + "\n")


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


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


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
    load.add_argument("--step-profile", default=None, help="open loop: factor:seconds,... of --capacity (or measured)")
    lt.add_argument("--capacity", type=float, default=None, help="step profile: videos/s the factors multiply")
    lt.add_argument("--slo-p99", type=float, default=None, help="step profile: PUT /budget mode auto, this p99 (s)")
    lt.add_argument("--min-level", default=None, help="step profile: the automatic budget's floor level")
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
    lt.add_argument("--markdown", action="store_true", help="print a markdown table (docs/benchmarks.md)")
    lt.add_argument("--quick", action="store_true", help=f"short phases: under {QUICK_TOTAL_S:.0f}s of sending in all")
    lt.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")
    lt.add_argument(
        "--stream",
        action="store_true",
        help="Accept: text/event-stream; also report the time to the first event (after the glance)",
    )
    lt.set_defaults(handler=run_loadtest)
    _register_bench(sub)

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


def _register_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="in-process benchmarks: the batching engine, the decoder")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="KIND")
    eng = kinds.add_parser(
        "engine",
        help="continuous vs drain vs single on pre-decoded clips, at saturation and fixed arrival rates",
        description="Runs the engine in-process (decoding out of the measurement) in every mode side by side, for "
        "each budget level; reports videos/s, latency, batch sizes, GMACs, runner busy fraction and mode ratios.",
    )
    src = eng.add_mutually_exclusive_group()
    src.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle, if present)")
    src.add_argument("--config", default=None, help="named config with RANDOM weights: tiny, default, paper-mn2-r50")
    eng.add_argument(
        "--modes",
        type=_names,
        default=("continuous", "drain", "single"),
        help="engine modes; continuous-mgN = continuous with min_glance_batch N; continuous-auto = the glance batch "
        "from the measured step costs",
    )
    eng.add_argument(
        "--min-glance-batch",
        type=_ints,
        default=(),
        help="comma-separated min_glance_batch values > 1: each adds a continuous-mgN mode run beside the others",
    )
    eng.add_argument("--levels", type=_names, default=(), help="budget levels (default: all)")
    eng.add_argument("--requests", type=int, default=256, help="requests per saturation run (default 256)")
    eng.add_argument("--repeats", type=int, default=3, help="runs per mode and load; median kept (default 3)")
    eng.add_argument("--rates", type=_floats, default=(), help="arrival rates in videos/s (default: fractions)")
    eng.add_argument(
        "--rate-fractions", type=_floats, default=(0.5, 0.8), help="rates as fractions of continuous saturation"
    )
    eng.add_argument("--rate-duration", type=float, default=4.0, help="seconds of arrivals per rate run (default 4)")
    eng.add_argument("--deadline", type=float, default=5.0, help="per-request deadline in rate runs (default 5 s)")
    eng.add_argument("--max-batch", type=int, default=32)
    eng.add_argument("--max-active", type=int, default=64)
    eng.add_argument("--clips", type=int, default=64, help="distinct pre-decoded clips (default 64)")
    eng.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    eng.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    eng.add_argument("--seed", type=int, default=0)
    eng.add_argument("--plot", default=None, help="write a PNG of p99 vs load and saturation throughput here")
    eng.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    eng.add_argument("--markdown", action="store_true", help="print markdown tables (docs/benchmarks.md)")
    eng.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    eng.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc malloc as it is (per-thread arenas: engines created after the first page-fault more)",
    )
    eng.set_defaults(handler=run_bench_engine)

    _register_adaptive(kinds)

    dec = kinds.add_parser(
        "decode",
        help="clips/s of the decoder in 1..N worker processes on H.264 (short/long GOP) and VP9 files",
    )
    dec.add_argument("--seconds", type=float, default=10.0, help="length of the encoded videos (default 10)")
    dec.add_argument("--width", type=int, default=640)
    dec.add_argument("--height", type=int, default=360)
    dec.add_argument("--fps", type=int, default=30)
    dec.add_argument("--num-frames", type=int, default=16, help="frames sampled per clip (default 16)")
    dec.add_argument("--size", type=int, default=112, help="side of the decoded clip (default 112, the shipped model)")
    dec.add_argument("--max-workers", type=int, default=None, help="up to this many processes (default: CPU count)")
    dec.add_argument("--clips-per-worker", type=int, default=10)
    dec.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    dec.add_argument("--markdown", action="store_true", help="print a markdown table (docs/benchmarks.md)")
    dec.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    dec.set_defaults(handler=run_bench_decode)


def _register_adaptive(kinds: Any) -> None:
    ada = kinds.add_parser(
        "adaptive",
        help="overload: the fixed top budget level vs the automatic budget, under a step load, in-process",
        description="Measures the top level's capacity, then plays one Poisson step-load schedule (by default "
        "0.5x -> 3x -> 0.5x of it) at the fixed top level and with the automatic budget; prints answered fraction, "
        "p99, accuracy, levels used, and per-second rows.",
    )
    src = ada.add_mutually_exclusive_group()
    src.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle, if present)")
    src.add_argument("--config", default=None, help="named config with RANDOM weights: tiny, default, paper-mn2-r50")
    ada.add_argument("--factors", type=_floats, default=(0.5, 3.0, 0.5), help="load per phase, x top-level capacity")
    ada.add_argument("--seconds", type=_floats, default=(10.0, 30.0, 20.0), help="duration of each phase")
    ada.add_argument("--slo-p99", type=float, default=0.5, help="latency objective of the automatic budget (s)")
    ada.add_argument("--min-level", default=None, help="the automatic budget's floor level")
    ada.add_argument("--deadline", type=float, default=5.0, help="per-request deadline (default 5 s)")
    ada.add_argument("--max-batch", type=int, default=8)
    ada.add_argument("--max-active", type=int, default=8)
    ada.add_argument("--max-queue", type=int, default=256)
    ada.add_argument("--clips", type=int, default=64, help="distinct pre-decoded clips (default 64)")
    ada.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ada.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ada.add_argument("--seed", type=int, default=0)
    ada.add_argument("--plot", default=None, help="write a PNG of rate, p99 and level on one time axis here")
    ada.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ada.set_defaults(handler=run_bench_adaptive)


def run_bench_adaptive(args: argparse.Namespace) -> int:
    import torch

    from loadtest.adaptive_bench import AdaptiveBenchConfig, format_adaptive, run_adaptive_bench
    from loadtest.workload import load_workload, steady_allocator

    if len(args.factors) != len(args.seconds) or not args.factors:
        sys.stderr.write("adafocus bench adaptive: --factors and --seconds need the same number of phases\n")
        return 2
    steady_allocator()
    torch.set_num_threads(args.threads)
    work = load_workload(args.bundle, args.config, args.clips, args.seed, args.device)
    cfg = AdaptiveBenchConfig(
        phases=tuple(zip(args.factors, args.seconds, strict=True)),
        slo_p99_s=args.slo_p99,
        min_level=args.min_level,
        deadline_s=args.deadline,
        max_batch=args.max_batch,
        max_active=args.max_active,
        max_queue=args.max_queue,
        seed=args.seed,
        device=args.device,
    )

    result = run_adaptive_bench(work, cfg, _log)
    if args.plot:
        from loadtest.plots import plot_adaptive

        result["plot"] = str(plot_adaptive(result, Path(args.plot)))
    if args.json:
        write_json(result)
    else:
        sys.stdout.write(format_adaptive(result) + "\n")
    return 0


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
    import logging

    from loadtest.corpus import load_corpus
    from loadtest.http_load import LoadConfig, run_load
    from loadtest.report import format_phase
    from loadtest.schedule import Bound

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request
    corpus = load_corpus(args.corpus, args.limit)
    if args.step_profile is not None:
        from loadtest.step_cli import run_step_loadtest

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
    if args.json:
        write_json(result)
    elif args.markdown:
        from loadtest.markdown import loadtest_markdown

        sys.stdout.write(loadtest_markdown(result) + "\n")
    else:
        for phase in result["phases"]:
            sys.stdout.write(format_phase(phase) + "\n")
        for path in result.get("plots", []):
            sys.stdout.write(f"plot: {path}\n")
    return 0


def run_bench_engine(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _bench_engine(args)
    finally:
        torch.set_num_threads(threads)


def _bench_engine(args: argparse.Namespace) -> int:
    from loadtest.engine_bench import EngineBenchConfig, format_engine, mode_label, parse_mode, run_engine_bench
    from loadtest.workload import load_workload, steady_allocator

    modes = tuple(dict.fromkeys([*args.modes, *(mode_label("continuous", n) for n in args.min_glance_batch)]))
    try:
        for label in modes:
            parse_mode(label)  # before the model loads
    except ValueError as exc:
        sys.stderr.write(f"adafocus bench engine: {exc}\n")
        return 2
    allocator = "default" if args.default_allocator else steady_allocator()  # before any engine thread exists
    work = load_workload(args.bundle, args.config, args.clips, args.seed, args.device)
    levels = tuple(args.levels)
    if args.quick and not levels:
        names = [lvl.name for lvl in work.budgets.levels]  # cheapest and most expensive
        levels = tuple(dict.fromkeys([names[0], names[-1]]))
    cfg = EngineBenchConfig(
        modes=modes,
        levels=levels,
        saturation_requests=32 if args.quick else args.requests,
        repeats=max(3, args.repeats) if args.quick else args.repeats,  # a smoke run still interleaves 3 repeats
        rates=tuple(args.rates),
        rate_fractions=(0.5,) if args.quick else tuple(args.rate_fractions),
        rate_duration_s=1.5 if args.quick else args.rate_duration,
        deadline_s=2.0 if args.quick else args.deadline,
        max_batch=args.max_batch,
        max_active=args.max_active,
        clips=args.clips,
        seed=args.seed,
        device=args.device,
    )

    result = run_engine_bench(work, cfg, _log) | {"allocator": allocator}
    if args.plot:
        from loadtest.plots import plot_engine_modes

        made = plot_engine_modes(result, Path(args.plot), title=f"engine modes, model {result['model']}")
        result["plot"] = str(made) if made else None
    if args.json:
        write_json(result)
    elif args.markdown:
        from loadtest.markdown import engine_markdown

        sys.stdout.write(engine_markdown(result) + "\n")
    else:
        sys.stdout.write(format_engine(result) + "\n")
    return 0


def run_bench_decode(args: argparse.Namespace) -> int:
    import os

    from loadtest.decode_bench import DecodeBenchConfig, format_decode, run_decode_bench

    workers = args.max_workers or os.cpu_count() or 1
    if args.quick:
        cfg = DecodeBenchConfig(2.0, args.fps, 320, 180, args.num_frames, args.size, min(workers, 2), 3)
    else:
        cfg = DecodeBenchConfig(
            args.seconds, args.fps, args.width, args.height, args.num_frames, args.size, workers, args.clips_per_worker
        )
    result = run_decode_bench(cfg)
    if args.json:
        write_json(result)
    elif args.markdown:
        from loadtest.markdown import decode_markdown

        sys.stdout.write(decode_markdown(result) + "\n")
    else:
        sys.stdout.write(format_decode(result) + "\n")
    return 0


def run_bench_runners(args: argparse.Namespace) -> int:
    from loadtest.runner_bench import BenchConfig, format_markdown, run_bench

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
