"""``adafocus bench decode``: clips/s of the decoder in 1..N worker processes on real encoded files.

The benchmark encodes its own files with PyAV (H.264 with a short and a long GOP, VP9), then decodes each to the
model's T x S x S clip (``model.video.decode_clip``, the project's one decoder) in a process pool of 1..N
workers, the way the service decodes uploads off the event loop.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.encode import DECODE_SPECS, EncodeSpec, encode_spec, moving_frames
from model.video import decode_clip


@dataclass(frozen=True)
class DecodeBenchConfig:
    seconds: float = 10.0  # length of each encoded video
    fps: int = 30
    width: int = 640
    height: int = 360
    num_frames: int = 16  # T sampled per clip (the model's)
    size: int = 96  # side of the decoded clip (the model's frame_size)
    max_workers: int = 2
    clips_per_worker: int = 6  # decodes per measurement = this x workers (at least 6)
    specs: tuple[EncodeSpec, ...] = DECODE_SPECS


def _decode_one(path: str, num_frames: int, size: int) -> float:
    started = time.perf_counter()
    decode_clip(path, num_frames, size)
    return time.perf_counter() - started


def _measure(files: list[Path], cfg: DecodeBenchConfig, workers: int) -> dict[str, Any]:
    count = max(6, cfg.clips_per_worker * workers)
    # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # one decode per worker first: process start-up and imports stay out of the measurement
        list(pool.map(_decode_one, [str(files[0])] * workers, [cfg.num_frames] * workers, [cfg.size] * workers))
        started = time.perf_counter()
        paths = [str(files[i % len(files)]) for i in range(count)]
        per_clip = list(pool.map(_decode_one, paths, [cfg.num_frames] * count, [cfg.size] * count))
        wall = time.perf_counter() - started
    return {
        "workers": workers,
        "clips": count,
        "clips_per_s": count / wall,
        "ms_per_clip_median": statistics.median(per_clip) * 1e3,
    }


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
        "decoder": "model.video.decode_clip in a ProcessPoolExecutor",
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
