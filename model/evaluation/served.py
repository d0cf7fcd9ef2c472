"""Served-path accuracy: the benchmark's clips written as MP4 files by ``adafocus synth`` (H.264, yuv420p) and decoded
by the server's decoder (``model.video.sample_clip`` with the server's default ``DecodeLimits``), beside the same
clips' raw frames, per exit and per clip kind. What an HTTP client sending these files gets differs from the
raw-frame numbers only by the codec's loss (and the decoder's resize, an identity at the benchmark's size).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.adafocus import AdaFocusV3
from model.data.datasets import FashionDataset, Sample
from model.data.fashion import FashionConfig, write_dataset
from model.evaluation.collect import ExitRecord, collect
from model.video import DecodeLimits, sample_clip


class WrittenClips(Dataset[Sample]):
    """The clips of an ``adafocus synth`` folder (``labels.csv`` + MP4 files), decoded as the server decodes."""

    def __init__(self, folder: Path, num_frames: int, size: int, limits: DecodeLimits = DecodeLimits()) -> None:
        with (folder / "labels.csv").open(newline="") as fh:
            self.rows = list(csv.DictReader(fh))
        self.folder, self.num_frames, self.size, self.limits = folder, num_frames, size, limits

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kinds(self) -> np.ndarray:
        return np.array([row["kind"] for row in self.rows])

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        clip = sample_clip(self.folder / row["filename"], self.num_frames, self.size, self.limits)
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, int(row["label"]), torch.tensor(json.loads(row["boxes"]), dtype=torch.int64)


def _accuracy_by_kind(record: ExitRecord, kinds: np.ndarray) -> dict[str, list[float]]:
    correct = record.correct  # (N, K+1)
    out = {"all": correct.mean(axis=0).tolist()}
    for kind in sorted(set(kinds.tolist())):
        out[kind] = correct[kinds == kind].mean(axis=0).tolist()
    return out


def served_report(
    model: AdaFocusV3, bench: FashionConfig, folder: Path, split: str, seed: int, count: int, batch_size: int = 64
) -> dict[str, Any]:
    """Write ``count`` clips of the stream ``(split, seed)`` to ``folder`` as MP4, then every exit's accuracy, per
    kind, on their raw frames and on the server's decode of the files (cubes at the policy's centres)."""
    write_dataset(folder, bench, count, split, seed)
    written = WrittenClips(folder, bench.num_frames, bench.size)
    raw = collect(model, FashionDataset(bench, split, seed, count), "policy", batch_size)
    served = collect(model, written, "policy", batch_size)
    kinds = written.kinds
    return {
        "data": f"`fashion` {split} stream seed {seed}, {count} clips written by `adafocus synth` (H.264 MP4, 8 fps)",
        "raw": _accuracy_by_kind(raw, kinds),
        "served": _accuracy_by_kind(served, kinds),
        "same_prediction": float((raw.logits.argmax(-1) == served.logits.argmax(-1)).mean()),
    }


def served_section(report: dict[str, Any]) -> str:
    """The card's served-path table: per exit, raw vs served accuracy for all clips and for each kind."""
    kinds = list(report["raw"])
    head = "| exit | " + " | ".join(f"{k}: raw / served (%)" for k in kinds) + " | served - raw, all (points) |\n"
    head += "|---" * (len(kinds) + 2) + "|\n"
    rows = []
    for e in range(len(report["raw"]["all"])):
        pairs = [(report["raw"][k][e], report["served"][k][e]) for k in kinds]
        gap = (report["served"]["all"][e] - report["raw"]["all"][e]) * 100
        rows.append(f"| {e} | " + " | ".join(f"{r * 100:.1f} / {s * 100:.1f}" for r, s in pairs) + f" | {gap:+.1f} |")
    return (
        "### Served path: MP4 files through the server's decoder\n\n"
        f"{report['data']}, decoded by `model/video.py` as the server does, against the same clips' raw frames; "
        f"the same prediction at {report['same_prediction'] * 100:.1f}% of (clip, exit) pairs.\n\n"
        + head
        + "\n".join(rows)
        + "\n"
    )
