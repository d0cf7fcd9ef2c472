"""Prometheus metrics (own registry): HTTP-side timings plus the engine's ``EngineObserver`` hooks.

Names follow DESIGN.md and Prometheus conventions: base units, ``_total`` counters, histograms.
"""

from __future__ import annotations

import threading
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from service.engine.autobudget import Decision
from service.engine.config import Stage
from service.engine.types import EngineResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GMACS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0)
SEGMENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# how a timeline request (``segment_s``) ended: every segment answered; answered with ``ended_at_s`` (its deadline,
# or a stream that ended early); refused as bad input (its fields, or its video); failed on the server's side
# (queue full, no decoder free, an engine error); the client left (or the server shut down)
TimelineOutcome = Literal["complete", "partial", "invalid", "failed", "cancelled"]
# the families a server and a fleet's decode replica both have (one name, one help: a fleet's GET /metrics merges them)
DECODE_PENDING = ("adafocus_decode_pending", "Uploads waiting for or in a decoder worker")
DECODER_RESTARTS = ("adafocus_decoder_restarts", "Decoder worker processes replaced, by cause")


class Metrics:
    """Every metric of the service; thread-safe (prometheus_client locks), cheap to call from the runner thread."""

    def __init__(self, num_exits: int, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # no `_created` series: they double the exposition for no dashboard use
        self.registry = registry or CollectorRegistry()
        r = self.registry
        exit_buckets = tuple(float(k) for k in range(num_exits))
        self.requests = Counter(
            "adafocus_requests", "Answered /classify requests by HTTP status", ["status"], registry=r
        )
        self.request_duration = Histogram(
            "adafocus_request_duration_seconds", "Time from request start to answer (/classify)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "adafocus_queue_wait_seconds", "Engine admission wait: submit to glance start",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decode_duration = Histogram(
            "adafocus_decode_duration_seconds", "Decode time of one upload in a worker process",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.step_duration = Histogram(
            "adafocus_step_duration_seconds", "Model call time per engine step", ["stage"],
            buckets=STEP_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "adafocus_batch_size", "Samples per model call", ["stage"], buckets=BATCH_BUCKETS, registry=r
        )
        self.exit_step = Histogram(
            "adafocus_exit_step", "Exit index 0..K at which a video stopped", buckets=exit_buckets, registry=r
        )
        self.cubes_used = Histogram(
            "adafocus_cubes_per_video", "Cubes run through the local network per video",
            buckets=exit_buckets, registry=r,
        )
        self.gmacs = Histogram(
            "adafocus_gmacs_per_video", "Compute spent per video (GMACs)", buckets=GMACS_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("adafocus_queue_depth", "Requests waiting for admission", registry=r)
        self.active = Gauge("adafocus_active_requests", "Requests admitted to the engine", registry=r)
        self.decodes = Counter(
            "adafocus_decodes", "Uploads decoded, by the decoder that ran and the sampling", ["backend", "sampling"],
            registry=r,
        )
        self.result_cache_hits = Counter(
            "adafocus_result_cache_hits", "/classify answers served from the result cache", registry=r
        )
        self.result_cache_misses = Counter(
            "adafocus_result_cache_misses", "/classify lookups the result cache could not answer", registry=r
        )
        self.decode_pending = Gauge(*DECODE_PENDING, registry=r)
        self.budget_info = Gauge(
            "adafocus_budget_info", "The active budget level (value 1)", ["budget"], registry=r
        )
        self.budget_version = Gauge("adafocus_budget_version", "Version of the active budget", registry=r)
        self.budget_setting_version = Gauge(
            "adafocus_budget_setting_version",
            "Version of the operator's budget setting applied here (equal on every replica of a fleet once it spread)",
            registry=r,
        )
        self.rejected = Counter(
            "adafocus_rejected", "Requests refused or dropped, by reason", ["reason"], registry=r
        )
        self.decoder_restarts = Counter(*DECODER_RESTARTS, ["reason"], registry=r)
        self.api_key_requests = Counter(
            "adafocus_api_key_requests", "/classify requests admitted by the API key check, by key name", ["key"],
            registry=r,
        )
        self.api_key_rejected = Counter(
            "adafocus_api_key_rejected", "/classify requests refused by the API key check, by key name and reason",
            ["key", "reason"], registry=r,
        )
        self.exits = Counter(
            "adafocus_exits", "Answered videos by exit reason and budget", ["reason", "budget"], registry=r
        )
        self.ready = Gauge("adafocus_ready", "1 when the server reports ready", registry=r)
        self.connections_open = Gauge("adafocus_connections_open", "Open HTTP connections", registry=r)
        self.connections_closed = Counter(
            "adafocus_connections_closed", "HTTP connections the server closed, by reason", ["reason"], registry=r
        )
        self.auto_rank = Gauge(
            "adafocus_auto_budget_rank", "Automatic budget: the chosen level's place on its ladder (0 = the floor)",
            registry=r,
        )
        self.auto_arrival = Gauge(
            "adafocus_auto_budget_arrival_rate", "Automatic budget: arrivals per second (refused ones too)", registry=r
        )
        self.auto_demand = Gauge(
            "adafocus_auto_budget_demand", "Automatic budget: arrival rate plus backlog / objective, videos/s",
            registry=r,
        )
        self.auto_service = Gauge(
            "adafocus_auto_budget_service_rate", "Automatic budget: videos/s the chosen level serves (measured)",
            registry=r,
        )
        self.auto_pinned = Gauge(
            "adafocus_auto_budget_pinned", "Automatic budget: 1 while at the floor and the floor cannot keep up",
            registry=r,
        )
        self.level_seconds = Counter(
            "adafocus_budget_level_seconds", "Automatic budget: seconds spent at each level", ["budget"], registry=r
        )
        self.timeline_requests = Counter(
            "adafocus_timeline_requests", "Timeline requests (segment_s) by outcome", ["outcome"], registry=r
        )
        self.timeline_segments = Counter(
            "adafocus_timeline_segments", "Timeline segments classified (each one engine request)", registry=r
        )
        self.timeline_segments_per_video = Histogram(
            "adafocus_timeline_segments_per_video", "Segments in a timeline answer (complete or partial)",
            buckets=SEGMENT_BUCKETS, registry=r,
        )
        self.timeline_first_segment = Histogram(
            "adafocus_timeline_first_segment_seconds", "Time from a timeline request's start to its first segment",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self._budget_lock = threading.Lock()

    # EngineObserver
    def on_step(self, stage: Stage, batch_size: int, seconds: float) -> None:
        self.step_duration.labels(stage).observe(seconds)
        self.batch_size.labels(stage).observe(batch_size)

    def on_result(self, result: EngineResult) -> None:
        self.queue_wait.observe(result.queue_seconds)
        self.exit_step.observe(result.exit_step)
        self.cubes_used.observe(result.cubes_used)
        self.gmacs.observe(result.gmacs)
        self.exits.labels(result.exit_reason, result.budget).inc()

    def on_queue(self, queue_depth: int, active: int) -> None:
        self.queue_depth.set(queue_depth)
        self.active.set(active)

    def on_budget(self, name: str, version: int) -> None:
        with self._budget_lock:
            self.budget_info.clear()
            self.budget_info.labels(name).set(1)
            self.budget_version.set(version)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def on_auto_budget(self, decision: Decision) -> None:
        self.auto_rank.set(decision.rank)
        self.auto_arrival.set(decision.arrival_rate)
        self.auto_demand.set(decision.demand)
        self.auto_service.set(decision.service_rate or 0.0)
        self.auto_pinned.set(1 if decision.pinned else 0)
        level, seconds = decision.held
        self.level_seconds.labels(level).inc(seconds)

    # HTTP side
    def on_request(self, status: int, seconds: float) -> None:
        self.requests.labels(str(status)).inc()
        self.request_duration.observe(seconds)

    def on_decode(self, seconds: float, backend: str = "cpu", sampling: str = "exact") -> None:
        self.decode_duration.observe(seconds)
        self.decodes.labels(backend, sampling).inc()

    def on_result_cache(self, hit: bool) -> None:
        (self.result_cache_hits if hit else self.result_cache_misses).inc()

    def on_decoder_restart(self, reason: str) -> None:
        self.decoder_restarts.labels(reason).inc()

    def on_connections_open(self, count: int) -> None:
        self.connections_open.set(count)

    def on_connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()

    def on_api_key(self, key: str, refused: str | None) -> None:
        """A /classify request admitted (``refused`` None) or refused (the reason) under the key named ``key``."""
        if refused is None:
            self.api_key_requests.labels(key).inc()
        else:
            self.api_key_rejected.labels(key, refused).inc()

    def on_timeline(self, outcome: TimelineOutcome, segments: int | None) -> None:
        """A timeline request ended; ``segments``: how many its answer holds (None: no answer)."""
        self.timeline_requests.labels(outcome).inc()
        if segments is not None:
            self.timeline_segments_per_video.observe(segments)

    def on_timeline_segment(self, first_after_s: float | None) -> None:
        """A timeline segment answered; ``first_after_s``: the request's age, when it is the video's first."""
        self.timeline_segments.inc()
        if first_after_s is not None:
            self.timeline_first_segment.observe(first_after_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DecoderMetrics:
    """A fleet decode replica's own metrics (fleet/decode_tier.py): its decoder processes' restarts, by cause, and
    the uploads it holds (waiting for or in a decoder process), under the server's names."""

    def __init__(self) -> None:
        disable_created_metrics()  # as Metrics: no `_created` series
        self.registry = CollectorRegistry()
        self.decoder_restarts = Counter(*DECODER_RESTARTS, ["reason"], registry=self.registry)
        self.decode_pending = Gauge(*DECODE_PENDING, registry=self.registry)

    def on_decoder_restart(self, reason: str) -> None:
        self.decoder_restarts.labels(reason).inc()


def labelled(registry: CollectorRegistry, replica: str, **extra: str) -> list[Metric]:
    """Every family of ``registry`` with ``replica`` (and ``extra``) added to each sample's labels (picklable: sent
    between replicas)."""
    families = []
    for family in registry.collect():
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [s._replace(labels={**s.labels, "replica": replica, **extra}) for s in family.samples]
        families.append(copy)
    return families


def render_families(families: list[Metric]) -> bytes:
    """One exposition of families from several replicas: the samples of equal names merged into one family."""
    merged: dict[str, Metric] = {}
    for family in families:
        into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
        into.samples.extend(family.samples)
    return generate_latest(_Families(list(merged.values())))  # any object with collect() will do


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
