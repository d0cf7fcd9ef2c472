"""``bench e2e --frames``: the same server, clips sent as uploads (``POST /classify``, decoded by the server) vs as
frames decoded by the client (``POST /v2/models/{name}/infer``, binary UINT8 tensors), side by side.

Both phases use one closed-loop client (``run_bodies``: httpx, ``concurrency`` requests in flight, each answered
before its sender sends the next) on the same files, so that only what the server does differs. The frames are
decoded before the phase by the project's decoder at the model's T and size (what ``adafocus classify --decode
local`` sends), so the client's decoding is not in the phase; ``clips_per_request`` > 1 sends that many clips in one
request (``[N, T, H, W, 3]``), which spreads the HTTP cost of a request over N videos. Reported per phase: server
videos/s and the server's CPU per video (its main process plus its decode workers, from /proc, ``e2e.http_phase``);
and the targets: frames videos/s >= ``TARGET_FRAMES_VS_IN_PROCESS`` x the in-process engine's, and frames server CPU per
video <= ``TARGET_FRAMES_CPU_VS_UPLOADS`` x the uploads' (meaningful on realistic 720p files, where decoding is
most of the work).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest.http.hey_client import BOUNDARY, ClientRun, multipart_body
from model.video import decode_clip
from service.http import oip_tensors as wire

TARGET_FRAMES_VS_IN_PROCESS = 0.7  # issue 22: the frames path over HTTP >= 0.7x the in-process engine's videos/s
TARGET_FRAMES_CPU_VS_UPLOADS = 0.4  # and its server CPU per video <= 0.4x the upload path's (realistic 720p)
Body = tuple[str, bytes, dict[str, str], int]  # (path, content, headers, clips in it)


def upload_bodies(files: Sequence[Path]) -> list[Body]:
    content_type = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return [("/classify", multipart_body(f.read_bytes(), f.name), content_type, 1) for f in files]


def frame_bodies(
    files: Sequence[Path], model: str, num_frames: int, size: int, clips_per_request: int = 1
) -> list[Body]:
    """Each file decoded here (the project's decoder); ``clips_per_request`` consecutive clips (cycling through the
    files) per binary OIP request of their frames, one request per file."""
    clips = [decode_clip(str(f), num_frames, size) for f in files]  # (T, size, size, 3) each
    bodies = []
    for i in range(len(files)):
        frames = np.stack([clips[(i + k) % len(clips)] for k in range(clips_per_request)])  # (n, T, size, size, 3)
        content, header = wire.encode_request([wire.Output("frames", "UINT8", frames)], {})
        headers = {wire.HEADER_LENGTH: str(header), "Content-Type": "application/octet-stream"}
        bodies.append((f"/v2/models/{model}/infer", content, headers, clips_per_request))
    return bodies


def run_bodies(url: str, bodies: Sequence[Body], concurrency: int, duration_s: float, timeout_s: float) -> ClientRun:
    """``concurrency`` senders take the bodies in turn for ``duration_s``; this process's CPU is the client's."""
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}

    async def sender(client: httpx.AsyncClient, first: int, until: float) -> None:
        i = first
        while time.monotonic() < until:
            path, content, headers, _ = bodies[i % len(bodies)]
            i += 1
            sent = time.monotonic()
            try:
                response = await client.post(path, content=content, headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            counts["ok" if ok else "errors"] += 1
            if ok:
                latencies.append(time.monotonic() - sent)

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
            until = time.monotonic() + duration_s
            await asyncio.gather(*(sender(client, i, until) for i in range(concurrency)))

    cpu, started = time.process_time(), time.perf_counter()
    asyncio.run(run())
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    ordered = sorted(latencies)
    quantiles = {name: ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None
                 for name, q in (("p50", 0.5), ("p99", 0.99))}
    return ClientRun(counts["ok"], counts["errors"], wall, cpu, quantiles)


def uploads_vs_frames(
    phase: Callable[[Callable[[], ClientRun]], dict[str, Any]], url: str, uploads: list[Body], frames: list[Body],
    concurrency: int, duration_s: float, timeout_s: float,
) -> dict[str, Any]:
    """One uploads phase and one frames phase (``phase``: ``e2e.http_phase`` bound to the server)."""
    out: dict[str, Any] = {}
    for name, bodies in (("uploads", uploads), ("frames", frames)):
        measured = phase(lambda b=bodies: run_bodies(url, b, concurrency, duration_s, timeout_s))  # type: ignore[misc]
        per_request = bodies[0][3]  # clips in each request
        answered = max(measured["answered"] * per_request, 1)
        server_s = measured["cpu_s"]["server_main_s"] + measured["cpu_s"]["decode_workers_s"]
        out[name] = {"videos_per_s": measured["requests_per_s"] * per_request, "errors": measured["errors"],
                     "clips_per_request": per_request,
                     "server_cpu_ms_per_video": 1e3 * server_s / answered, "latency_s": measured["latency_s"],
                     "cpu_ms_per_request": measured["cpu_ms_per_request"]}
    return out


def summary(rounds: list[dict[str, Any]], spread: Callable[[list[float]], dict[str, Any]],
            ratio: Callable[[list[float], list[float]], dict[str, Any]]) -> dict[str, Any]:
    """Medians (min-max) over the rounds that ran the comparison, the two ratios and their targets."""
    runs = [r for r in rounds if "frames" in r]
    if not runs:
        return {}

    def get(side: str, key: str) -> list[float]:
        return [r["frames"][side][key] for r in runs]

    engine = [r["engine"]["videos_per_s"] for r in runs]
    vs_engine = ratio(get("frames", "videos_per_s"), engine)
    cpu = ratio(get("frames", "server_cpu_ms_per_video"), get("uploads", "server_cpu_ms_per_video"))
    return {
        side: {key: spread(get(side, key)) for key in ("videos_per_s", "server_cpu_ms_per_video")}
        for side in ("uploads", "frames")
    } | {
        "frames_vs_in_process": vs_engine | {"target": TARGET_FRAMES_VS_IN_PROCESS,
                                             "met": vs_engine["median"] >= TARGET_FRAMES_VS_IN_PROCESS},
        "frames_cpu_vs_uploads": cpu | {"target": TARGET_FRAMES_CPU_VS_UPLOADS,
                                        "met": cpu["median"] <= TARGET_FRAMES_CPU_VS_UPLOADS},
    }


def format_summary(s: dict[str, Any], cell: Callable[..., str]) -> list[str]:
    if not s:
        return []

    def met(key: str) -> str:
        return "met" if s[key]["met"] else "not met"

    return [
        "uploads (/classify) vs frames decoded by the client (/v2/.../infer, binary tensors), same client:",
        f"{'  uploads: server videos/s':<44s} {cell(s['uploads']['videos_per_s'])}",
        f"{'  frames: server videos/s':<44s} {cell(s['frames']['videos_per_s'])}",
        f"{'  frames / in-process engine':<44s} {cell(s['frames_vs_in_process'], '{:.2f}x')}   target >= "
        f"{TARGET_FRAMES_VS_IN_PROCESS}x: {met('frames_vs_in_process')}",
        f"{'  uploads: server CPU ms per video':<44s} {cell(s['uploads']['server_cpu_ms_per_video'], '{:.1f}')}",
        f"{'  frames: server CPU ms per video':<44s} {cell(s['frames']['server_cpu_ms_per_video'], '{:.1f}')}",
        f"{'  frames / uploads server CPU per video':<44s} {cell(s['frames_cpu_vs_uploads'], '{:.2f}x')}   "
        f"target <= {TARGET_FRAMES_CPU_VS_UPLOADS}x: {met('frames_cpu_vs_uploads')}",
    ]
