"""``adafocus serve-ray``: the fleet on Ray Serve (fleet/replica.py), and ``adafocus bench-fleet``: its throughput
for 1, 2, 4 replicas (fleet/bench.py). Both need Ray: ``pip install -e '.[ray]'``.

serve-ray starts a local Ray cluster (a new one, never another process's) or joins ``--address``, deploys
``--replicas`` replicas behind one HTTP port and stays up until SIGTERM/SIGINT, then takes its fleet down (each
replica drains): on a cluster it joined, its own application only (``serve.delete``: the other applications of a
shared cluster keep running); on the cluster it started, all of Serve. ``--print-config`` prints the same fleet as a
``serve run`` / KubeRay ``serveConfigV2`` document instead. Settings come from ``ADAFOCUS_*`` as for ``serve``;
``ADAFOCUS_HOST``/``ADAFOCUS_PORT`` become Serve's HTTP address.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    fleet = sub.add_parser("serve-ray", help="run N replicas behind one port on Ray Serve (needs the [ray] extra)")
    fleet.add_argument("--replicas", type=int, default=2, help="replicas (autoscaling minimum) (default %(default)s)")
    fleet.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many (default: fixed)")
    fleet.add_argument("--num-gpus", default="auto", help="GPUs per replica: auto (1 when Ray sees a GPU, else 0)")
    fleet.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica (default %(default)s)")
    fleet.add_argument("--decode-replicas", type=int, default=0,
                       help="a CPU-only decode tier of this many replicas (autoscaling minimum); 0: model replicas "
                       "decode their own uploads (default %(default)s)")
    fleet.add_argument("--max-decode-replicas", type=int, default=None, help="autoscale the decode tier up to this")
    fleet.add_argument("--decode-num-cpus", type=float, default=1.0, help="Ray CPUs per decode replica")
    fleet.add_argument("--host", default=None, help="address of Serve's HTTP proxy (ADAFOCUS_HOST, default 0.0.0.0)")
    fleet.add_argument("--port", type=int, default=None, help="its port (ADAFOCUS_PORT, default 8000)")
    fleet.add_argument("--bundle", default=None, help="model bundle directory (ADAFOCUS_BUNDLE; default: shipped)")
    fleet.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    fleet.add_argument("--print-config", action="store_true", help="print the `serve run` config (JSON) and exit")
    fleet.set_defaults(handler=run_serve_ray)

    bench = sub.add_parser("bench-fleet", help="fleet throughput for 1, 2, 4 replicas (simulated and real runner)")
    bench.add_argument("--replicas", default="1,2,4", help="replica counts (default %(default)s)")
    bench.add_argument("--runners", default="simulated,real", help="simulated and/or real (default %(default)s)")
    bench.add_argument("--step-ms", type=float, default=50.0, help="simulated runner: ms per model call")
    bench.add_argument("--duration", type=float, default=20.0, help="measured seconds per point (default %(default)s)")
    bench.add_argument("--concurrency-per-replica", type=int, default=16, help="requests in flight per replica")
    bench.add_argument("--decode-tier", type=int, default=0, metavar="D",
                       help="instead: the first --replicas count with and without a decode tier of D replicas, "
                       "side by side (simulated runner, benchmark clips)")
    bench.add_argument("--concurrency", type=int, default=32, help="--decode-tier: requests in flight")
    bench.add_argument("--json", default=None, help="also write the full result to this JSON file")
    bench.set_defaults(handler=run_bench_fleet)


def run_serve_ray(args: argparse.Namespace) -> int:
    from service.startup import StartupError, load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("bundle", args.bundle)) if v is not None}
    try:
        settings = load_settings(overrides)
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    try:
        import ray
        from ray import serve

        from fleet.config import APP_NAME, FleetConfig, serve_config
        from fleet.replica import fleet_app
    except ImportError as exc:
        log.error("serve-ray needs Ray: pip install -e '.[ray]' (%s)", exc)
        return 2
    num_gpus = 0.0 if args.num_gpus == "auto" else float(args.num_gpus)
    config = FleetConfig(
        replicas=args.replicas, max_replicas=args.max_replicas, num_gpus=num_gpus, num_cpus=args.num_cpus,
        decode_replicas=args.decode_replicas, max_decode_replicas=args.max_decode_replicas,
        decode_num_cpus=args.decode_num_cpus,
    )
    if args.print_config:
        json.dump(serve_config(config, settings, settings.port), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    joined = args.address is not None
    ray.init(address=args.address if joined else "local", include_dashboard=False)
    if args.num_gpus == "auto" and ray.cluster_resources().get("GPU", 0) >= 1:
        config = FleetConfig(**{**config.__dict__, "num_gpus": 1.0})  # one engine per GPU
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(fleet_app(settings, config), name=APP_NAME, route_prefix="/")
        log.info("fleet ready on %s:%d: %s", settings.host, settings.port, config)
        stop.wait()
        log.info("stopping the fleet (replicas drain)")
    finally:
        stop_fleet(APP_NAME, joined)
    return 0


def stop_fleet(app_name: str, joined: bool) -> None:
    """Take down what ``serve-ray`` started: its application on a cluster it joined, else Serve and the cluster."""
    import ray
    from ray import serve

    try:
        if joined:
            serve.delete(app_name)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()  # a joined cluster: this driver disconnects, the cluster runs on


def run_bench_fleet(args: argparse.Namespace) -> int:
    from fleet.bench import FleetBenchConfig, TierBenchConfig, markdown, run_fleet_bench, run_tier_bench, tier_markdown

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.decode_tier:
        tier = TierBenchConfig(
            replicas=int(args.replicas.split(",")[0]), decode_replicas=args.decode_tier, step_s=args.step_ms / 1000,
            duration_s=args.duration, concurrency=args.concurrency,
        )
        return _write(run_tier_bench(tier), tier_markdown, args.json)
    cfg = FleetBenchConfig(
        replicas=tuple(int(n) for n in args.replicas.split(",")),
        runners=tuple(args.runners.split(",")),
        step_s=args.step_ms / 1000,
        duration_s=args.duration,
        concurrency_per_replica=args.concurrency_per_replica,
    )
    return _write(run_fleet_bench(cfg), markdown, args.json)


def _write(result: dict[str, Any], table: Any, path: str | None) -> int:
    """The result as a markdown table on stdout, and in full as JSON to ``path``."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    sys.stdout.write(table(result))
    return 0
