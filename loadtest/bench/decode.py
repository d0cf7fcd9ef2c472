"""``adafocus bench decode``: clips/s of the decoder in 1..N worker processes on real encoded files.

The benchmark encodes its own files with PyAV (H.264 with a short and a long GOP, VP9), then decodes each to the
model's T x S x S clip with the service's own decoder pool (``service.decode.pool.DecodePool``: supervised worker
processes running ``model.video.decode_clip``) at 1..N workers, all jobs submitted at once.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from loadtest.bench.proc_cpu import CpuSnapshot
from loadtest.encode import DECODE_SPECS, EncodeSpec, encode_spec, moving_frames
from model.video import DecodeLimits, Source
from service.decode.pool import DecodeJob, DecodePool


@dataclass(frozen=True)
class DecodeBenchConfig:
    seconds: float = 10.0  # length of each encoded video
    fps: int = 30
    width: int = 640
    height: int = 360
    num_frames: int = 16  # T sampled per clip (the model's)
    size: int = 112  # side of the decoded clip (the model's frame_size)
    max_workers: int = 2
    clips_per_worker: int = 10  # decodes per measurement = this x workers (at least 6)
    specs: tuple[EncodeSpec, ...] = DECODE_SPECS


def measure_pool(pool: DecodePool, sources: Sequence[Source], count: int, num_frames: int, size: int) -> dict[str, Any]:
    """``count`` decodes of ``sources`` (round-robin) submitted at once to a started pool: clips/s, the median decode
    time inside a worker, and the workers' CPU per clip (from /proc, so IPC and shared-memory copies count)."""
    pids = pool.worker_pids()
    before, started = CpuSnapshot.take(pids), time.perf_counter()
    futures = [pool.submit(DecodeJob(sources[i % len(sources)], num_frames, size)) for i in range(count)]
    decoded = [f.result() for f in futures]
    wall = time.perf_counter() - started
    after = CpuSnapshot.take(pids)
    assert all(d.frames.shape == (num_frames, size, size, 3) for d in decoded)
    return {
        "clips": count,
        "clips_per_s": count / wall,
        "ms_per_clip_median": statistics.median(d.seconds for d in decoded) * 1e3,
        "cpu_ms_per_clip": after.since(before, pids) / count * 1e3,
    }


def bare_decode_cpu_ms(data: bytes) -> float:
    """CPU ms of PyAV's plain decode of every frame of the file's video stream: one decoder thread, no index
    pass, no conversion, no copy; the floor the decoder pool is compared with."""
    started = time.process_time()
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "SLICE"  # as model.video sets it for one thread
        for _ in container.decode(stream):
            pass
    return (time.process_time() - started) * 1e3


def _measure(files: list[Path], cfg: DecodeBenchConfig, workers: int) -> dict[str, Any]:
    count = max(6, cfg.clips_per_worker * workers)
    pool = DecodePool(workers, DecodeLimits(), max_pending=count + workers)
    pool.start()
    try:
        # one decode per worker first: process start-up and imports stay out of the measurement
        measure_pool(pool, [str(files[0])], workers, cfg.num_frames, cfg.size)
        run = measure_pool(pool, [str(f) for f in files], count, cfg.num_frames, cfg.size)
    finally:
        pool.shutdown()
    return {"workers": workers, **run}


def run_decode_bench(cfg: DecodeBenchConfig, workdir: Path | None = None) -> dict[str, Any]:
    """Encode the files, then clips/s per format and worker count."""
    with tempfile.TemporaryDirectory(prefix="adafocus-decode-bench-") as tmp:
        root = workdir or Path(tmp)
        count = max(2, round(cfg.seconds * cfg.fps))
        frames = [moving_frames(count, cfg.height, cfg.width, seed=s) for s in range(2)]
        formats = []
        for spec in cfg.specs:
            files = [
                encode_spec(root / f"{spec.name}-{i}.{spec.container}", f, spec, cfg.fps) for i, f in enumerate(frames)
            ]
            runs = [_measure(files, cfg, w) for w in range(1, cfg.max_workers + 1)]
            base = runs[0]["clips_per_s"]
            for run in runs:
                run["speedup_vs_1"] = run["clips_per_s"] / base
            formats.append(
                {
                    "format": spec.name,
                    "codec": spec.codec,
                    "gop": spec.gop,
                    "file_bytes": statistics.mean(f.stat().st_size for f in files),
                    "runs": runs,
                }
            )
    return {
        "video": {"seconds": cfg.seconds, "fps": cfg.fps, "width": cfg.width, "height": cfg.height},
        "clip": {"num_frames": cfg.num_frames, "size": cfg.size},
        "decoder": "service.decode.pool.DecodePool (model.video.decode_clip in worker processes)",
        "cpu_count": os.cpu_count(),
        "formats": formats,
    }


def format_decode(result: dict[str, Any]) -> str:
    v, c = result["video"], result["clip"]
    lines = [
        f"decode: {v['seconds']:g}s {v['width']}x{v['height']} @ {v['fps']} fps -> {c['num_frames']} x "
        f"{c['size']}x{c['size']} ({result['decoder']})",
        f"{'format':<14s} {'workers':>7s} {'clips/s':>8s} {'ms/clip':>8s} {'speedup':>8s}",
    ]
    for fmt in result["formats"]:
        for run in fmt["runs"]:
            lines.append(
                f"{fmt['format']:<14s} {run['workers']:>7d} {run['clips_per_s']:>8.2f} "
                f"{run['ms_per_clip_median']:>8.1f} {run['speedup_vs_1']:>7.2f}x"
            )
    return "\n".join(lines)
