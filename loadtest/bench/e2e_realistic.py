"""``adafocus bench e2e --corpus realistic``: HTTP videos/s and server CPU per video on realistic uploads, with the
old decoder, ``exact`` and ``fast`` sampling side by side in one run.

One real ``adafocus serve`` per sampling (``ADAFOCUS_DECODE_SAMPLING``: ``legacy`` is the decoder before skipping,
kept for this comparison), all three started before the first round and ready at once; each round loads them one
after the other, the order rotating, with the same closed-loop client (``hey`` when installed, else the repo's load
generator) posting the same files of one realistic preset (``adafocus synth --realistic``). Per phase: answered
videos/s, and the CPU the server spent per video from /proc (its main process and its decoder workers). Reported:
median and min-max over the rounds, and per round the ratio to the old decoder's videos/s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench.e2e import BenchServer, http_phase, spread
from loadtest.http.hey_client import HEY_CLIENT, PYTHON_CLIENT, ClientRun, hey_path, multipart_body, run_hey, run_python
from loadtest.http.server_process import ServerProcess
from loadtest.report import ratio_stats
from model.bundle import DEFAULT_BUNDLE

SAMPLINGS = ("legacy", "exact", "fast")
# issue 21's targets on the 720p 10 s presets: videos/s over the old decoder's
TARGETS = {"exact": 1.4, "fast": 2.5}
Log = Callable[[str], None]


@dataclass(frozen=True)
class RealisticE2EConfig:
    corpus_dir: str  # one preset's folder of `adafocus synth --realistic` (clip_*.mp4 ...)
    bundle: str | None = None
    clips: int = 4  # files of the folder posted round-robin
    concurrency: int = 4
    duration_s: float = 10.0
    warmup_s: float = 3.0
    repeats: int = 3
    max_batch: int = 8
    max_active: int = 8
    decode_workers: int = 2
    torch_threads: int = 1
    tolerance_s: float = 0.5
    client: str = "auto"
    timeout_s: float = 60.0


class SamplingServer(BenchServer):
    """One bench server decoding with ``sampling`` (processes and metrics as ``BenchServer`` reads them)."""

    def __init__(self, bundle: Path, cfg: RealisticE2EConfig, sampling: str, log_path: Path) -> None:
        self.sampling = sampling
        ServerProcess.__init__(self, bundle, log_path, {
            "max_batch": cfg.max_batch, "max_active": cfg.max_active, "decode_workers": cfg.decode_workers,
            "torch_threads": cfg.torch_threads, "device": "cpu", "decoder": "cpu", "decode_sampling": sampling,
            "decode_tolerance_s": cfg.tolerance_s, "request_timeout_s": cfg.timeout_s,
        })


def run_realistic_e2e(cfg: RealisticE2EConfig, log: Log = lambda _: None) -> dict[str, Any]:
    bundle = Path(cfg.bundle) if cfg.bundle else DEFAULT_BUNDLE
    files = sorted(p for p in Path(cfg.corpus_dir).iterdir() if p.name.startswith("clip_"))[: cfg.clips]
    if not files:
        raise RuntimeError(f"no clip_* files in {cfg.corpus_dir}: write them with adafocus synth --realistic")
    hey = hey_path(cfg.client)
    with tempfile.TemporaryDirectory(prefix="adafocus-e2e-realistic-") as tmp, contextlib.ExitStack() as started:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        bodies = []
        for f in files:
            (corpus / f.name).symlink_to(f.resolve())
            bodies.append(root / f"{f.name}.body")
            bodies[-1].write_bytes(multipart_body(f.read_bytes(), f.name))
        servers = {}
        for sampling in SAMPLINGS:
            servers[sampling] = SamplingServer(bundle, cfg, sampling, root / f"server-{sampling}.log")
            started.callback(servers[sampling].stop)
        for server in servers.values():
            server.wait_ready()

        def client(server: SamplingServer, seconds: float) -> ClientRun:
            if hey is not None:
                return run_hey(hey, server.url, bodies, cfg.concurrency, seconds, cfg.timeout_s)
            return run_python(server.url, corpus, cfg.concurrency, seconds, cfg.timeout_s)

        for server in servers.values():
            client(server, cfg.warmup_s)
        rounds: list[dict[str, Any]] = []
        for i in range(cfg.repeats):
            order = SAMPLINGS[i % 3 :] + SAMPLINGS[: i % 3]
            rounds.append({s: _phase(servers[s], functools.partial(client, servers[s], cfg.duration_s)) for s in order})
            log(f"round {i + 1}: " + ", ".join(f"{s} {rounds[-1][s]['videos_per_s']:.2f} videos/s" for s in order))
    return _result(cfg, files, hey is not None, rounds)


def _phase(server: SamplingServer, run: Callable[[], ClientRun]) -> dict[str, Any]:
    http = http_phase(server, run)
    answered = max(http["answered"], 1)
    cpu = http["cpu_s"]
    return {
        "videos_per_s": http["requests_per_s"],
        "answered": http["answered"],
        "errors": http["errors"],
        "server_cpu_ms_per_video": 1e3 * (cpu["server_main_s"] + cpu["decode_workers_s"]) / answered,
        "decode_workers_cpu_ms_per_video": 1e3 * cpu["decode_workers_s"] / answered,
        "runner_busy_fraction": http["runner_busy_fraction"],
        "latency_s": http["latency_s"],
    }


def _result(cfg: RealisticE2EConfig, files: list[Path], hey: bool, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    per = {s: [r[s] for r in rounds] for s in SAMPLINGS}
    rate = {s: [p["videos_per_s"] for p in per[s]] for s in SAMPLINGS}
    ratios = {s: ratio_stats(rate[s], rate["legacy"]) for s in ("exact", "fast")}
    return {
        "corpus": cfg.corpus_dir,
        "files": [f.name for f in files],
        "mib_per_file": sum(f.stat().st_size for f in files) / len(files) / 2**20,
        "client": {"name": HEY_CLIENT if hey else PYTHON_CLIENT, "concurrency": cfg.concurrency,
                   "duration_s": cfg.duration_s},
        "server": {"decode_workers": cfg.decode_workers, "max_batch": cfg.max_batch, "torch_threads": cfg.torch_threads,
                   "tolerance_s": cfg.tolerance_s},
        "machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "repeats": cfg.repeats,
        "rounds": rounds,
        "summary": {
            s: {
                "videos_per_s": spread(rate[s]),
                "server_cpu_ms_per_video": spread([p["server_cpu_ms_per_video"] for p in per[s]]),
                "decode_workers_cpu_ms_per_video": spread([p["decode_workers_cpu_ms_per_video"] for p in per[s]]),
                "errors": sum(p["errors"] for p in per[s]),
            }
            for s in SAMPLINGS
        },
        "ratios_vs_legacy": ratios,
        "targets": {s: {"target": t, "median": ratios[s]["median"], "met": ratios[s]["median"] >= t}
                    for s, t in TARGETS.items()},
    }


def format_realistic_e2e(result: dict[str, Any]) -> str:
    """The result as a markdown table (one row per sampling) and the targets."""
    lines = [
        f"corpus {result['corpus']} ({len(result['files'])} files, {result['mib_per_file']:.1f} MiB each), "
        f"{result['client']['name']} at concurrency {result['client']['concurrency']}, {result['repeats']} rounds",
        "",
        "| sampling | videos/s | server CPU ms/video | of which decoders | vs old decoder |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in SAMPLINGS:
        row = result["summary"][s]
        ratio = "1.00x" if s == "legacy" else _x(result["ratios_vs_legacy"][s])
        lines.append(f"| {'old' if s == 'legacy' else s} | {_cell(row['videos_per_s'], '{:.2f}')} | "
                     f"{_cell(row['server_cpu_ms_per_video'], '{:.0f}')} | "
                     f"{_cell(row['decode_workers_cpu_ms_per_video'], '{:.0f}')} | {ratio} |")
    for s, t in result["targets"].items():
        lines.append(f"\n{s}: {t['median']:.2f}x the old decoder's videos/s (target >= {t['target']}x): "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def _cell(stats: dict[str, Any], fmt: str) -> str:
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}-{fmt.format(stats['max'])})"


def _x(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.2f}x ({stats['min']:.2f}-{stats['max']:.2f}x)"
