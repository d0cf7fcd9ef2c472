"""The same long video as a timeline three ways on one real `adafocus serve` (issue 23's OIP timeline):
``POST /classify`` with ``segment_s`` (JSON answer), ``POST /v2/models/default/infer`` with binary output tensors
(tritonclient's default) and with JSON output tensors; the order rotates each round. Per way: wall seconds from the
request to the whole answer, the answer's bytes, and whether every segment's label and exit step equal /classify's.

    .venv/bin/python scripts/oip_timeline_bench.py --out /tmp/oip-timeline [--seconds 120] [--rounds 3]

The video: ``model.data.realistic.write_timeline`` at 854x480, 30 fps, GOP 60, H.264 (written once under --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest.http.server_process import ServerProcess
from model.data.realistic import RealisticPreset, write_timeline
from service.http import oip_tensors as wire

ROOT = Path(__file__).resolve().parents[1]


def classify(client: httpx.Client, video: bytes, segment_s: float) -> tuple[int, list[tuple[str, int]]]:
    response = client.post("/classify", files={"video": ("v.mp4", video)}, data={"segment_s": str(segment_s)})
    response.raise_for_status()
    return len(response.content), [(s["label"], s["exit_step"]) for s in response.json()["segments"]]


def infer(client: httpx.Client, video: bytes, segment_s: float, binary: bool) -> tuple[int, list[tuple[str, int]]]:
    head = {"parameters": {"segment_s": segment_s, "binary_data_output": binary}}  # the file binary either way
    body, header = wire.encode(head, "inputs", [wire.Output("video", "BYTES", [video])], lambda _: True)
    headers = {"Content-Type": "application/octet-stream", wire.HEADER_LENGTH: str(header)}
    response = client.post("/v2/models/default/infer", content=body, headers=headers)
    response.raise_for_status()
    _, outputs = wire.decode_response(response.content, response.headers.get(wire.HEADER_LENGTH))
    labels = [bytes(v).decode() for v in outputs["segment_label"]]
    return len(response.content), list(zip(labels, outputs["segment_exit_step"].tolist(), strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    preset = RealisticPreset(f"480p30-{args.seconds:g}s-gop60-h264", 854, 480, 30, args.seconds, 60)
    video_path = args.out / f"{preset.name}.timeline.mp4"
    if not video_path.exists():
        write_timeline(args.out, preset)
    video = video_path.read_bytes()
    settings = {"decode_workers": 2, "max_upload_bytes": 2 * len(video) + 2**20, "device": "cpu"}
    server = ServerProcess(ROOT / "model" / "bundles" / "default", args.out / "server.log", settings)
    ways: dict[str, Any] = {
        "classify": lambda c: classify(c, video, args.segment_s),
        "oip_binary": lambda c: infer(c, video, args.segment_s, True),
        "oip_json": lambda c: infer(c, video, args.segment_s, False),
    }
    runs: dict[str, list[tuple[float, int, bool]]] = {name: [] for name in ways}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as client:
            reference = classify(client, video, args.segment_s)[1]  # also the warm-up
            for r in range(args.rounds):
                for name in list(ways)[r % 3 :] + list(ways)[: r % 3]:
                    started = time.monotonic()
                    size, segments = ways[name](client)
                    runs[name].append((time.monotonic() - started, size, segments == reference))
    finally:
        server.stop()
    result = {
        "video": {"path": str(video_path), "bytes": len(video), "seconds": args.seconds, "segment_s": args.segment_s},
        "ways": {name: {"wall_s_median": statistics.median(w for w, _, _ in rs), "wall_s": [w for w, _, _ in rs],
                        "answer_bytes": rs[0][1], "segments_equal_classify": all(ok for _, _, ok in rs)}
                 for name, rs in runs.items()},
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
