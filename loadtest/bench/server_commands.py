"""The ``bench accuracy``, ``bench timeline`` and ``bench tracing`` subcommands (their flags and runs; the other
bench subcommands are loadtest/bench/commands.py's)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loadtest.cli_args import log_line, print_result


def register_accuracy(kinds: Any) -> None:
    acc = kinds.add_parser(
        "accuracy", help="the bundle's accuracy on realistic uploads per decode sampling, beside the benchmark clips",
        description="Decodes each file of `adafocus synth --realistic` folders as a decode worker does (exact and "
        "fast sampling), classifies them through the staged API and prints each budget level's accuracy next to the "
        "benchmark's own clips of the same scenes.",
    )
    acc.add_argument("--corpus-dir", required=True, help="the folder `adafocus synth --realistic` wrote")
    acc.add_argument("--presets", default="", help="comma list of preset folders (default: every one found)")
    acc.add_argument("--count", type=int, default=None, help="clips per preset (default: all of labels.csv)")
    acc.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    acc.add_argument("--seed", type=int, default=2, help="the corpus's scene seed (adafocus synth --seed, default 2)")
    acc.add_argument("--tolerance-s", type=float, default=0.5, help="fast sampling's tolerance (default 0.5)")
    acc.add_argument("--json", default=None, help="also write the full result as JSON to this file")
    acc.set_defaults(handler=run_bench_accuracy)
    register_tracing(kinds)



def register_timeline(kinds: Any) -> None:
    tl = kinds.add_parser(
        "timeline",
        help="a long video of scenes as a timeline of segments on a real server, against the scenes' labels",
        description="Writes (once, under --corpus) a long realistic video made of fashion scenes with their "
        "boundaries, then measures segment accuracy, decode CPU, time to the first and last segment, GMACs against "
        "all-K and the single-clip p99 with and without the long video in flight (loadtest/bench/timeline.py).",
    )
    tl.add_argument("--preset", default="720p30-600s-gop60-h264", help="realistic preset of the long video")
    tl.add_argument("--seconds", type=float, default=None, help="a shorter video of the preset (quick runs)")
    tl.add_argument("--height", type=int, default=None, help="and a smaller frame (shorter side, pixels)")
    tl.add_argument("--segment-s", type=float, default=2.0, help="segment length (default 2 s)")
    tl.add_argument("--sampling", default="exact", choices=("exact", "fast"), help="the decoder's sampling")
    tl.add_argument("--corpus", type=Path, default=Path("/tmp/adafocus-timeline"), help="where the videos live")
    tl.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the shipped bundle)")
    tl.add_argument("--clip-rate", type=float, default=4.0, help="single clips/s offered (default 4)")
    tl.add_argument("--clip-seconds", type=float, default=20.0, help="seconds of single-clip load (default 20)")
    tl.add_argument(
        "--decode-nice", type=int, default=0, help="the server's ADAFOCUS_TIMELINE_DECODE_NICE (default 0; 0: the "
        "timeline decodes at the single clips' priority)",
    )
    tl.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    tl.add_argument("--markdown", action="store_true", help="print the table of docs/benchmarks.md")
    tl.set_defaults(handler=run_bench_timeline)



def run_bench_timeline(args: argparse.Namespace) -> int:
    import logging

    from loadtest.bench.timeline import TimelineBenchConfig, format_timeline, run_timeline_bench, timeline_markdown

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    cfg = TimelineBenchConfig(
        preset=args.preset, seconds=args.seconds, height=args.height, segment_s=args.segment_s,
        sampling=args.sampling, corpus=args.corpus, bundle=args.bundle, clip_rate=args.clip_rate,
        clip_seconds=args.clip_seconds, decode_nice=args.decode_nice,
    )
    print_result(run_timeline_bench(cfg, log_line), args, format_timeline, timeline_markdown)
    return 0



def register_tracing(kinds: Any) -> None:
    tr = kinds.add_parser(
        "tracing",
        help="a real server at HTTP saturation with OpenTelemetry tracing off vs on (OTLP/HTTP to a local receiver)",
        description="Starts two `adafocus serve` subprocesses, tracing off and tracing on (every request's spans "
        "exported over OTLP/HTTP to a collector stand-in in this process), loads one at a time in ABBA-ordered "
        "off/on pairs and prints requests/s and server CPU per request for each, the per-pair ratios on / off "
        "(target: on >= 0.95x off) and the spans the collector received per request.",
    )
    tr.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    tr.add_argument("--clips", type=int, default=4, help="distinct clips, H.264 MP4 (default 4)")
    tr.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    tr.add_argument("--duration", type=float, default=10.0, help="seconds of HTTP load per round (default 10)")
    tr.add_argument("--pairs", type=int, default=3, help="off/on pairs of rounds (default 3)")
    tr.add_argument("--max-batch", type=int, default=8)
    tr.add_argument("--max-active", type=int, default=8)
    tr.add_argument("--decode-workers", type=int, default=2)
    tr.add_argument("--threads", type=int, default=1, help="the servers' torch threads (default 1)")
    tr.add_argument("--budget", default=None, help="budget level (default: the bundle's default level)")
    tr.add_argument("--client", choices=("auto", "hey", "python"), default="auto", help="load client (default auto)")
    tr.add_argument("--json", default=None, help="also write the full result as JSON to this file")
    tr.add_argument("--quick", action="store_true", help="a smoke run: 3 s rounds, 2 pairs")
    tr.set_defaults(handler=run_bench_tracing)



def run_bench_accuracy(args: argparse.Namespace) -> int:
    import json

    from loadtest.bench.accuracy import AccuracyConfig, format_accuracy, run_accuracy_bench

    presets = tuple(p for p in args.presets.split(",") if p)
    cfg = AccuracyConfig(args.corpus_dir, presets, bundle=args.bundle, count=args.count, tolerance_s=args.tolerance_s,
                         seed=args.seed)
    try:
        result = run_accuracy_bench(cfg, log_line)
    except (RuntimeError, FileNotFoundError) as exc:
        sys.stderr.write(f"adafocus bench accuracy: {exc}\n")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(format_accuracy(result) + "\n")
    return 0



def run_bench_tracing(args: argparse.Namespace) -> int:
    import json
    import logging

    from loadtest.bench.e2e import E2EBenchConfig
    from loadtest.bench.tracing import TracingBenchConfig, format_tracing, run_tracing_bench

    server = E2EBenchConfig(
        bundle=args.bundle, clips=args.clips, concurrency=args.concurrency,
        duration_s=min(args.duration, 3.0) if args.quick else args.duration, warmup_s=1.0 if args.quick else 3.0,
        max_batch=args.max_batch, max_active=args.max_active, decode_workers=args.decode_workers,
        torch_threads=args.threads, budget=args.budget, client=args.client,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = run_tracing_bench(TracingBenchConfig(server, 2 if args.quick else args.pairs), log_line)
    except RuntimeError as exc:
        sys.stderr.write(f"adafocus bench tracing: {exc}\n")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(format_tracing(result) + "\n")
    return 0
