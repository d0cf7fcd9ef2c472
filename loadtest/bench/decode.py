"""``adafocus bench decode``: clips/s of the decoder in 1..N worker processes on real encoded files; with
``--corpus realistic``, the old decoder, ``exact`` and ``fast`` side by side on realistic uploads.

The default benchmark encodes its own files with PyAV (H.264 with a short and a long GOP, VP9), then decodes each to
the model's T x S x S clip with the service's own decoder pool (``service.decode.pool.DecodePool``: supervised
worker processes running ``model.video.sample_clip``) at 1..N workers, all jobs submitted at once.

The realistic one (``model.data.realistic``: the fashion test scenes at 480p-1080p, 24-60 fps, 5 s-10 min, GOP
30-250, H.264/HEVC/VP9/AV1) decodes each preset's files in this process, interleaving the three decoders per repeat:
CPU ms per clip (median, min-max), frames decoded per clip next to the minimum (targets plus the reference frames
before them in their GOPs), whether ``exact`` returned the old decoder's bytes, and the peak RSS of one decode in a
fresh process.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from loadtest.bench.proc_cpu import CpuSnapshot
from loadtest.encode import DECODE_SPECS, EncodeSpec, encode_spec, moving_frames
from loadtest.report import format_ratio, ratio_stats
from model.data.realistic import REALISTIC_PRESETS, RealisticPreset, write_realistic
from model.video import DecodeLimits, Sampling, Source, plan_clip, sample_clip
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


# ---- adafocus bench decode --corpus realistic: the old decoder, exact and fast on realistic uploads, in-process


@dataclass(frozen=True)
class RealisticBenchConfig:
    presets: tuple[RealisticPreset, ...] = tuple(REALISTIC_PRESETS.values())
    clips: int = 1  # scenes per preset
    repeats: int = 5  # interleaved: each repeat decodes every clip with the old decoder, exact and fast in turn
    num_frames: int = 16  # T sampled per clip (the model's)
    size: int = 112  # side of the decoded clip (the model's frame_size)
    tolerance_s: float = 0.5  # fast sampling (ADAFOCUS_DECODE_TOLERANCE_S's default)
    corpus: Path | None = None  # reuse (and complete) a corpus of `adafocus synth --realistic`; None: a temporary one
    rss: bool = True  # peak RSS of one exact decode in a fresh process (Linux /proc), per preset


SAMPLINGS: tuple[Sampling, ...] = ("legacy", "exact", "fast")


def realistic_corpus(root: Path, cfg: RealisticBenchConfig) -> dict[str, list[Path]]:
    """Per preset, ``cfg.clips`` files under ``root`` (written now where missing)."""
    missing = [p for p in cfg.presets if not all(_clip(root, p, i).is_file() for i in range(cfg.clips))]
    if missing:
        write_realistic(root, missing, cfg.clips)
    return {p.name: [_clip(root, p, i) for i in range(cfg.clips)] for p in cfg.presets}


def _clip(root: Path, preset: RealisticPreset, index: int) -> Path:
    return root / preset.name / f"clip_{index:06d}.{preset.suffix}"


def _minimum_frames(path: Path, cfg: RealisticBenchConfig) -> int:
    """Targets plus the reference frames before them in their GOPs: what any decode from a keyframe must decode."""
    with av.open(str(path)) as container:
        return plan_clip(container, container.streams.video[0], cfg.num_frames, DecodeLimits()).decode_cost


# One exact decode in a fresh interpreter that imports only the decoder: its resident memory before, and the
# high-water mark during the decode (reset first through /proc/self/clear_refs), in KiB.
RSS_PROBE = """
import sys
from pathlib import Path
from model.video import sample_clip
def kib(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1])
before = kib("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")
sample_clip(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
print(before, kib("VmHWM:"))
"""


def _peak_rss_mib(path: Path, cfg: RealisticBenchConfig) -> dict[str, float]:
    """Resident memory of a fresh decoder process before one exact decode of ``path``, and its peak during it."""
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-c", RSS_PROBE, str(path), str(cfg.num_frames), str(cfg.size)]
    out = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True, timeout=300).stdout.split()
    before, peak = int(out[-2]), int(out[-1])
    return {"before": before / 1024, "peak": peak / 1024}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _measure_preset(files: list[Path], cfg: RealisticBenchConfig) -> dict[str, Any]:
    """Interleaved repeats (the order of the three rotates per repeat): CPU ms and frames decoded per clip."""
    cpu: dict[str, list[float]] = {s: [] for s in SAMPLINGS}
    frames: dict[str, list[int]] = {s: [] for s in SAMPLINGS}
    offsets: list[float] = []
    identical = True
    for repeat in range(cfg.repeats):
        for sampling in SAMPLINGS[repeat % 3 :] + SAMPLINGS[: repeat % 3]:
            limits = DecodeLimits(sampling=sampling, tolerance_s=cfg.tolerance_s)
            spent, decoded = 0.0, 0
            for path in files:
                started = time.process_time()
                clip = sample_clip(path, cfg.num_frames, cfg.size, limits)
                spent += time.process_time() - started
                decoded += clip.frames_decoded
                if sampling == "fast":
                    offsets.append(clip.max_offset_s)
                if repeat == 0 and sampling == "exact":
                    old = sample_clip(path, cfg.num_frames, cfg.size, DecodeLimits(sampling="legacy"))
                    identical = identical and bool(np.array_equal(clip.frames, old.frames))
            cpu[sampling].append(spent / len(files) * 1e3)
            frames[sampling].append(decoded // len(files))
    return {
        "cpu_ms": {s: _spread(v) for s, v in cpu.items()},
        "frames": {s: statistics.median(v) for s, v in frames.items()},
        "exact_vs_legacy": ratio_stats(cpu["exact"], cpu["legacy"]),
        "fast_vs_legacy": ratio_stats(cpu["fast"], cpu["legacy"]),
        "fast_max_offset_s": max(offsets),
        "identical": identical,
    }


def run_realistic_bench(cfg: RealisticBenchConfig) -> dict[str, Any]:
    """The realistic corpus (written if needed), then per preset the three decoders side by side."""
    with tempfile.TemporaryDirectory(prefix="adafocus-realistic-") as tmp:
        corpus = realistic_corpus(cfg.corpus or Path(tmp), cfg)
        rows = []
        for preset in cfg.presets:
            files = corpus[preset.name]
            row: dict[str, Any] = {
                "preset": preset.name, "codec": preset.codec, "width": preset.width, "height": preset.height,
                "fps": preset.fps, "seconds": preset.seconds, "gop": preset.gop, "bframes": preset.bframes,
                "keyframe_every_s": preset.keyframe_every_s,
                "file_bytes": statistics.mean(f.stat().st_size for f in files),
                "minimum_frames": statistics.median(_minimum_frames(f, cfg) for f in files),
                **_measure_preset(files, cfg),
            }
            if cfg.rss:
                row["rss_mib"] = _peak_rss_mib(files[0], cfg)
            rows.append(row)
    return {
        "clip": {"num_frames": cfg.num_frames, "size": cfg.size},
        "repeats": cfg.repeats,
        "clips_per_preset": cfg.clips,
        "tolerance_s": cfg.tolerance_s,
        "decoder": "model.video.sample_clip in-process, one decoder thread; CPU = process time",
        "cpu_count": os.cpu_count(),
        "presets": rows,
    }


def _cells(row: dict[str, Any]) -> list[str]:
    def ms(sampling: str) -> str:
        c = row["cpu_ms"][sampling]
        return f"{c['median']:.0f} ({c['min']:.0f}-{c['max']:.0f}), {row['frames'][sampling]:.0f} fr"

    rss = row.get("rss_mib")
    return [
        row["preset"], f"{row['file_bytes'] / 2**20:.1f}", f"{row['minimum_frames']:.0f}", ms("legacy"), ms("exact"),
        ms("fast"), f"{row['fast_max_offset_s']:.2f}", format_ratio(row["exact_vs_legacy"]).split(" (")[0],
        format_ratio(row["fast_vs_legacy"]).split(" (")[0], "yes" if row["identical"] else "NO",
        "-" if rss is None else f"{rss['peak']:.0f} (+{rss['peak'] - rss['before']:.0f})",
    ]


REALISTIC_HEADER = [
    "preset", "MiB", "min frames", "old: CPU ms (min-max), frames", "exact", "fast", "fast max offset s",
    "exact/old", "fast/old", "same frames", "decoder peak RSS MiB (+ during decode)",
]


def format_realistic(result: dict[str, Any]) -> str:
    c = result["clip"]
    lines = [
        f"decode --corpus realistic: {c['num_frames']} x {c['size']}x{c['size']} per clip, {result['repeats']} "
        f"interleaved repeats, {result['clips_per_preset']} clip(s) per preset ({result['decoder']})",
        " | ".join(REALISTIC_HEADER),
    ]
    lines += [" | ".join(_cells(row)) for row in result["presets"]]
    return "\n".join(lines)


def realistic_markdown(result: dict[str, Any]) -> str:
    rows = [REALISTIC_HEADER, ["---"] + ["---:"] * (len(REALISTIC_HEADER) - 1)]
    rows += [_cells(row) for row in result["presets"]]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)
