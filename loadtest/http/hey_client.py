"""The light closed-loop client of ``bench e2e``: Debian's ``hey`` (Go) when it is installed, else the repo's own
HTTP load generator (``loadtest.http.load``, Python, in this process). Either way: ``concurrency`` requests in
flight for ``duration_s`` seconds, each answered before its sender sends the next, and the client's own CPU
seconds, so that the server's share of the machine can be told from the client's.
"""

from __future__ import annotations

import asyncio
import io
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.http.corpus import load_corpus
from loadtest.http.load import LoadConfig, run_load
from loadtest.schedule import Bound

BOUNDARY = "adafocus-e2e-boundary"
HEY_CLIENT = "hey (Go, closed loop)"
PYTHON_CLIENT = "adafocus loadtest (Python httpx, closed loop; hey is not installed)"
HEY_GRACE_S = 30.0  # past its -z duration plus one request timeout, a hey process is taken as hung


class HeyHung(RuntimeError):
    """A hey process ran past its duration, its request timeout and a grace period (seen once here: two hey
    processes spinning at 100% CPU for minutes after ``-z 1.5s``); every hey of the run was killed."""


@dataclass(frozen=True)
class ClientRun:
    ok: int  # answers with a 2xx status
    errors: int  # other answers and transport failures
    wall_s: float  # from the first send to the last answer
    cpu_s: float  # the client's own CPU seconds
    latency_s: dict[str, float | None]  # p50/p90/p99/max/mean of the answered requests

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0


def multipart_body(video: bytes, filename: str) -> bytes:
    """A multipart/form-data body with the one ``video`` part, as ``curl -F video=@clip.mp4`` sends it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="{filename}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    )
    return head.encode() + video + f"\r\n--{BOUNDARY}--\r\n".encode()


def hey_path(choice: str) -> str | None:
    """The ``hey`` binary to use: ``auto`` finds it on PATH, ``python`` never uses it, ``hey`` requires it."""
    found = shutil.which("hey") if choice != "python" else None
    if choice == "hey" and found is None:
        raise RuntimeError("--client hey: no `hey` on PATH (Debian: apt-get install hey)")
    return found


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every child reaped so far
    return usage.ru_utime + usage.ru_stime


def run_hey(
    hey: str,
    url: str,
    bodies: list[Path],
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    grace_s: float = HEY_GRACE_S,
) -> ClientRun:
    """One ``hey`` process per request body (the clips take turns), ``concurrency`` workers in all. Latency: the
    median of the processes' p50 and the largest of their p99 (hey reports percentiles, not samples)."""
    count = max(1, min(len(bodies), concurrency))
    shares = [concurrency // count + (1 if i < concurrency % count else 0) for i in range(count)]
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    cpu_before, started = _children_cpu_s(), time.perf_counter()
    procs = [
        subprocess.Popen(
            [hey, "-z", f"{duration_s:g}s", "-c", str(share), "-t", f"{max(1, round(timeout_s))}", "-m", "POST",
             "-T", content_type, "-D", str(body), f"{url}/classify"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for body, share in zip(bodies, shares, strict=False)
    ]
    deadline = time.monotonic() + duration_s + timeout_s + grace_s
    try:  # communicate reaps them: their CPU lands in RUSAGE_CHILDREN
        outputs = [proc.communicate(timeout=max(0.0, deadline - time.monotonic()))[0] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()  # SIGKILL: a spinning hey ignores SIGTERM
            proc.communicate()
        raise HeyHung(f"hey ran {time.perf_counter() - started:.0f} s past a {duration_s:g} s run; killed") from None
    wall = time.perf_counter() - started
    if any(proc.returncode != 0 for proc in procs):
        raise RuntimeError(f"hey failed: {outputs[0][-500:]}")
    reports = [parse_hey(out) for out in outputs]
    ok = sum(r["ok"] for r in reports)
    errors = sum(r["errors"] for r in reports)
    p50s = sorted(r["p50"] for r in reports if r["p50"] is not None)
    p99s = [r["p99"] for r in reports if r["p99"] is not None]
    latency = {"p50": p50s[len(p50s) // 2] if p50s else None, "p99": max(p99s) if p99s else None}
    return ClientRun(ok, errors, wall, _children_cpu_s() - cpu_before, latency)


def parse_hey(text: str) -> dict[str, Any]:
    """Counts and percentiles from hey's summary: ``[200]\t649 responses`` (status codes), ``[3]\tPost ...: ...``
    (transport errors), ``50% in 0.2307 secs`` (latency); p99 is the slowest answer when hey prints none."""
    ok = errors = 0
    quantiles: dict[str, float] = {}
    section = ""
    for line in text.splitlines():
        words = line.split()
        if line and not line.startswith(" "):
            section = line.strip()
        elif section.startswith("Summary") and words[:1] == ["Slowest:"]:
            quantiles["max"] = float(words[1])
        elif section.startswith("Latency distribution") and len(words) >= 3 and words[0].endswith("%"):
            quantiles[f"p{words[0][:-1]}"] = float(words[2])
        elif words and words[0].startswith("[") and words[0].endswith("]") and words[0][1:-1].isdigit():
            number = int(words[0][1:-1])
            if section.startswith("Status code distribution"):
                ok, errors = (ok + int(words[1]), errors) if 200 <= number < 300 else (ok, errors + int(words[1]))
            elif section.startswith("Error distribution"):
                errors += number
    # hey prints a percentile only when its integer rank is hit: under 100 answers p99 may be missing
    p99 = quantiles.get("p99", quantiles.get("max"))
    return {"ok": ok, "errors": errors, "p50": quantiles.get("p50"), "p99": p99}


def run_python(url: str, corpus_dir: Path, concurrency: int, duration_s: float, timeout_s: float) -> ClientRun:
    """The repo's load generator in this process; its CPU is this process's over the phase."""
    cfg = LoadConfig(url, Bound.of(duration_s, None), concurrency=concurrency, timeout_s=timeout_s, progress=False)
    corpus = load_corpus(corpus_dir)
    cpu_before = time.process_time()
    result: dict[str, Any] = asyncio.run(run_load(cfg, corpus, out=io.StringIO()))
    cpu = time.process_time() - cpu_before
    (phase,) = result["phases"]
    return ClientRun(int(phase["completed"]), int(phase["errors"]), float(phase["elapsed_s"]), cpu, phase["latency_s"])
