"""The metric names the server exports, for checking the dashboard and the alert rules against."""

from __future__ import annotations

from tests.deploy.promql import exported_sample_names

# DESIGN.md's Metrics section (name, type); replaced by service.metrics' registry once the server lands.
DESIGN_FAMILIES = [
    ("adafocus_requests", "counter"),
    ("adafocus_request_duration_seconds", "histogram"),
    ("adafocus_queue_wait_seconds", "histogram"),
    ("adafocus_decode_duration_seconds", "histogram"),
    ("adafocus_step_duration_seconds", "histogram"),
    ("adafocus_batch_size", "histogram"),
    ("adafocus_exit_step", "histogram"),
    ("adafocus_gmacs_per_video", "histogram"),
    ("adafocus_queue_depth", "gauge"),
    ("adafocus_active_requests", "gauge"),
    ("adafocus_budget_info", "gauge"),
    ("adafocus_rejected", "counter"),
]


def exported_metric_names() -> set[str]:
    return exported_sample_names(DESIGN_FAMILIES)
