"""The fleet's shape: how many replicas, what each holds, how Ray Serve routes to them (a frozen dataclass, built
from the ``serve-ray`` flags), and the deployment options and ``serve run`` config derived from it: the model
replicas' deployment and, with ``decode_replicas``, the decode tier's (fleet/decode_tier.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.settings import Settings

APP_NAME = "adafocus"
DEPLOYMENT = "AdaFocusReplica"
DECODE_DEPLOYMENT = "AdaFocusDecoder"
KEEPER_NAME = "adafocus-budget-keeper"
KEEPER_NAMESPACE = "adafocus"
CONTROL_SLACK = 8  # requests beyond the engine's that a replica takes: /budget, /metrics, /readyz next to the load
# the decode tier's autoscaling target, uploads per decoder process of a replica: one decoding, one waiting
DECODE_TARGET_PER_WORKER = 2


@dataclass(frozen=True)
class FleetConfig:
    replicas: int = 2  # started with; the autoscaler's minimum when max_replicas is set
    max_replicas: int | None = None  # None: a fixed number of replicas; else autoscale between the two
    num_gpus: float = 0.0  # per replica: 1 on a GPU host (one engine per GPU)
    num_cpus: float = 1.0  # per replica (Ray's logical CPUs)
    target_ongoing_requests: float | None = None  # autoscaling target per replica; None: ADAFOCUS_MAX_ACTIVE
    poll_s: float = 0.5  # replicas re-read the fleet's budget this often (after a missed push, a late start)
    simulated_step_s: float | None = None  # benchmarks: every model call takes this long (a fake accelerator)
    decode_replicas: int = 0  # the decode tier (CPU only); 0: each model replica decodes its own uploads
    max_decode_replicas: int | None = None  # None: a fixed decode tier; else autoscale between the two
    decode_num_cpus: float = 1.0  # per decode replica (Ray's logical CPUs); its decoder processes: decode_workers

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= replicas ({self.replicas})")
        if self.num_gpus < 0 or self.num_cpus < 0 or self.poll_s <= 0:
            raise ValueError("num_gpus and num_cpus must be >= 0, poll_s > 0")
        if self.decode_replicas < 0 or self.decode_num_cpus < 0:
            raise ValueError(f"decode_replicas and decode_num_cpus must be >= 0, got {self.decode_replicas}")
        if self.max_decode_replicas is not None and not 1 <= self.decode_replicas <= self.max_decode_replicas:
            raise ValueError(
                f"max_decode_replicas ({self.max_decode_replicas}) needs 1 <= decode_replicas ({self.decode_replicas})"
                " <= max_decode_replicas"
            )


def max_ongoing_requests(settings: Settings) -> int:
    """What one replica accepts at once: its engine's active slots plus its queue (plus the control requests).
    Ray's default (5) would cap every continuous batch at 5; the engine's own queue answers 503 beyond it."""
    return settings.max_active + settings.max_queue + CONTROL_SLACK


def deployment_options(config: FleetConfig, settings: Settings) -> dict[str, Any]:
    """``serve.deployment`` options of the replica deployment."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": max_ongoing_requests(settings),
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
    }
    # scale out once replicas hold more than a full engine's worth: the surplus waits in a queue
    target = config.target_ongoing_requests or settings.max_active
    return options | replica_count(config.replicas, config.max_replicas, target)


def replica_count(replicas: int, max_replicas: int | None, target_ongoing: float) -> dict[str, Any]:
    """A deployment's fixed ``num_replicas``, or, with a maximum, its ``autoscaling_config`` from ``replicas`` up to
    ``max_replicas`` on ``target_ongoing`` requests per replica (one rule for both tiers)."""
    if max_replicas is None:
        return {"num_replicas": replicas}
    return {"autoscaling_config": {
        "min_replicas": replicas, "max_replicas": max_replicas, "target_ongoing_requests": target_ongoing,
    }}


def decode_options(config: FleetConfig, settings: Settings) -> dict[str, Any]:
    """``serve.deployment`` options of the decode tier: CPU only, autoscaled on its own queue (the uploads its
    replicas hold, ``DECODE_TARGET_PER_WORKER`` per decoder process as the target). A replica takes as many uploads
    as its decoder pool queues (``ADAFOCUS_DECODE_QUEUE``), so that they wait in its pool, next to its decoder
    processes: an upload that finds every replica full waits in Serve's router, which retries after a backoff (25 ms,
    doubling up to 0.5 s: ``RAY_SERVE_ROUTER_RETRY_*``) and leaves decoders idle meanwhile (measured: a one-replica
    tier that took 2 uploads answered 8.1 videos/s, 28.0 once it took its queue's 64; docs/benchmarks.md)."""
    options: dict[str, Any] = {
        "name": DECODE_DEPLOYMENT,
        "max_ongoing_requests": settings.decode_queue,
        "ray_actor_options": {"num_cpus": config.decode_num_cpus, "num_gpus": 0.0},
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": settings.max_decode_s,
    }
    target = DECODE_TARGET_PER_WORKER * settings.decode_workers
    return options | replica_count(config.decode_replicas, config.max_decode_replicas, target)


def serve_config(config: FleetConfig, settings: Settings, port: int = 8000) -> dict[str, Any]:
    """The same fleet as a ``serve run`` / KubeRay ``serveConfigV2`` document (ray.serve.schema.ServeDeploySchema);
    the replicas' settings come from the ``ADAFOCUS_*`` environment of the process that builds the app."""
    options = [deployment_options(config, settings)]
    if config.decode_replicas:
        options.append(decode_options(config, settings))
    return {
        "http_options": {"host": "0.0.0.0", "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "fleet.replica:build",
                "args": {
                    "replicas": config.replicas, "max_replicas": config.max_replicas, "num_gpus": config.num_gpus,
                    "num_cpus": config.num_cpus, "decode_replicas": config.decode_replicas,
                    "max_decode_replicas": config.max_decode_replicas, "decode_num_cpus": config.decode_num_cpus,
                },
                "deployments": options,
            }
        ],
    }
