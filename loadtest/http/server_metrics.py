"""Server-side figures for a load-test phase, from two scrapes of ``GET /metrics`` (Prometheus text format).

The delta of ``adafocus_step_duration_seconds_sum`` over a phase, divided by the phase's wall time, is the
runner's busy fraction with decoding in the loop: the share of the phase the model runner spent inside model
calls rather than waiting (for decoded clips, for requests).
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[str, float]

_SERIES = {
    "adafocus_step_duration_seconds_sum": "step_seconds",
    "adafocus_step_duration_seconds_count": "steps",
    "adafocus_batch_size_sum": "batch_samples",
    "adafocus_batch_size_count": "batches",
    "adafocus_decode_duration_seconds_sum": "decode_seconds",
    "adafocus_decode_duration_seconds_count": "decodes",
}


def parse_metrics(text: str) -> Snapshot:
    """Selected counters, summed over their labels and also kept per ``stage`` label (``name:stage``)."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _SERIES.get(sample.name)
            if key is None:
                continue
            out[key] = out.get(key, 0.0) + float(sample.value)
            stage = sample.labels.get("stage")
            if stage:
                out[f"{key}:{stage}"] = out.get(f"{key}:{stage}", 0.0) + float(sample.value)
    return out


async def scrape(client: httpx.AsyncClient) -> Snapshot | None:
    """One scrape of /metrics; None when the server has none (or it fails)."""
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse_metrics(response.text)
    except ValueError:
        return None


def phase_figures(before: Snapshot | None, after: Snapshot | None, elapsed_s: float) -> dict[str, Any] | None:
    """Runner busy fraction, mean batch size per stage and mean decode time over the phase."""
    if before is None or after is None:
        return None

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def ratio(num: str, den: str) -> float | None:
        d = delta(den)
        return delta(num) / d if d > 0 else None

    return {
        "runner_busy_fraction": min(1.0, delta("step_seconds") / elapsed_s) if elapsed_s > 0 else None,
        "mean_batch": {stage: ratio(f"batch_samples:{stage}", f"batches:{stage}") for stage in ("glance", "focus")},
        "steps": {stage: int(delta(f"steps:{stage}")) for stage in ("glance", "focus")},
        "decode_ms_mean": None if (m := ratio("decode_seconds", "decodes")) is None else m * 1e3,
    }
