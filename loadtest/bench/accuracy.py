"""``adafocus bench accuracy``: the shipped bundle's accuracy on realistic uploads, per decode sampling, next to the
benchmark clips of the same scenes.

The corpus is ``adafocus synth --realistic PRESET --count N`` (``model.data.realistic``): scene i of each preset is
the fashion benchmark's test clip i of the same seed, drawn at the preset's size and timeline and encoded. Each file
is decoded by the server's decoder (``model.video.sample_clip``, what a decode worker runs) in each sampling, and the
bundle classifies the clips through the staged API as the server does (``model.evaluation.collect``: glance, integer
cubes, focus), every exit's logits kept; each budget level's thresholds then give its exits and accuracy
(``simulate``, the engine's exit rule). The reference is the benchmark's own clips of the same scenes (16 x 112 x
112, rendered directly, no codec), classified the same way. Ground truth is the preset's ``labels.csv`` (checked to
be the benchmark's labels).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from model.data.datasets import Sample, build_dataset, generated_spec
from model.data.targets import no_boxes
from model.evaluation.collect import ExitRecord, collect
from model.evaluation.operating_points import simulate
from model.macs import cost_report
from model.video import DecodeLimits, Sampling, sample_clip

TARGET_POINTS = 2.0  # realistic uploads (exact) within 2 accuracy points of the benchmark clips of the same scenes
FAST_VS_EXACT_POINTS = 1.0  # fast within 1 point of exact


@dataclass(frozen=True)
class AccuracyConfig:
    corpus_dir: str  # the folder `adafocus synth --realistic` wrote: <preset>/clip_*.<ext> + labels.csv
    presets: tuple[str, ...] = ()  # () = every preset folder found
    samplings: tuple[Sampling, ...] = ("exact", "fast")
    bundle: str | None = None
    count: int | None = None  # clips per preset; None = all of labels.csv
    tolerance_s: float = 0.5  # fast sampling's
    seed: int = 2  # the corpus's scene stream (adafocus synth's --seed)
    split: str = "test"
    batch_size: int = 32


class DecodedUploads(Dataset[Sample]):
    """The files of one preset folder, decoded as a decode worker decodes an upload, with their labels."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], num_frames: int, size: int,
                 limits: DecodeLimits) -> None:
        self.files, self.labels, self.limits = list(files), list(labels), limits
        self.num_frames, self.size = num_frames, size
        self.decode_s = 0.0  # wall time spent decoding, all items
        self.max_offset_s = 0.0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        started = time.perf_counter()
        clip = sample_clip(str(self.files[index]), self.num_frames, self.size, self.limits)
        self.decode_s += time.perf_counter() - started
        self.max_offset_s = max(self.max_offset_s, clip.max_offset_s)
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, self.labels[index], torch.from_numpy(no_boxes(self.num_frames))


def read_labels(folder: Path, count: int | None) -> tuple[list[Path], list[int]]:
    with (folder / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:count]
    return [folder / row["filename"] for row in rows], [int(row["label"]) for row in rows]


def levels_of(record: ExitRecord, bundle: Bundle, exit_gmacs: list[float]) -> dict[str, dict[str, float]]:
    """Each budget level's accuracy and GMACs/video on ``record`` (the engine's exit rule)."""
    table = bundle.budgets
    out = {}
    for level in table.levels:
        op = simulate(record, level.thresholds, table.criterion, exit_gmacs)
        out[level.name] = {"accuracy": op.accuracy, "gmacs": op.gmacs}
    return out


def run_accuracy_bench(cfg: AccuracyConfig, log: Any = lambda _: None) -> dict[str, Any]:
    bundle = load_bundle(cfg.bundle or DEFAULT_BUNDLE)
    model, mcfg = bundle.model.eval(), bundle.config
    exit_gmacs = list(cost_report(bundle.model).exit_gmacs)
    root = Path(cfg.corpus_dir)
    presets = cfg.presets or tuple(sorted(p.name for p in root.iterdir() if (p / "labels.csv").exists()))
    if bundle.benchmark is None:
        raise RuntimeError("the bundle names no benchmark: the reference clips cannot be drawn")
    results = []
    for preset in presets:
        files, labels = read_labels(root / preset, cfg.count)
        reference = build_dataset(generated_spec(bundle.benchmark, cfg.split, cfg.seed, len(files)),
                                  mcfg.num_frames, mcfg.frame_size, mcfg.class_names)
        ref_record = collect(model, reference, batch_size=cfg.batch_size)
        if ref_record.labels.tolist() != labels:
            raise RuntimeError(f"{preset}: labels.csv is not the benchmark's labels for seed {cfg.seed}: another seed?")
        row: dict[str, Any] = {"preset": preset, "clips": len(files),
                               "benchmark_clips": levels_of(ref_record, bundle, exit_gmacs), "samplings": {}}
        for sampling in cfg.samplings:
            uploads = DecodedUploads(files, labels, mcfg.num_frames, mcfg.frame_size,
                                     DecodeLimits(sampling=sampling, tolerance_s=cfg.tolerance_s))
            record = collect(model, uploads, batch_size=cfg.batch_size)
            row["samplings"][sampling] = {"levels": levels_of(record, bundle, exit_gmacs),
                                          "decode_s_per_clip": uploads.decode_s / len(files),
                                          "max_offset_s": uploads.max_offset_s}
            log(f"{preset} {sampling}: {row['samplings'][sampling]['levels'][bundle.budgets.default]['accuracy']:.3f}")
        results.append(row)
    return {"bundle": str(bundle.path), "bundle_sha256": bundle.sha256, "default_level": bundle.budgets.default,
            "seed": cfg.seed, "split": cfg.split, "tolerance_s": cfg.tolerance_s, "presets": results,
            "targets": _targets(results, bundle.budgets.default)}


def _targets(results: list[dict[str, Any]], level: str) -> dict[str, Any]:
    """Per preset at the default level: exact vs the benchmark clips (points), fast vs exact (points)."""
    out = {}
    for row in results:
        ref = 100 * row["benchmark_clips"][level]["accuracy"]
        acc = {s: 100 * v["levels"][level]["accuracy"] for s, v in row["samplings"].items()}
        entry: dict[str, Any] = {}
        if "exact" in acc:
            gap = acc["exact"] - ref
            entry["exact_vs_benchmark_points"] = {"value": gap, "met": abs(gap) <= TARGET_POINTS}
        if "exact" in acc and "fast" in acc:
            gap = acc["fast"] - acc["exact"]
            entry["fast_vs_exact_points"] = {"value": gap, "met": abs(gap) <= FAST_VS_EXACT_POINTS}
        out[row["preset"]] = entry
    return out


def format_accuracy(result: dict[str, Any]) -> str:
    """One markdown row per preset and level: benchmark clips, then each sampling (accuracy %, GMACs/video)."""
    samplings = list(result["presets"][0]["samplings"]) if result["presets"] else []
    head = "| preset | clips | level | benchmark clips | " + " | ".join(f"uploads, {s}" for s in samplings) + " |"
    lines = [head, "| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in samplings) + " |"]
    for row in result["presets"]:
        for level, ref in row["benchmark_clips"].items():
            cells = [f"{100 * v['levels'][level]['accuracy']:.1f}% ({v['levels'][level]['gmacs']:.4f})"
                     for v in row["samplings"].values()]
            lines.append(f"| {row['preset']} | {row['clips']} | {level} | {100 * ref['accuracy']:.1f}% "
                         f"({ref['gmacs']:.4f}) | " + " | ".join(cells) + " |")
    for preset, entry in result["targets"].items():
        for name, t in entry.items():
            lines.append(f"\n{preset} {name}: {t['value']:+.1f} points ({'met' if t['met'] else 'NOT met'})")
    return "\n".join(lines)
