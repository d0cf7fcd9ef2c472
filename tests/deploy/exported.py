"""The metric names the server exports (read from service.metrics' registry), to check dashboards and alerts."""

from __future__ import annotations

from service.metrics import Metrics
from tests.deploy.promql import exported_sample_names, registry_families

# DESIGN.md's Metrics section: the names the dashboard and the alert rules are built on.
DESIGN_METRICS = (
    "adafocus_requests_total",
    "adafocus_request_duration_seconds_bucket",
    "adafocus_queue_wait_seconds_bucket",
    "adafocus_decode_duration_seconds_bucket",
    "adafocus_step_duration_seconds_bucket",
    "adafocus_batch_size_bucket",
    "adafocus_exit_step_bucket",
    "adafocus_gmacs_per_video_bucket",
    "adafocus_queue_depth",
    "adafocus_active_requests",
    "adafocus_budget_info",
    "adafocus_rejected_total",
)


def exported_metric_names() -> set[str]:
    """Every sample name the server's registry can expose (a tiny model: the exits only set bucket bounds)."""
    return exported_sample_names(registry_families(Metrics(num_exits=4).registry))
