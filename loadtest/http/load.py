"""The HTTP load generator: open-loop Poisson arrivals or closed-loop concurrency against ``POST /classify``.

Open loop: the arrival times are drawn up front and each request's latency counts from its *intended* send
time, so a server (or client) that falls behind shows up in the latency instead of silently lowering the
offered load (no coordinated omission). Closed loop: ``concurrency`` workers each send the next request as
soon as the previous one is answered. Every phase is bounded (see ``schedule.Bound``); every request sent is
either answered or counted as an error.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import httpx
import numpy as np

from loadtest.http.corpus import Corpus, CorpusItem
from loadtest.http.server_metrics import phase_figures, scrape
from loadtest.http.stream import post_streamed
from loadtest.report import Sample, summarize
from loadtest.schedule import Bound, poisson_arrivals
from service.client import AsyncClient, ServerError

Mode = Literal["open", "closed"]


@dataclass(frozen=True)
class LoadConfig:
    url: str  # server base URL, e.g. http://127.0.0.1:8000
    bound: Bound
    mode: Mode = "closed"
    rates: tuple[float, ...] = ()  # open loop: one phase per offered rate (requests/s)
    concurrency: int = 8  # closed loop: requests in flight
    budgets: tuple[str, ...] = ()  # budget sweep: PUT /budget to each level before its phases
    token: str | None = None  # operator token for PUT /budget
    request_budget: str | None = None  # per-request ``budget`` form field
    timeout_s: float = 60.0  # per request, connect to answer
    max_inflight: int = 1024  # open loop: arrivals beyond this many in flight are dropped and counted
    seed: int = 0
    progress: bool = True
    stream: bool = False  # Accept: text/event-stream: time to the first event and to the result event

    def __post_init__(self) -> None:
        if self.mode == "open" and not self.rates:
            raise ValueError("open loop needs at least one rate")
        if self.concurrency < 1 or self.max_inflight < 1:
            raise ValueError("concurrency and max_inflight must be >= 1")
        if self.budgets and not self.token:
            raise ValueError("a budget sweep switches PUT /budget and needs the operator token (--token)")


@dataclass
class _Phase:
    name: str
    started: float
    samples: list[Sample] = field(default_factory=list)
    not_sent: int = 0


def parse_answer(sample: Sample, response: httpx.Response, item: CorpusItem) -> None:
    """Fill the sample from a /classify response (success body or ``{code, message}`` error body)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    fill_sample(sample, response.status_code, body, item)


def fill_sample(sample: Sample, status: int, body: Any, item: CorpusItem) -> None:
    """Fill the sample from an answer's status and body (success body or ``{code, message}`` error body)."""
    sample.status = status
    if not isinstance(body, dict):
        sample.code = None if sample.ok else "non_json"
        return
    if not sample.ok:
        detail = body.get("detail")
        code = body.get("code") or (detail.get("code") if isinstance(detail, dict) else None)
        sample.code = str(code) if code is not None else "unknown"
        return
    class_id = body.get("class_id")
    sample.class_id = int(class_id) if isinstance(class_id, int) else None
    sample.label = body.get("label") if isinstance(body.get("label"), str) else None
    gmacs = body.get("gmacs")
    sample.gmacs = float(gmacs) if isinstance(gmacs, int | float) else None
    exit_step = body.get("exit_step", body.get("cubes_used"))
    sample.exit_step = int(exit_step) if isinstance(exit_step, int) else None
    budget = body.get("budget")
    sample.budget = budget if isinstance(budget, str) else None
    sample.correct = item.is_correct(sample.class_id, sample.label)


async def classify_one(client: httpx.AsyncClient, item: CorpusItem, sample: Sample, cfg: LoadConfig) -> None:
    loop = asyncio.get_running_loop()
    video = (item.filename, item.data, item.mime)

    def first_event() -> None:
        sample.first_event = loop.time()

    try:
        if cfg.stream:
            status, body = await post_streamed(client, video, cfg.request_budget, first_event)
            fill_sample(sample, status, body, item)
        else:
            response = await AsyncClient(http=client).post_classify(video, budget=cfg.request_budget)
            parse_answer(sample, response, item)
    except httpx.TimeoutException:
        sample.code = "timeout"
    except httpx.HTTPError as exc:
        sample.code = type(exc).__name__
    finally:
        sample.done = loop.time()


def _item_order(corpus: Corpus, seed: int) -> list[CorpusItem]:
    order = np.random.default_rng(seed).permutation(len(corpus.items))
    return [corpus.items[i] for i in order]


async def _open_loop(client: httpx.AsyncClient, corpus: Corpus, cfg: LoadConfig, phase: _Phase, rate: float) -> None:
    loop = asyncio.get_running_loop()
    items = _item_order(corpus, cfg.seed)
    arrivals = poisson_arrivals(rate, cfg.bound, cfg.seed)
    inflight: set[asyncio.Task[None]] = set()
    for i, offset in enumerate(arrivals):
        intended = phase.started + float(offset)
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= cfg.max_inflight:
            phase.not_sent += 1
            continue
        sample = Sample(intended=intended)
        phase.samples.append(sample)
        task = asyncio.create_task(classify_one(client, items[i % len(items)], sample, cfg))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    if inflight:
        await asyncio.wait(inflight)


async def _closed_loop(client: httpx.AsyncClient, corpus: Corpus, cfg: LoadConfig, phase: _Phase) -> None:
    loop = asyncio.get_running_loop()
    items = _item_order(corpus, cfg.seed)
    deadline = phase.started + cfg.bound.max_duration_s
    counter = iter(range(cfg.bound.max_requests))

    async def worker() -> None:
        for i in counter:
            now = loop.time()
            if now >= deadline:
                return
            sample = Sample(intended=now)
            phase.samples.append(sample)
            await classify_one(client, items[i % len(items)], sample, cfg)

    await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))


async def _progress(phase: _Phase, bound: Bound, out: TextIO) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0.5)
        done = [s for s in phase.samples[-2000:] if s.done is not None and s.ok]
        lat = sorted(s.latency or 0.0 for s in done)
        p50 = f"{lat[len(lat) // 2] * 1e3:.0f}ms" if lat else "-"
        p99 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3:.0f}ms" if lat else "-"
        finished = sum(1 for s in phase.samples if s.done is not None)
        errors = sum(1 for s in phase.samples if s.done is not None and not s.ok) + phase.not_sent
        out.write(
            f"\r{phase.name}: {loop.time() - phase.started:6.1f}s / {bound.describe()}  sent {len(phase.samples)}  "
            f"done {finished}  err {errors}  inflight {len(phase.samples) - finished}  p50 {p50}  p99 {p99}   "
        )
        out.flush()


async def run_phase(
    client: httpx.AsyncClient, corpus: Corpus, cfg: LoadConfig, name: str, rate: float | None, out: TextIO
) -> dict[str, Any]:
    """One bounded phase at an offered ``rate`` (open loop) or at ``cfg.concurrency`` (rate None)."""
    loop = asyncio.get_running_loop()
    before = await scrape(client)
    phase = _Phase(name=name, started=loop.time())
    ticker = asyncio.create_task(_progress(phase, cfg.bound, out)) if cfg.progress else None
    try:
        if rate is not None:
            await _open_loop(client, corpus, cfg, phase, rate)
        else:
            await _closed_loop(client, corpus, cfg, phase)
    finally:
        if ticker is not None:
            ticker.cancel()
            out.write("\n")
    result = summarize(phase.samples, phase.started, phase.not_sent)
    result["server"] = phase_figures(before, await scrape(client), loop.time() - phase.started)
    result.update(phase=name, offered_rate=rate, concurrency=None if rate is not None else cfg.concurrency)
    return result


async def preflight(client: httpx.AsyncClient, out: TextIO) -> None:
    """Fail fast when the server cannot be reached at all; warn when it reports not ready."""
    try:
        response = await client.get("/readyz")
    except httpx.TransportError as exc:
        raise RuntimeError(f"cannot reach {client.base_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code not in (200, 404):
        out.write(f"warning: {client.base_url}readyz answered {response.status_code}; load-testing anyway\n")


async def get_budget(client: httpx.AsyncClient) -> dict[str, Any]:
    return await AsyncClient(http=client).budget()


async def put_budget(client: httpx.AsyncClient, token: str, name: str) -> dict[str, Any]:
    """Switch the server's active budget level; raises on any refusal (a sweep must not measure the wrong level)."""
    try:
        return await AsyncClient(http=client, token=token).set_budget(name)
    except ServerError as exc:
        raise RuntimeError(f"PUT /budget {name!r} failed: {exc}") from exc


def budget_names(state: dict[str, Any]) -> list[str]:
    """Level names from a GET /budget body (``levels`` at the top or under ``available``)."""
    levels = state.get("levels") or state.get("available") or []
    return [str(lvl["name"]) if isinstance(lvl, dict) else str(lvl) for lvl in levels]


def active_budget(state: dict[str, Any]) -> str | None:
    active = state.get("active", state)
    name = active.get("name") if isinstance(active, dict) else active
    return str(name) if name is not None else None


def _phases(cfg: LoadConfig) -> list[tuple[str | None, float | None]]:
    rates: Sequence[float | None] = cfg.rates if cfg.mode == "open" else [None]
    budgets: Sequence[str | None] = cfg.budgets or [None]
    return [(b, r) for b in budgets for r in rates]


def _phase_name(budget: str | None, rate: float | None, concurrency: int) -> str:
    load = f"rate={rate:g}/s" if rate is not None else f"concurrency={concurrency}"
    return f"{budget} {load}" if budget else load


async def run_load(cfg: LoadConfig, corpus: Corpus, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Every phase of the run (budgets x rates), restoring the server's budget level after a budget sweep."""
    timeout = httpx.Timeout(cfg.timeout_s, pool=None)
    limits = httpx.Limits(max_connections=max(cfg.max_inflight, cfg.concurrency), max_keepalive_connections=256)
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=cfg.url, timeout=timeout, limits=limits) as client:
        await preflight(client, out)
        original = active_budget(await get_budget(client)) if cfg.budgets else None
        switched = False
        try:
            for budget, rate in _phases(cfg):
                if budget is not None and cfg.token is not None:
                    await put_budget(client, cfg.token, budget)
                    switched = True
                result = await run_phase(client, corpus, cfg, _phase_name(budget, rate, cfg.concurrency), rate, out)
                result["budget_level"] = budget
                results.append(result)
        finally:
            if switched and original is not None and cfg.token is not None:
                await put_budget(client, cfg.token, original)
    return {
        "url": cfg.url,
        "mode": cfg.mode,
        "bound": {"duration_s": cfg.bound.duration_s, "requests": cfg.bound.requests},
        "corpus": {"root": str(corpus.root), "videos": len(corpus.items), "labelled": corpus.labelled},
        "seed": cfg.seed,
        "stream": cfg.stream,
        "phases": results,
    }
