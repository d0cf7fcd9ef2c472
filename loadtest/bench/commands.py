"""The ``adafocus bench`` subcommands: ``engine``, ``adaptive``, ``decode`` (in-process), ``e2e`` (a real server
next to those limits) and ``tracing`` (a real server with OpenTelemetry tracing off and on). Handlers import lazily
so that ``adafocus --help`` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loadtest.bench.server_commands import register_accuracy, register_timeline
from loadtest.cli_args import floats, ints, log_line, names, print_result, write_json


def register(sub: Any) -> None:
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
        type=names,
        default=("continuous", "drain", "single"),
        help="engine modes; continuous-mgN = continuous with min_glance_batch N; continuous-auto = the glance batch "
        "from the measured step costs",
    )
    eng.add_argument(
        "--min-glance-batch",
        type=ints,
        default=(),
        help="comma-separated min_glance_batch values > 1: each adds a continuous-mgN mode run beside the others",
    )
    eng.add_argument("--levels", type=names, default=(), help="budget levels (default: all)")
    eng.add_argument("--requests", type=int, default=256, help="requests per saturation run (default 256)")
    eng.add_argument("--repeats", type=int, default=3, help="runs per mode and load; median kept (default 3)")
    eng.add_argument("--rates", type=floats, default=(), help="arrival rates in videos/s (default: fractions)")
    eng.add_argument(
        "--rate-fractions", type=floats, default=(0.5, 0.8), help="rates as fractions of continuous saturation"
    )
    eng.add_argument("--rate-duration", type=float, default=4.0, help="seconds of arrivals per rate run (default 4)")
    eng.add_argument("--deadline", type=float, default=5.0, help="per-request deadline in rate runs (default 5 s)")
    eng.add_argument("--max-batch", type=int, default=32)
    eng.add_argument("--max-active", type=int, default=64)
    eng.add_argument("--clips", type=int, default=64, help="distinct pre-decoded clips (default 64)")
    eng.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    eng.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    eng.add_argument(
        "--runner",
        default="torch",
        help="torch: the model on --device; simulated[:a=MS,c=MS]: a SIMULATED accelerator whose every call takes "
        "a + c*b ms for b samples (keys a, c for both stages, glance_a, glance_c, focus_a, focus_c for one; default: "
        "paper-mn2-r50 on a V100, see service/engine/runners/simulated.py); with --config, that config's exits at "
        "the tiny model's layer sizes",
    )
    eng.add_argument("--seed", type=int, default=0)
    eng.add_argument("--plot", default=None, help="write a PNG of p99 vs load and saturation throughput here")
    eng.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    eng.add_argument("--markdown", action="store_true", help="print markdown tables (docs/benchmarks.md)")
    eng.add_argument("--quick", action="store_true", help="a smoke run of seconds (a minute on the shipped bundle)")
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
    dec.add_argument(
        "--corpus", default="synthetic", choices=("synthetic", "realistic"),
        help="realistic: the old decoder, exact and fast side by side on the realistic upload presets "
        "(model/data/realistic.py), CPU ms and frames decoded per clip, in-process",
    )
    dec.add_argument("--presets", default="all", help="realistic: `all` or a comma list of preset names")
    dec.add_argument("--corpus-dir", default=None, help="realistic: reuse (and complete) the corpus in this folder")
    dec.add_argument("--clips", type=int, default=1, help="realistic: scenes per preset (default 1)")
    dec.add_argument("--repeats", type=int, default=5, help="realistic: interleaved repeats (default 5)")
    dec.add_argument("--tolerance-s", type=float, default=0.5, help="realistic: fast sampling's tolerance")
    dec.set_defaults(handler=run_bench_decode)
    _register_e2e(kinds)
    register_accuracy(kinds)



def _register_e2e(kinds: Any) -> None:
    e2e = kinds.add_parser(
        "e2e",
        help="a real server at HTTP saturation next to the in-process engine, the decode pool and PyAV's bare decode",
        description="Starts `adafocus serve` (a subprocess), drives it with a light closed-loop client (hey when "
        "installed, else the repo's load generator) and prints, per interleaved round and as median (min-max): "
        "requests/s over HTTP, the in-process engine's saturation videos/s, the decode pool's clips/s and CPU per "
        "clip vs PyAV's bare decode, the runner's busy fraction and the CPU split of the machine.",
    )
    e2e.add_argument("--bundle", default=None, help="bundle directory (default: the shipped bundle)")
    e2e.add_argument("--clips", type=int, default=4, help="distinct clips, H.264 MP4 (default 4)")
    e2e.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    e2e.add_argument("--duration", type=float, default=10.0, help="seconds of HTTP load per round (default 10)")
    e2e.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    e2e.add_argument("--max-batch", type=int, default=8)
    e2e.add_argument("--max-active", type=int, default=8)
    e2e.add_argument("--min-glance-batch", default="1", help="the server's ADAFOCUS_MIN_GLANCE_BATCH: N or auto")
    e2e.add_argument("--decode-workers", type=int, default=2)
    e2e.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process (default 1)")
    e2e.add_argument("--budget", default=None, help="budget level (default: the bundle's default level)")
    e2e.add_argument("--requests", type=int, default=256, help="requests per in-process saturation run")
    e2e.add_argument("--decode-clips", type=int, default=64, help="decodes per decode-pool measurement")
    e2e.add_argument("--client", choices=("auto", "hey", "python"), default="auto", help="load client (default auto)")
    e2e.add_argument("--json", default=None, help="also write the full result as JSON to this file")
    e2e.add_argument("--quick", action="store_true", help="a smoke run: short rounds, still 3 interleaved")
    e2e.add_argument(
        "--corpus", default="synthetic", choices=("synthetic", "realistic"),
        help="realistic: the old decoder, exact and fast side by side (three servers, interleaved) on the files of "
        "--corpus-dir (one preset's folder of `adafocus synth --realistic`): videos/s and server CPU per video",
    )
    e2e.add_argument("--corpus-dir", default=None, help="realistic: the preset folder to post")
    e2e.add_argument("--tolerance-s", type=float, default=0.5, help="realistic: fast sampling's tolerance")
    e2e.add_argument("--frames", action="store_true", help="also send the clips as client-decoded frames "
                     "(/v2/models/{name}/infer, binary tensors) vs uploads: server videos/s and CPU per video")
    e2e.add_argument("--frames-corpus", default=None, help="with --frames: the files to compare (clip_* of this "
                     "directory, e.g. an `adafocus synth --realistic` preset); default the bench's clips")
    e2e.add_argument("--frames-per-request", type=int, default=1, help="with --frames: clips per frames request "
                     "(one [N, T, H, W, 3] tensor; default 1)")
    e2e.set_defaults(handler=run_bench_e2e)
    register_timeline(kinds)



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
    ada.add_argument("--factors", type=floats, default=(0.5, 3.0, 0.5), help="load per phase, x top-level capacity")
    ada.add_argument("--seconds", type=floats, default=(10.0, 30.0, 20.0), help="duration of each phase")
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

    from loadtest.bench.adaptive import AdaptiveBenchConfig, format_adaptive, run_adaptive_bench
    from loadtest.bench.workload import load_workload, steady_allocator

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

    result = run_adaptive_bench(work, cfg, log_line)
    if args.plot:
        from loadtest.plots import plot_adaptive

        result["plot"] = str(plot_adaptive(result, Path(args.plot)))
    if args.json:
        write_json(result)
    else:
        sys.stdout.write(format_adaptive(result) + "\n")
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
    from loadtest.bench.engine import EngineBenchConfig, format_engine, mode_label, parse_mode, run_engine_bench
    from loadtest.bench.simulated import simulated_workload
    from loadtest.bench.workload import load_workload, steady_allocator
    from service.engine.runners.simulated import SimulatedRunner
    from service.engine.runners.torch_runner import TorchRunner

    modes = tuple(dict.fromkeys([*args.modes, *(mode_label("continuous", n) for n in args.min_glance_batch)]))
    try:
        for label in modes:
            parse_mode(label)  # before the model loads
    except ValueError as exc:
        sys.stderr.write(f"adafocus bench engine: {exc}\n")
        return 2
    try:
        profile = _simulated_profile(args.runner)
    except ValueError as exc:
        sys.stderr.write(f"adafocus bench engine: --runner: {exc}\n")
        return 2
    allocator = "default" if args.default_allocator else steady_allocator()  # before any engine thread exists
    if profile is not None and args.config:
        work = simulated_workload(args.config, args.clips, args.seed)
    else:
        work = load_workload(args.bundle, args.config, args.clips, args.seed, args.device)
    runner = None if profile is None else SimulatedRunner(TorchRunner(work.model, args.device), profile)
    cfg = EngineBenchConfig(
        modes=modes,
        levels=_bench_levels(args, [lvl.name for lvl in work.budgets.levels]),
        saturation_requests=32 if args.quick else args.requests,
        repeats=max(3, args.repeats) if args.quick else args.repeats,  # a smoke run still interleaves 3 repeats
        rates=tuple(args.rates),
        rate_fractions=(0.5,) if args.quick else tuple(args.rate_fractions),
        rate_duration_s=0.5 if args.quick else args.rate_duration,
        deadline_s=1.0 if args.quick else args.deadline,
        max_batch=args.max_batch,
        max_active=args.max_active,
        clips=args.clips,
        seed=args.seed,
        device=args.device,
    )

    result = run_engine_bench(work, cfg, log_line, runner) | {"allocator": allocator}
    if args.plot:
        from loadtest.plots import plot_engine_modes

        made = plot_engine_modes(result, Path(args.plot), title=f"engine modes, model {result['model']}")
        result["plot"] = str(made) if made else None
    from loadtest.bench.breakdown import breakdown_markdown
    from loadtest.bench.engine import repeats_markdown
    from loadtest.markdown import engine_markdown

    def markdown(r: dict[str, Any]) -> str:
        return f"{engine_markdown(r)}\n\n{repeats_markdown(r)}\n\n{breakdown_markdown(r)}"

    print_result(result, args, format_engine, markdown)
    return 0


def _bench_levels(args: argparse.Namespace, names: list[str]) -> tuple[str, ...]:
    """The levels asked for; with --quick and none asked, the cheapest and the most expensive."""
    if args.quick and not args.levels:
        return tuple(dict.fromkeys([names[0], names[-1]]))
    return tuple(args.levels)


def _simulated_profile(runner: str) -> Any:
    """None for ``torch``; the ``StepProfile`` of ``simulated[:a=..,c=..]``; ValueError for anything else."""
    from service.engine.runners.simulated import parse_profile

    kind, _, spec = runner.partition(":")
    if runner == "torch":
        return None
    if kind != "simulated":
        raise ValueError(f"torch or simulated[:a=MS,c=MS], not {runner!r}")
    return parse_profile(spec)


def _run_bench_realistic(args: argparse.Namespace) -> int:
    from loadtest.bench.decode import RealisticBenchConfig, format_realistic, realistic_markdown, run_realistic_bench
    from model.data.realistic import parse_presets

    presets = parse_presets(args.presets)
    if args.quick:  # 2 s at 240p, two repeats, no RSS processes
        presets = tuple(p.shortened(seconds=2.0, height=240) for p in presets)
    corpus = Path(args.corpus_dir) if args.corpus_dir else None
    repeats = 2 if args.quick else args.repeats
    cfg = RealisticBenchConfig(presets, args.clips, repeats, args.num_frames, args.size, args.tolerance_s, corpus,
                               rss=not args.quick)
    print_result(run_realistic_bench(cfg), args, format_realistic, realistic_markdown)
    return 0


def run_bench_decode(args: argparse.Namespace) -> int:
    import os

    from loadtest.bench.decode import DecodeBenchConfig, format_decode, run_decode_bench

    if args.corpus == "realistic":
        return _run_bench_realistic(args)
    workers = args.max_workers or os.cpu_count() or 1
    if args.quick:
        cfg = DecodeBenchConfig(2.0, args.fps, 320, 180, args.num_frames, args.size, min(workers, 2), 3)
    else:
        cfg = DecodeBenchConfig(
            args.seconds, args.fps, args.width, args.height, args.num_frames, args.size, workers, args.clips_per_worker
        )
    result = run_decode_bench(cfg)
    from loadtest.markdown import decode_markdown

    print_result(result, args, format_decode, decode_markdown)
    return 0




def run_bench_e2e(args: argparse.Namespace) -> int:
    import json
    import logging

    import torch

    from loadtest.bench.e2e import E2EBenchConfig, format_e2e, run_e2e_bench
    from loadtest.bench.workload import steady_allocator

    if args.corpus == "realistic":
        return _run_e2e_realistic(args)
    if args.min_glance_batch != "auto" and not args.min_glance_batch.isdigit():
        sys.stderr.write(f"adafocus bench e2e: --min-glance-batch: a number or auto, not {args.min_glance_batch!r}\n")
        return 2
    cfg = E2EBenchConfig(
        bundle=args.bundle,
        clips=args.clips,
        concurrency=args.concurrency,
        duration_s=min(args.duration, 3.0) if args.quick else args.duration,
        warmup_s=1.0 if args.quick else 3.0,
        repeats=max(3, args.repeats) if args.quick else args.repeats,  # a smoke run still interleaves 3 rounds
        max_batch=args.max_batch,
        max_active=args.max_active,
        min_glance_batch=args.min_glance_batch,
        decode_workers=args.decode_workers,
        torch_threads=args.threads,
        budget=args.budget,
        engine_requests=min(args.requests, 32) if args.quick else args.requests,
        decode_clips=min(args.decode_clips, 8) if args.quick else args.decode_clips,
        client=args.client,
        frames=args.frames or args.frames_corpus is not None,
        frames_corpus=args.frames_corpus,
        frames_per_request=max(1, args.frames_per_request),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per metrics scrape
    steady_allocator()  # as `bench engine`: the in-process engine runs as it does there
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run_e2e_bench(cfg, log_line)
    except RuntimeError as exc:
        sys.stderr.write(f"adafocus bench e2e: {exc}\n")
        return 1
    finally:
        torch.set_num_threads(threads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(format_e2e(result) + "\n")
    return 0


def _run_e2e_realistic(args: argparse.Namespace) -> int:
    import json
    import logging

    from loadtest.bench.e2e_realistic import RealisticE2EConfig, format_realistic_e2e, run_realistic_e2e

    if not args.corpus_dir:
        sys.stderr.write("adafocus bench e2e --corpus realistic: give --corpus-dir (a preset folder)\n")
        return 2
    cfg = RealisticE2EConfig(
        corpus_dir=args.corpus_dir, bundle=args.bundle, clips=args.clips, concurrency=args.concurrency,
        duration_s=min(args.duration, 3.0) if args.quick else args.duration, warmup_s=1.0 if args.quick else 3.0,
        repeats=args.repeats, max_batch=args.max_batch, max_active=args.max_active,
        decode_workers=args.decode_workers, torch_threads=args.threads, tolerance_s=args.tolerance_s,
        client=args.client,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = run_realistic_e2e(cfg, log_line)
    except RuntimeError as exc:
        sys.stderr.write(f"adafocus bench e2e: {exc}\n")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(format_realistic_e2e(result) + "\n")
    return 0



