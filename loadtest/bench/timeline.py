"""``adafocus bench timeline``: a long video of scenes with ground truth, classified as a timeline by a real server.

The corpus (written once under ``--corpus``): ``model.data.realistic.write_timeline`` renders the preset's long video
from the fashion benchmark's test scenes 0, 1, 2 ... (labels and difficulties differ, boundaries in
``<preset>.scenes.csv``), a 10 s video of the same preset for the memory comparison, and the benchmark's own clips
of the same scenes (``model.data.fashion.write_dataset``: the single clips). Then, in one run:

1. decode alone: ``model.video_segments.decode_segments`` over the whole video in a fresh interpreter, as a
   decoder worker runs it: wall time, CPU seconds, and the peak resident memory against the 10 s video's;
2. a real ``adafocus serve``: the single clips one by one (their accuracy: the shipped bundle on single clips of the
   same scenes), then an open-loop load of single clips at ``--clip-rate`` alone (p99 without), then the timeline
   streamed (SSE: the time to its first and its last segment) with the same load beside it (p99 with); then the
   timeline again at the most accurate level, for GMACs at equal accuracy;
3. segment accuracy against the scene labels, segments inside one scene and segments that straddle a boundary
   apart; segments/s; decode CPU per video-minute; GMACs spent against all-K.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.http.server_process import ServerProcess
from loadtest.report import latency_summary
from model.data.fashion import FashionConfig, write_dataset
from model.data.realistic import REALISTIC_PRESETS, TimelineScene, read_timeline, write_timeline

# The decoder worker's pass in a fresh interpreter: resident memory before, the peak during (through
# /proc/self/clear_refs and VmHWM), CPU and wall seconds, segments and frames decoded.
PROBE = """
import json, sys, time
from pathlib import Path
from model.video_io import DecodeLimits
from model.video_segments import SegmentClip, TimelineEnd, check_segment_args, decode_segments
def kib(field):
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field)).split()[1])
before = kib("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")
spec = check_segment_args(float(sys.argv[2]), None, 0.5, 100000)
wall, cpu, n, end = time.monotonic(), time.process_time(), 0, None
for event in decode_segments(sys.argv[1], 16, 112, spec, DecodeLimits(max_decode_s=3600, sampling=sys.argv[3])):
    n += isinstance(event, SegmentClip)
    end = event if isinstance(event, TimelineEnd) else end
print(json.dumps({"rss_before_mib": before / 1024, "rss_peak_mib": kib("VmHWM:") / 1024, "segments": n,
                  "wall_s": time.monotonic() - wall, "cpu_s": time.process_time() - cpu,
                  "frames_decoded": end.frames_decoded}))
"""


@dataclass(frozen=True)
class TimelineBenchConfig:
    preset: str = "720p30-600s-gop60-h264"
    seconds: float | None = None  # a shorter video of the preset (quick runs)
    height: int | None = None  # and a smaller frame
    segment_s: float = 2.0
    sampling: str = "exact"
    corpus: Path = Path("/tmp/adafocus-timeline")
    bundle: Path | None = None  # None: the shipped bundle
    clip_rate: float = 4.0  # single clips per second offered, with and without the long video
    clip_seconds: float = 20.0  # of the load without the long video (with it: while the timeline runs, at most this)
    decode_workers: int = 2
    decode_nice: int = 0  # ADAFOCUS_TIMELINE_DECODE_NICE of the server (0: the timeline at the clips' priority)
    seed: int = 2


def corpus(cfg: TimelineBenchConfig) -> dict[str, Path]:
    """The long video, its 10 s counterpart, the scene labels and the single clips (written where missing)."""
    preset = REALISTIC_PRESETS[cfg.preset]
    if cfg.seconds is not None or cfg.height is not None:
        preset = preset.shortened(cfg.seconds or preset.seconds, cfg.height)
    short = preset.shortened(10.0)
    root = cfg.corpus
    video, labels = root / f"{preset.name}.timeline.{preset.suffix}", root / f"{preset.name}.scenes.csv"
    if not (video.is_file() and labels.is_file()):
        video, labels = write_timeline(root, preset, cfg.segment_s, cfg.seed)
    short_video = root / f"{short.name}.timeline.{short.suffix}"
    if not short_video.is_file():
        short_video, _ = write_timeline(root, short, cfg.segment_s, cfg.seed)
    clips = root / f"clips-{cfg.seed}"
    scenes = read_timeline(labels)
    if not (clips / "labels.csv").is_file() or len((clips / "labels.csv").read_text().splitlines()) <= len(scenes):
        write_dataset(clips, FashionConfig(), len(scenes), "test", cfg.seed)
    return {"video": video, "labels": labels, "short": short_video, "clips": clips}


def decode_alone(path: Path, cfg: TimelineBenchConfig) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-c", PROBE, str(path), str(cfg.segment_s), cfg.sampling]
    out = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True, timeout=3600).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def score(segments: list[dict[str, Any]], scenes: list[TimelineScene]) -> dict[str, Any]:
    """Accuracy of the segments inside one scene, and apart of those that straddle a scene boundary (judged by
    the scene that covers most of the segment)."""
    inside: list[bool] = []
    straddling: list[bool] = []
    for seg in segments:
        a, b = seg["start_s"], seg["end_s"]
        cover = max(scenes, key=lambda s: min(b, s.end_s) - max(a, s.start_s))
        hit = seg["class_id"] == cover.label
        (inside if cover.start_s <= a + 1e-6 and b <= cover.end_s + 1e-6 else straddling).append(hit)
    return {
        "inside": len(inside), "inside_accuracy": statistics.fmean(inside) if inside else None,
        "straddling": len(straddling), "straddling_accuracy": statistics.fmean(straddling) if straddling else None,
    }


async def _single_clips(client: httpx.AsyncClient, clips: Path, count: int) -> dict[str, Any]:
    """The benchmark's clips of the same scenes, one at a time: the shipped bundle's single-clip accuracy."""
    rows = [line.split(",") for line in (clips / "labels.csv").read_text().splitlines()[1 : count + 1]]
    hits = []
    for row in rows:
        response = await client.post("/classify", files={"video": (row[0], (clips / row[0]).read_bytes())})
        response.raise_for_status()
        hits.append(response.json()["class_id"] == int(row[1]))
    return {"clips": len(hits), "accuracy": statistics.fmean(hits), "hits": hits}


def per_scene(segments: list[dict[str, Any]], scenes: list[TimelineScene], single: list[bool]) -> dict[str, Any]:
    """Scene by scene: the share of its inside segments that are right, next to its single clip (scene-weighted
    means over the scenes that have inside segments), and how often the two agree."""
    rows = []
    for scene, clip_hit in zip(scenes, single, strict=False):
        inside = [s["class_id"] == scene.label for s in segments
                  if scene.start_s <= s["start_s"] + 1e-6 and s["end_s"] <= scene.end_s + 1e-6]
        if inside:
            rows.append((statistics.fmean(inside), float(clip_hit)))
    if not rows:
        return {"scenes": 0, "segments": None, "single": None, "agree": None}
    return {"scenes": len(rows), "segments": statistics.fmean(r[0] for r in rows),
            "single": statistics.fmean(r[1] for r in rows),
            "agree": statistics.fmean(float(abs(r[0] - r[1]) < 0.5) for r in rows)}


async def _load(
    client: httpx.AsyncClient, clips: list[bytes], rate: float, seconds: float, stop: asyncio.Event | None = None
) -> dict[str, Any]:
    """Open-loop single clips at ``rate``/s for ``seconds`` (or until ``stop``): their latency summary."""
    latencies: list[float] = []
    failed = 0

    async def one(video: bytes) -> None:
        nonlocal failed
        started = time.monotonic()
        response = await client.post("/classify", files={"video": ("clip.mp4", video)})
        if response.status_code == 200:
            latencies.append(time.monotonic() - started)
        else:
            failed += 1

    tasks, started, i = [], time.monotonic(), 0
    while time.monotonic() - started < seconds and not (stop is not None and stop.is_set()):
        tasks.append(asyncio.ensure_future(one(clips[i % len(clips)])))
        i += 1
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return {"sent": len(tasks), "failed": failed, **latency_summary(latencies)}


async def _timeline(client: httpx.AsyncClient, video: Path, segment_s: float, budget: str | None) -> dict[str, Any]:
    """The timeline streamed: seconds to the first and the last segment event, and the answer."""
    data = {"segment_s": str(segment_s), "stream": "true", **({"budget": budget} if budget else {})}
    files = {"video": (video.name, video.read_bytes())}  # the client's own file read is not the server's time
    started = time.monotonic()
    first = last = None
    answer: dict[str, Any] = {}
    async with client.stream("POST", "/classify", files=files, data=data) as response:
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name == "segment":
                last = time.monotonic() - started
                first = first if first is not None else last
            elif line.startswith("data:"):
                answer = json.loads(line.split(":", 1)[1])
    if "segments" not in answer:
        raise RuntimeError(f"the timeline failed: {answer}")
    return {"first_segment_s": first, "last_segment_s": last, "total_s": time.monotonic() - started, "answer": answer}


async def _http(url: str, files: dict[str, Path], cfg: TimelineBenchConfig, scenes: list[TimelineScene],
                log: Callable[[str], None]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        levels = (await client.get("/budget")).json()["levels"]
        best = max(levels, key=lambda lvl: (lvl["expected_accuracy"], lvl["expected_gmacs"]))["name"]
        log("single clips of the same scenes")
        single = await _single_clips(client, files["clips"], len(scenes))
        clips = [p.read_bytes() for p in sorted(files["clips"].glob("clip_*.mp4"))[:32]]
        log(f"single-clip load alone: {cfg.clip_rate:g}/s for {cfg.clip_seconds:g} s")
        alone = await _load(client, clips, cfg.clip_rate, cfg.clip_seconds)
        log("the timeline, with the same load beside it")
        stop = asyncio.Event()
        load = asyncio.ensure_future(_load(client, clips, cfg.clip_rate, cfg.clip_seconds, stop))
        active = await _timeline(client, files["video"], cfg.segment_s, None)
        stop.set()
        beside = await load
        log(f"the timeline at the most accurate level ({best})")
        full = await _timeline(client, files["video"], cfg.segment_s, best)
    return {"single": single, "alone": alone, "beside": beside, "active": active, "full": full, "best_level": best}


def run_timeline_bench(cfg: TimelineBenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    log("corpus")
    files = corpus(cfg)
    scenes = read_timeline(files["labels"])
    log("decode alone (long video, then 10 s)")
    long_decode, short_decode = decode_alone(files["video"], cfg), decode_alone(files["short"], cfg)
    bundle = cfg.bundle or Path(__file__).resolve().parents[2] / "model" / "bundles" / "default"
    # a 10-minute 720p file of noisy scenes is a few hundred MB: over the default upload limit
    settings = {"decode_workers": cfg.decode_workers, "timeline_decode_s": 3600, "timeline_timeout_s": 3600,
                "decode_sampling": cfg.sampling, "max_segments": 100000, "max_upload_bytes": 1 << 30,
                "timeline_decode_nice": cfg.decode_nice}
    with tempfile.TemporaryDirectory(prefix="adafocus-timeline-") as tmp:
        server = ServerProcess(bundle, Path(tmp) / "server.log", settings)
        try:
            server.wait_ready()
            http = asyncio.run(_http(server.url, files, cfg, scenes, log))
        finally:
            server.stop()
    return summarize(cfg, scenes, long_decode, short_decode, http)


def summarize(cfg: TimelineBenchConfig, scenes: list[TimelineScene], long_decode: dict[str, Any],
              short_decode: dict[str, Any], http: dict[str, Any]) -> dict[str, Any]:
    active, full = http["active"], http["full"]
    answer, best = active["answer"], full["answer"]
    n = len(answer["segments"])
    minutes = answer["duration_s"] / 60
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "video": {"duration_s": answer["duration_s"], "segments": n, "scenes": len(scenes)},
        "decode_alone": long_decode, "decode_10s": short_decode,
        "rss_ratio": long_decode["rss_peak_mib"] / short_decode["rss_peak_mib"],
        "decode_cpu_s_per_minute": long_decode["cpu_s"] / minutes,
        "first_segment_s": active["first_segment_s"], "last_segment_s": active["last_segment_s"],
        "complete_vs_decode": active["last_segment_s"] / long_decode["wall_s"],
        "segments_per_s": n / active["total_s"],
        "accuracy": score(answer["segments"], scenes), "accuracy_full": score(best["segments"], scenes),
        "per_scene": per_scene(answer["segments"], scenes, http["single"]["hits"]),
        "segments": [{k: seg[k] for k in ("start_s", "end_s", "class_id", "exit_step", "gmacs")}
                     for seg in answer["segments"]],
        "single_clip_accuracy": http["single"]["accuracy"], "single_clips": http["single"]["clips"],
        "budget": answer["budget"], "best_level": http["best_level"],
        "gmacs_per_segment": answer["gmacs"] / n, "gmacs_all_k_per_segment": answer["gmacs_all_k"] / n,
        "gmacs_vs_all_k": answer["gmacs"] / answer["gmacs_all_k"],
        "full_gmacs_vs_all_k": best["gmacs"] / best["gmacs_all_k"],
        "p99_alone_s": http["alone"]["p99"], "p99_beside_s": http["beside"]["p99"],
        "clips_alone": http["alone"]["sent"], "clips_beside": http["beside"]["sent"],
        "p99_ratio": (http["beside"]["p99"] or 0.0) / (http["alone"]["p99"] or float("inf")),
        "frames_decoded": answer["frames_decoded"], "decode_method": answer["decode_method"],
    }


def format_timeline(r: dict[str, Any]) -> str:
    acc, full = r["accuracy"], r["accuracy_full"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    return "\n".join([
        f"video {r['video']['duration_s']:.0f} s, {r['video']['segments']} segments, {r['video']['scenes']} scenes",
        f"segment accuracy ({r['budget']}): inside one scene {pct(acc['inside_accuracy'])} of {acc['inside']}, "
        f"straddling {pct(acc['straddling_accuracy'])} of {acc['straddling']}; single clips of the same scenes "
        f"{pct(r['single_clip_accuracy'])}; at {r['best_level']}: {pct(full['inside_accuracy'])}",
        f"GMACs per segment {r['gmacs_per_segment']:.4f} = {r['gmacs_vs_all_k']:.2f}x all-K "
        f"({r['gmacs_all_k_per_segment']:.4f}); at {r['best_level']}: {r['full_gmacs_vs_all_k']:.2f}x",
        f"decode alone {r['decode_alone']['wall_s']:.1f} s wall, {r['decode_alone']['cpu_s']:.1f} s CPU "
        f"({r['decode_cpu_s_per_minute']:.2f} s per video-minute); timeline complete at "
        f"{r['last_segment_s']:.1f} s = {r['complete_vs_decode']:.2f}x decode alone; first segment at "
        f"{r['first_segment_s']:.2f} s; {r['segments_per_s']:.1f} segments/s",
        f"single-clip p99 {1e3 * (r['p99_alone_s'] or 0):.0f} ms alone, {1e3 * (r['p99_beside_s'] or 0):.0f} ms "
        f"with the long video ({r['p99_ratio']:.2f}x)",
        f"decoder peak RSS {r['decode_alone']['rss_peak_mib']:.0f} MiB (10 s video: "
        f"{r['decode_10s']['rss_peak_mib']:.0f} MiB, {r['rss_ratio']:.2f}x)",
    ])


def timeline_markdown(r: dict[str, Any]) -> str:
    """The result as docs/benchmarks.md prints it: one row per measure, with the issue's target beside it."""
    acc, full = r["accuracy"], r["accuracy_full"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = [
        ("segments (inside one scene / straddling a boundary)",
         f"{r['video']['segments']} ({acc['inside']} / {acc['straddling']}), {r['video']['scenes']} scenes", ""),
        (f"segment accuracy, inside one scene (`{r['budget']}`)", pct(acc["inside_accuracy"]),
         f"within 2 points of single clips: {pct(r['single_clip_accuracy'])} on {r['single_clips']} clips"),
        ("scene by scene: inside segments right / single clip right (scene-weighted)",
         f"{pct(r['per_scene']['segments'])} / {pct(r['per_scene']['single'])} over {r['per_scene']['scenes']} "
         f"scenes, agreeing on {pct(r['per_scene']['agree'])}", "within 2 points"),
        ("segment accuracy, straddling", pct(acc["straddling_accuracy"]), "reported apart"),
        (f"segment accuracy at `{r['best_level']}` (the most accurate level), inside", pct(full["inside_accuracy"]),
         f"{r['full_gmacs_vs_all_k']:.2f}x all-K"),
        ("GMACs per segment vs all-K", f"{r['gmacs_per_segment']:.4f} / {r['gmacs_all_k_per_segment']:.4f} = "
         f"{r['gmacs_vs_all_k']:.2f}x", "<= 0.8x at the `max` level's accuracy"),
        ("decode alone (one pass): wall, CPU",
         f"{r['decode_alone']['wall_s']:.1f} s, {r['decode_alone']['cpu_s']:.1f} s "
         f"({r['decode_alone']['frames_decoded']} frames)", ""),
        ("decode CPU per video-minute", f"{r['decode_cpu_s_per_minute']:.2f} s", ""),
        ("time to the first segment event", f"{r['first_segment_s']:.2f} s", "<= 1 s"),
        ("time to the last segment (complete timeline)", f"{r['last_segment_s']:.1f} s = "
         f"{r['complete_vs_decode']:.2f}x decode alone", "<= 1.5x decode alone"),
        ("segments/s", f"{r['segments_per_s']:.1f}", ""),
        ("single-clip p99 alone / with the long video", f"{1e3 * (r['p99_alone_s'] or 0):.0f} ms / "
         f"{1e3 * (r['p99_beside_s'] or 0):.0f} ms = {r['p99_ratio']:.2f}x "
         f"({r['clips_alone']} / {r['clips_beside']} clips)", "<= 2x"),
        ("decoder peak RSS, 10 min vs 10 s", f"{r['decode_alone']['rss_peak_mib']:.0f} MiB vs "
         f"{r['decode_10s']['rss_peak_mib']:.0f} MiB = {r['rss_ratio']:.2f}x", "within 20%"),
    ]
    lines = ["| measure | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
