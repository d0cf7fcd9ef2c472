"""Offline evaluation: logits at every exit for a whole split, accuracy per exit and cube hit rates.

``collect`` runs the model through the staged API exactly as the server does (``glance``, then integer cubes
cropped from the full-resolution uint8 frames, ``focus`` once per cube), either at the policy's centres or at
uniform random centres, and keeps every exit's logits so that threshold sets can be solved and simulated
afterwards without running the network again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from model.adafocus import AdaFocusV3, FocusState, GlanceOutput
from model.data.datasets import Sample, eval_batches
from model.data.targets import cube_hits, has_boxes
from model.exits import staged_exit_logits

Placement = Literal["policy", "random"]


@dataclass(frozen=True)
class ExitRecord:
    logits: np.ndarray  # (N, K+1, C) float32, every exit
    labels: np.ndarray  # (N,) int64
    starts: np.ndarray  # (N, K, 3) int64 cube starts (x0, y0, t0)
    targets: np.ndarray  # (N, T, 4) int64 per-frame object boxes (model.data.targets), -1 when unknown

    @property
    def correct(self) -> np.ndarray:
        """(N, K+1) bool: the prediction at each exit is right."""
        return self.logits.argmax(-1) == self.labels[:, None]

    @property
    def has_targets(self) -> bool:
        return has_boxes(self.targets)


class RecordedStages:
    """The model's stages, remembering the centres of the last glance; with a generator, the glance's centres are
    replaced by uniform random ones (the random-placement baseline)."""

    def __init__(self, model: AdaFocusV3, gen: torch.Generator | None = None) -> None:
        self.model, self.gen = model, gen
        self.centres = torch.empty(0)

    def glance(self, frames_small: torch.Tensor) -> GlanceOutput:
        out = self.model.glance(frames_small)
        if self.gen is not None:
            centres = torch.rand(out.centres.shape, generator=self.gen).to(out.centres.device)  # (B, K, 3)
            out = out._replace(centres=centres)
        self.centres = out.centres
        return out

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        return self.model.focus(cubes, state)


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
    logits, labels, starts, targets = [], [], [], []
    with torch.inference_mode():
        for frames, y, target in eval_batches(dataset, batch_size, workers):
            frames = frames.to(device)
            staged = RecordedStages(model, gen if placement == "random" else None)
            logits.append(staged_exit_logits(staged, model, frames).float().cpu().numpy())
            starts.append(model.cube_starts(staged.centres).cpu().numpy())
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
    """Per cube k: share of cubes that see the object, and share of clips where any of cubes 1..k did."""
    hits = cube_hits(record.starts, cube_shape, record.targets)  # (N, K)
    return hits.mean(axis=0), np.logical_or.accumulate(hits, axis=1).mean(axis=0)


def distinct_frames(record: ExitRecord) -> np.ndarray:
    """(N,) number of distinct start frames among each clip's K cubes."""
    t0 = np.sort(record.starts[..., 2], axis=1)  # (N, K)
    return 1 + (np.diff(t0, axis=1) != 0).sum(axis=1)
