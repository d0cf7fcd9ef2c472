"""``adafocus loadtest --step-profile 0.5:10,3:30,0.5:20``: the step load of ``bench adaptive`` over HTTP.

Each phase is a multiple of a capacity (``--capacity`` videos/s, or one measured first: ``capacity_requests``
requests at ``capacity_concurrency`` in flight, in videos/s answered), played as one Poisson schedule (the same
``schedule`` as ``bench adaptive``), open loop: latency counts from the intended send time. With an objective
(``slo_p99_s``) the server's automatic budget is switched on first (``PUT /budget {"mode": "auto", ...}``, the
operator token) and the manual level it had is restored at the end. Per second: offered and answered requests,
refused ones, the p99 of the answers, their accuracy and the budget level they report (their ``budget`` field).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
import numpy as np

from loadtest.http.corpus import Corpus
from loadtest.http.load import LoadConfig, active_budget, classify_one, get_budget, preflight, put_budget, run_phase
from loadtest.report import Sample, latency_summary, summarize
from loadtest.schedule import Bound, Phase, schedule


@dataclass(frozen=True)
class StepLoadConfig:
    url: str
    phases: tuple[Phase, ...]  # (multiple of the capacity, seconds)
    capacity: float | None = None  # videos/s; None: measured first
    capacity_requests: int = 32
    capacity_concurrency: int = 8
    slo_p99_s: float | None = None  # switch the server's budget to auto with this objective
    min_level: str | None = None  # the automatic budget's floor
    token: str | None = None
    timeout_s: float = 60.0
    max_inflight: int = 1024
    seed: int = 0
    stream: bool = False

    def __post_init__(self) -> None:
        if not self.phases or any(f <= 0 or s <= 0 for f, s in self.phases):
            raise ValueError("a step profile needs phases factor:seconds with both > 0")
        if self.capacity is not None and not self.capacity > 0:
            raise ValueError("capacity must be > 0")
        if self.slo_p99_s is not None and not self.token:
            raise ValueError("the automatic budget is switched with PUT /budget and needs the operator token (--token)")
        if self.min_level is not None and self.slo_p99_s is None:
            raise ValueError("a floor level (min_level) needs an objective (slo_p99_s)")


def parse_profile(text: str) -> tuple[Phase, ...]:
    """``0.5:10,3:30`` -> ((0.5, 10.0), (3.0, 30.0))."""
    phases = []
    for part in text.split(","):
        factor, sep, seconds = part.strip().partition(":")
        try:
            phase = (float(factor), float(seconds))
        except ValueError:
            raise ValueError(f"expected factor:seconds, got {part.strip()!r}") from None
        if not sep or phase[0] <= 0 or phase[1] <= 0:
            raise ValueError(f"expected factor:seconds with both > 0, got {part.strip()!r}")
        phases.append(phase)
    return tuple(phases)


def per_second(samples: list[Sample], started: float, end_s: float) -> list[dict[str, Any]]:
    rows = []
    for s in range(int(np.ceil(end_s))):
        lo, hi = started + s, started + s + 1
        done = [x for x in samples if x.done is not None and lo <= x.done < hi]
        ok = [x for x in done if x.ok]
        judged = [x.correct for x in ok if x.correct is not None]
        levels = Counter(x.budget for x in ok if x.budget is not None)
        rows.append(
            {
                "t_s": s,
                "offered_per_s": sum(1 for x in samples if lo <= x.intended < hi),
                "answered_per_s": len(ok),
                "refused_per_s": len(done) - len(ok),
                "p99_s": latency_summary([x.latency for x in ok if x.latency is not None])["p99"],
                "accuracy": float(np.mean(judged)) if judged else None,
                "level": levels.most_common(1)[0][0] if levels else None,
            }
        )
    return rows


def phase_rows(rows: list[dict[str, Any]], span: dict[str, float]) -> dict[str, Any]:
    mine = [r for r in rows if span["start_s"] <= r["t_s"] < span["end_s"]]
    p99 = [r["p99_s"] for r in mine if r["p99_s"] is not None]
    return {
        **span,
        "offered": sum(r["offered_per_s"] for r in mine),
        "answered": sum(r["answered_per_s"] for r in mine),
        "worst_second_p99_s": max(p99) if p99 else None,
        "levels": sorted({r["level"] for r in mine if r["level"] is not None}),
    }


async def _play(
    client: httpx.AsyncClient, corpus: Corpus, cfg: StepLoadConfig, load: LoadConfig, arrivals: np.ndarray
) -> tuple[list[Sample], float, int]:
    loop = asyncio.get_running_loop()
    items = [corpus.items[i] for i in np.random.default_rng(cfg.seed).permutation(len(corpus.items))]
    samples: list[Sample] = []
    inflight: set[asyncio.Task[None]] = set()
    not_sent = 0
    started = loop.time()
    for i, offset in enumerate(arrivals):
        intended = started + float(offset)
        if intended > loop.time():
            await asyncio.sleep(intended - loop.time())
        if len(inflight) >= cfg.max_inflight:
            not_sent += 1
            continue
        sample = Sample(intended=intended)
        samples.append(sample)
        task = asyncio.create_task(classify_one(client, items[i % len(items)], sample, load))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.wait(inflight)
    return samples, started, not_sent


async def _auth_put(client: httpx.AsyncClient, token: str, update: dict[str, Any]) -> dict[str, Any]:
    response = await client.put("/budget", json=update, headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        raise RuntimeError(f"PUT /budget {update} failed: {response.status_code} {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


async def run_step_load(cfg: StepLoadConfig, corpus: Corpus, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Measure (or take) the capacity, switch to the automatic budget if asked, play the profile, restore."""
    load = LoadConfig(
        cfg.url,
        Bound(requests=cfg.capacity_requests),
        concurrency=cfg.capacity_concurrency,
        timeout_s=cfg.timeout_s,
        seed=cfg.seed,
        progress=False,
        stream=cfg.stream,
    )
    timeout = httpx.Timeout(cfg.timeout_s, pool=None)
    limits = httpx.Limits(
        max_connections=max(cfg.max_inflight, cfg.capacity_concurrency), max_keepalive_connections=256
    )
    async with httpx.AsyncClient(base_url=cfg.url, timeout=timeout, limits=limits) as client:
        await preflight(client, out)
        capacity, measured = await _capacity(client, corpus, cfg, load, out)
        arrivals, spans = schedule(cfg.phases, capacity, cfg.seed)
        original = active_budget(await get_budget(client))
        budget = await _switch_to_auto(client, cfg)
        try:
            samples, started, not_sent = await _play(client, corpus, cfg, load, arrivals)
        finally:
            if budget is not None and cfg.token is not None:
                await _auth_put(client, cfg.token, {"mode": "manual"})
                if original is not None:
                    await put_budget(client, cfg.token, original)
    played = _Played(samples, started, not_sent, spans)
    return _result(cfg, capacity, measured is not None, budget is not None, played)


async def _capacity(
    client: httpx.AsyncClient, corpus: Corpus, cfg: StepLoadConfig, load: LoadConfig, out: TextIO
) -> tuple[float, dict[str, Any] | None]:
    """The capacity the phases are multiples of (videos/s): the configured one, or measured (with its run)."""
    if cfg.capacity is not None:
        return cfg.capacity, None
    measured = await run_phase(client, corpus, load, "capacity", None, out)
    if not measured["completed"]:
        raise RuntimeError(f"capacity run answered nothing: {measured['errors_by_code']}")
    capacity = float(measured["throughput"])
    out.write(f"capacity: {capacity:.2f} videos/s ({measured['completed']} answered)\n")
    return capacity, measured


async def _switch_to_auto(client: httpx.AsyncClient, cfg: StepLoadConfig) -> dict[str, Any] | None:
    """With an objective, the server's budget switched to auto (its answer); else None (nothing switched)."""
    if cfg.slo_p99_s is None or cfg.token is None:
        return None
    update: dict[str, Any] = {"mode": "auto", "p99_s": cfg.slo_p99_s}
    if cfg.min_level is not None:
        update["min_level"] = cfg.min_level
    return await _auth_put(client, cfg.token, update)


@dataclass(frozen=True)
class _Played:
    samples: list[Sample]
    started: float  # the event loop's clock at the first intended send
    not_sent: int  # arrivals dropped at the max_inflight cap
    spans: list[dict[str, float]]  # the phases, as ``schedule`` returned them


def _result(
    cfg: StepLoadConfig, capacity: float, capacity_measured: bool, auto: bool, played: _Played
) -> dict[str, Any]:
    """The run's JSON-ready result: its figures, one row per phase and one per second."""
    samples, started, not_sent = played.samples, played.started, played.not_sent
    total = sum(s for _, s in cfg.phases)
    end = max([total] + [x.done - started for x in samples if x.done is not None])
    rows = per_second(samples, started, end)
    summary = summarize(samples, started, not_sent)
    ok_latencies = [x.latency for x in samples if x.ok and x.latency is not None]
    return {
        "url": cfg.url,
        "profile": [{"factor": f, "seconds": s} for f, s in cfg.phases],
        "capacity_per_s": capacity,
        "capacity_measured": capacity_measured,
        "budget_mode": "auto" if auto else "manual",
        "slo_p99_s": cfg.slo_p99_s,
        "offered": len(samples) + not_sent,
        "answered_ok": summary["completed"],
        "answered_ok_fraction": summary["completed"] / (len(samples) + not_sent) if samples else None,
        "p50_s": summary["latency_s"]["p50"],
        "p99_s": summary["latency_s"]["p99"],
        "within_slo_fraction": None
        if cfg.slo_p99_s is None or not samples
        else sum(1 for x in ok_latencies if x <= cfg.slo_p99_s) / (len(samples) + not_sent),
        "accuracy": summary["accuracy"],
        "levels_used": summary["budgets"],
        "errors_by_code": summary["errors_by_code"],
        "summary": summary,
        "phases": [phase_rows(rows, span) for span in played.spans],
        "per_second": rows,
    }


def format_step_load(result: dict[str, Any]) -> str:
    """The run's figures, then one markdown row per second (pasted into docs/benchmarks.md as is)."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    head = (
        f"capacity {result['capacity_per_s']:.2f}/s ({'measured' if result['capacity_measured'] else 'given'}), "
        f"budget {result['budget_mode']}, slo p99 {num(result['slo_p99_s'], '.3f')} s: answered "
        f"{result['answered_ok']}/{result['offered']} ({num(result['answered_ok_fraction'], '.3f')}), "
        f"p99 {num(result['p99_s'], '.3f')} s, accuracy {num(result['accuracy'], '.3f')}, "
        f"levels {result['levels_used']}"
    )
    lines = [
        head,
        "",
        "| t (s) | offered/s | answered/s | refused/s | p99 ms | accuracy | level |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["per_second"]:
        p99 = None if r["p99_s"] is None else r["p99_s"] * 1e3
        lines.append(
            f"| {r['t_s']} | {r['offered_per_s']} | {r['answered_per_s']} | {r['refused_per_s']} | "
            f"{num(p99, '.0f')} | {num(r['accuracy'], '.3f')} | {r['level'] or '-'} |"
        )
    return "\n".join(lines)
