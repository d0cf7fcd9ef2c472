"""Training and evaluation data: a generated benchmark (procedural ``synth`` or moving Fashion-MNIST ``fashion``,
both generated on the fly) or class folders of videos.

All yield ``(frames (3, T, S, S) uint8, label, boxes (T, 4) int64)``; ``boxes`` are the object's per-frame boxes
(``model.data.targets``) and all -1 for real videos, which have no ground-truth location.
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

from model.data import fashion
from model.data.fashion import FashionConfig
from model.data.synth import SPLIT_SEEDS, SYNTH_PRESETS, SynthConfig, make_batch, make_clip
from model.data.targets import no_boxes, static_boxes
from model.video import decode_clip

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BenchmarkConfig = SynthConfig | FashionConfig
BENCHMARKS = ("synth", "fashion")
# Named benchmark settings: "<source>" or "<source>:<preset>"; a bundle records the one it was trained on.
PRESETS: dict[str, BenchmarkConfig] = {
    "fashion": FashionConfig(),
    # the tiny model config's input (4 frames of 32 px), for tests
    "fashion:tiny": FashionConfig(
        num_frames=4,
        size=32,
        clear_sizes=(16, 24),
        small_sizes=(8, 12),
        degraded_sizes=(10, 20),
        degraded_visible=(2, 4),
        clutter=2,
    ),
    **{f"synth:{name}": cfg for name, cfg in SYNTH_PRESETS.items()},
}
DEFAULT_PRESETS = {"fashion": "fashion", "synth": "synth:hard"}

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
        box = clip.target
        boxes = static_boxes(box.x, box.y, box.size, box.t, box.frames, self.cfg.num_frames)  # (T, 4)
        return frames, clip.label, torch.from_numpy(boxes)


class FashionDataset(Dataset[Sample]):
    """Clips ``0 .. length - 1`` of the moving Fashion-MNIST stream ``(split, seed)``."""

    def __init__(self, cfg: FashionConfig, split: str, seed: int, length: int) -> None:
        self.cfg, self.split, self.seed, self.length = cfg, split, seed, length
        self.class_names = cfg.class_names
        fashion.load_split_images(split)  # fail here, with the install hint, not in a worker

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        clip = fashion.make_clip(self.cfg, self.split, self.seed, index)
        frames = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, clip.label, torch.from_numpy(clip.boxes)


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
        path, label = self.items[index]
        clip = decode_clip(path, self.num_frames, self.size)  # (T, S, S, 3) uint8
        frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).contiguous()  # (3, T, S, S)
        return frames, label, torch.from_numpy(no_boxes(self.num_frames))


@dataclass(frozen=True)
class DataSpec:
    """Where clips come from: a generated benchmark (``synth`` or ``fashion``: the stream ``(split, seed)`` of
    ``count`` clips, drawn with ``benchmark``'s settings) or a class-folder root."""

    source: str  # "synth", "fashion" or a folder path
    seed: int = 0
    count: int = 1024
    benchmark: BenchmarkConfig = field(default_factory=SynthConfig)
    split: str = "train"  # fashion: which images (train, calibration, test); synth: splits are seeds

    def __post_init__(self) -> None:
        if self.source == "synth" and not isinstance(self.benchmark, SynthConfig):
            raise ValueError("source 'synth' needs a SynthConfig")
        if self.source == "fashion" and not isinstance(self.benchmark, FashionConfig):
            raise ValueError("source 'fashion' needs a FashionConfig")
        if self.split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {tuple(SPLIT_SEEDS)}")

    @property
    def is_generated(self) -> bool:
        """A generated benchmark: an endless stream with ground-truth boxes."""
        return self.source in BENCHMARKS


def preset_name(data: str, preset: str | None = None) -> str:
    """The registry name of ``--data`` (a benchmark or preset name) with an optional ``--preset`` (synth: hard,
    easy); raises ValueError for names that are neither."""
    name = data if preset is None or ":" in data else f"{data}:{preset}"
    name = DEFAULT_PRESETS.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(PRESETS)} or a class-folder root")
    return name


def generated_spec(preset: str, split: str, seed: int, count: int) -> DataSpec:
    """The stream ``(split, seed)`` of ``count`` clips of a named benchmark preset."""
    return DataSpec(preset.split(":")[0], seed, count, PRESETS[preset], split)


def build_dataset(
    spec: DataSpec, num_frames: int, size: int, class_names: tuple[str, ...] | None = None
) -> Dataset[Sample]:
    if spec.is_generated:
        bench = spec.benchmark
        if (bench.num_frames, bench.size) != (num_frames, size):
            raise ValueError(
                f"{spec.source} clips are {bench.num_frames}x{bench.size}px, the model wants {num_frames}x{size}"
            )
        if isinstance(bench, FashionConfig):
            return FashionDataset(bench, spec.split, spec.seed, spec.count)
        return SynthDataset(bench, spec.seed, spec.count)
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
    """Batches (frames (B, 3, T, S, S) uint8, labels (B,), boxes (B, T, 4)) in ``plan`` order."""
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=workers, persistent_workers=False)
    yield from loader


def eval_batches(dataset: Dataset[Sample], batch_size: int, workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Every item once, in order."""
    n = len(dataset)  # type: ignore[arg-type]
    plan = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    yield from iterate(dataset, plan, workers)


def benchmark_clips(
    config_frames: int, config_size: int, num_classes: int, count: int, seed: int, benchmark: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` test-split clips (N, T, H, W, 3) uint8 with labels (N,) for a model of this input size: from
    ``benchmark`` (a bundle's preset) when its clips have that size and its data is installed, else from the
    procedural benchmark drawn at that size. Raises ValueError when neither fits (callers fall back to noise)."""
    preset = PRESETS.get(benchmark or "")
    if preset is not None and (preset.num_frames, preset.size) == (config_frames, config_size):
        try:
            spec = generated_spec(str(benchmark), "test", seed, count)
            items = [build_dataset(spec, config_frames, config_size)[i] for i in range(count)]
            frames = np.stack([f.permute(1, 2, 3, 0).numpy() for f, _, _ in items])  # (N, T, H, W, 3)
            return frames, np.array([y for _, y, _ in items]), f"`{benchmark}` test stream seed {seed}"
        except fashion.MissingDataset:
            pass
    target = min(20, config_size // 4 * 4)
    synth = SynthConfig(
        num_frames=config_frames,
        size=config_size,
        num_classes=num_classes,
        target_size=target,
        visible_frames=min(4, config_frames),
        distractor_sizes=(min(8, target), target),
    )
    frames, labels, _ = make_batch(synth, SPLIT_SEEDS["test"] + seed, list(range(count)))
    return frames, labels, f"`synth` clips at {config_size} px, stream seed {SPLIT_SEEDS['test'] + seed}"
