"""Offline evaluation: logits at every exit for a whole split, accuracy per exit and cube hit rates.

``collect`` runs the model in eval mode exactly as inference crops (integer cubes from the full-resolution
uint8 frames), either at the policy's centres or at uniform random centres, and keeps every exit's logits so
that threshold sets can be solved and simulated afterwards without running the network again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from model.adafocus import AdaFocusV3
from model.data import Sample, eval_batches
from model.synth import cube_hits

Placement = Literal["policy", "random"]


@dataclass(frozen=True)
class ExitRecord:
    logits: np.ndarray  # (N, K+1, C) float32, every exit
    labels: np.ndarray  # (N,) int64
    starts: np.ndarray  # (N, K, 3) int64 cube starts (x0, y0, t0)
    targets: np.ndarray  # (N, 5) int64 TargetBox rows, -1 when unknown

    @property
    def correct(self) -> np.ndarray:
        """(N, K+1) bool: the prediction at each exit is right."""
        return self.logits.argmax(-1) == self.labels[:, None]

    @property
    def has_targets(self) -> bool:
        return bool((self.targets[:, 0] >= 0).all())


def collect(
    model: AdaFocusV3,
    dataset: Dataset[Sample],
    placement: Placement = "policy",
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
) -> ExitRecord:
    """Every exit's logits on ``dataset``, cubes at the policy's centres or at seeded uniform random ones."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    K = model.config.num_cubes
    logits, labels, starts, targets = [], [], [], []
    with torch.inference_mode():
        for frames, y, target in eval_batches(dataset, batch_size, workers):
            frames = frames.to(device)
            if placement == "random":
                centres = torch.rand(frames.shape[0], K, 3, generator=gen).to(device)  # (B, K, 3)
                out = model(frames, crop_mode="random", centres=centres)
            else:
                out = model(frames)
            logits.append(out.exit_logits.float().cpu().numpy())
            starts.append(model.cube_starts(out.centres).cpu().numpy())
            labels.append(y.numpy())
            targets.append(target.numpy())
    return ExitRecord(
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        starts=np.concatenate(starts),
        targets=np.concatenate(targets),
    )


def exit_accuracy(record: ExitRecord) -> np.ndarray:
    """(K+1,) accuracy at every exit."""
    return record.correct.mean(axis=0)


def hit_rates(record: ExitRecord, cube_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per cube k: share of cubes that see the target, and share of clips where any of cubes 1..k did."""
    hits = cube_hits(record.starts, cube_shape, record.targets)  # (N, K)
    return hits.mean(axis=0), np.logical_or.accumulate(hits, axis=1).mean(axis=0)
