"""Training and evaluation data: the synthetic benchmark (generated on the fly) or class folders of videos.

Both yield ``(frames (3, T, S, S) uint8, label, target (5,) int64)``; ``target`` is the synthetic clip's
``TargetBox`` (x, y, t, size, frames) and all -1 for real videos, which have no ground-truth location.
Batches are planned as lists of indices (``batch_plan``) so that a resumed run sees exactly the clips it would
have seen, and a ``DataLoader`` worker process decodes/generates them beside the training process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.synth import SynthConfig, make_clip

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
NO_TARGET = (-1, -1, -1, -1, -1)

Sample = tuple[torch.Tensor, int, torch.Tensor]


class SynthDataset(Dataset[Sample]):
    """Clips ``0 .. length - 1`` of the synthetic stream ``seed``."""

    def __init__(self, cfg: SynthConfig, seed: int, length: int) -> None:
        self.cfg, self.seed, self.length = cfg, seed, length
        self.class_names = cfg.class_names

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        clip = make_clip(self.cfg, self.seed, index)
        frames = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, clip.label, torch.tensor(tuple(clip.target), dtype=torch.int64)


class VideoFolderDataset(Dataset[Sample]):
    """``root/<class>/<video>``: classes are the sorted sub-folder names; decoded by ``model.video``."""

    def __init__(self, root: str | Path, num_frames: int, size: int, class_names: tuple[str, ...] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data set folder {self.root} does not exist")
        found = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir()))
        self.class_names = class_names or found
        unknown = set(found) - set(self.class_names)
        if unknown:
            raise ValueError(f"{self.root} has class folders the model does not know: {sorted(unknown)}")
        self.items: list[tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(self.class_names)
            if (self.root / name).is_dir()
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in VIDEO_SUFFIXES
        ]
        if not self.items:
            raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {self.root}/<class>/")
        self.num_frames, self.size = num_frames, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        from model.video import decode_clip

        path, label = self.items[index]
        clip = decode_clip(path, self.num_frames, self.size)  # (T, S, S, 3) uint8
        frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, label, torch.tensor(NO_TARGET, dtype=torch.int64)


@dataclass(frozen=True)
class DataSpec:
    """Where clips come from: ``synth`` (a seed stream of ``count`` clips) or a class-folder root."""

    source: str  # "synth" or a folder path
    seed: int = 0
    count: int = 1024
    synth: SynthConfig = field(default_factory=SynthConfig)

    @property
    def is_synth(self) -> bool:
        return self.source == "synth"


def build_dataset(
    spec: DataSpec, num_frames: int, size: int, class_names: tuple[str, ...] | None = None
) -> Dataset[Sample]:
    if spec.is_synth:
        if (spec.synth.num_frames, spec.synth.size) != (num_frames, size):
            raise ValueError(
                f"synthetic clips are {spec.synth.num_frames}x{spec.synth.size}px, the model wants {num_frames}x{size}"
            )
        return SynthDataset(spec.synth, spec.seed, spec.count)
    return VideoFolderDataset(spec.source, num_frames, size, class_names)


def batch_plan(
    length: int, batch_size: int, first_step: int, num_steps: int, seed: int, infinite: bool
) -> list[list[int]]:
    """Index lists for steps ``first_step .. first_step + num_steps - 1``.

    ``infinite`` (a synthetic stream): step s takes clips s*B .. s*B + B - 1, never repeating a clip.
    Otherwise epochs over ``length`` items, each shuffled by (seed, epoch); a step never crosses an epoch.
    """
    if infinite:
        return [list(range(s * batch_size, (s + 1) * batch_size)) for s in range(first_step, first_step + num_steps)]
    per_epoch = max(length // batch_size, 1)
    plan = []
    for s in range(first_step, first_step + num_steps):
        epoch, pos = divmod(s, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(length)
        batch = order[pos * batch_size : (pos + 1) * batch_size]
        plan.append([int(i) for i in batch])
    return plan


def iterate(dataset: Dataset[Sample], plan: list[list[int]], workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches (frames (B, 3, T, S, S) uint8, labels (B,), targets (B, 5)) in ``plan`` order."""
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=workers, persistent_workers=False)
    yield from loader


def eval_batches(dataset: Dataset[Sample], batch_size: int, workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Every item once, in order."""
    n = len(dataset)  # type: ignore[arg-type]
    plan = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    yield from iterate(dataset, plan, workers)
