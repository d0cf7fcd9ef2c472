"""``adafocus loadtest --step-profile ...``: the step load over HTTP (loadtest/http/step_load.py), from the CLI's
arguments; ``--json`` prints the whole result, otherwise its figures and per-second table."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from loadtest.http.corpus import Corpus
from loadtest.http.step_load import StepLoadConfig, format_step_load, parse_profile, run_step_load


def run_step_loadtest(args: argparse.Namespace, corpus: Corpus) -> int:
    try:
        cfg = StepLoadConfig(
            url=args.url.rstrip("/"),
            phases=parse_profile(args.step_profile),
            capacity=args.capacity,
            capacity_concurrency=args.concurrency,
            capacity_requests=args.requests or StepLoadConfig.capacity_requests,
            slo_p99_s=args.slo_p99,
            min_level=args.min_level,
            token=args.token,
            timeout_s=args.timeout,
            max_inflight=args.max_inflight,
            seed=args.seed,
            stream=args.stream,
        )
    except ValueError as exc:
        sys.stderr.write(f"adafocus loadtest: {exc}\n")
        return 2
    try:
        result = asyncio.run(run_step_load(cfg, corpus))
    except RuntimeError as exc:
        sys.stderr.write(f"adafocus loadtest: {exc}\n")
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_step_load(result) + "\n")
    return 0
