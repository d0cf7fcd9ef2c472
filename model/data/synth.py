"""The synthetic focus benchmark: the class evidence is a small textured patch, briefly visible, among clutter.

Each clip (``num_frames`` x ``size`` x ``size`` RGB) has a smooth, slowly panning colour background with pixel
noise, a few solid shapes that move and bounce (distractors), and one target: a ``target_size`` square visible
for ``visible_frames`` consecutive frames at a random place and time. The class is a binary 4x4 tile with exactly
8 ones, repeated over the patch. Every 4x4 window of such a texture has the same mean, so the 4x-downsampled
glance sees a uniform square: it can find the target but not classify it. A cube placed on it can.

Clips are a pure function of ``(seed, index)``: splits are seeds (train 0, calibration 1, test 2 by default),
each clip drawn from its own ``numpy`` stream, so any clip can be regenerated alone, in any order or process.
``write_mp4`` encodes clips as H.264 files for demos and load tests (``adafocus synth``).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

SPLIT_SEEDS = {"train": 0, "calibration": 1, "test": 2}


@dataclass(frozen=True)
class SynthConfig:
    num_frames: int = 16
    size: int = 96  # frame side in pixels
    num_classes: int = 10
    target_size: int = 20  # side of the target patch (a multiple of ``tile``)
    visible_frames: int = 4  # consecutive frames the target is on screen
    tile: int = 4  # the class pattern's period; the glance must downsample by at least this much
    noise: float = 0.04  # pixel noise sigma (pixel values in [0, 1])
    min_distractors: int = 3
    max_distractors: int = 6
    distractor_sizes: tuple[int, int] = (8, 20)  # side range in pixels, inclusive
    max_speed: float = 3.0  # distractor speed, pixels per frame on each axis
    pattern_seed: int = 20240  # fixes which 4x4 tiles the classes are

    def __post_init__(self) -> None:
        if self.target_size % self.tile or self.target_size > self.size:
            raise ValueError(f"target_size {self.target_size} must be a multiple of tile {self.tile} <= size")
        if not 0 < self.visible_frames <= self.num_frames:
            raise ValueError(f"visible_frames must be in (0, {self.num_frames}]")
        if self.num_classes < 2:
            raise ValueError("need at least 2 classes")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(f"pattern_{i:02d}" for i in range(self.num_classes))

    @property
    def target_area_fraction(self) -> float:
        return self.target_size**2 / self.size**2

    @property
    def target_time_fraction(self) -> float:
        return self.visible_frames / self.num_frames


SYNTH_PRESETS = {"hard": SynthConfig(), "easy": SynthConfig(visible_frames=8)}


class TargetBox(NamedTuple):
    x: int  # left column of the target, pixels
    y: int  # top row
    t: int  # first visible frame
    size: int  # side in pixels
    frames: int  # visible frames, t .. t + frames - 1


class SynthClip(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8
    label: int
    target: TargetBox


@functools.lru_cache(maxsize=8)
def class_patterns(num_classes: int, tile: int, seed: int) -> np.ndarray:
    """(num_classes, tile, tile) binary tiles, half ones, pairwise distinct under every cyclic shift."""
    cells = tile * tile
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    patterns: list[np.ndarray] = []
    for _ in range(100_000):
        flat = np.zeros(cells, dtype=np.uint8)
        flat[rng.choice(cells, cells // 2, replace=False)] = 1
        pattern = flat.reshape(tile, tile)
        shifts = {np.roll(pattern, (dy, dx), axis=(0, 1)).tobytes() for dy in range(tile) for dx in range(tile)}
        if shifts & seen:
            continue
        seen |= shifts
        patterns.append(pattern)
        if len(patterns) == num_classes:
            return np.stack(patterns)
    raise ValueError(f"cannot find {num_classes} distinct {tile}x{tile} patterns")


@functools.lru_cache(maxsize=8)
def _upsample_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) linear interpolation weights, corners aligned."""
    pos = np.linspace(0, in_size - 1, out_size)
    eye = np.eye(in_size, dtype=np.float32)
    return np.stack([np.interp(pos, np.arange(in_size), eye[i]) for i in range(in_size)], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int, noise: float, count: int = 64) -> np.ndarray:
    """A fixed bank of noise frames (count, size, size, 3): drawing fresh normals per clip is the slow part."""
    return np.random.default_rng(7).normal(0.0, noise, (count, size, size, 3)).astype(np.float32)


def _bounce(start: float, velocity: float, low: float, high: float, steps: int) -> np.ndarray:
    """Positions over ``steps`` frames moving at ``velocity`` and reflecting off [low, high]."""
    span = max(high - low, 1e-6)
    raw = (start - low) + velocity * np.arange(steps)
    folded = np.mod(raw, 2 * span)
    return low + np.where(folded > span, 2 * span - folded, folded)  # (steps,)


def _background(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour field panning slowly, plus noise: (T, S, S, 3) float32 in about [0, 1]."""
    S, T = cfg.size, cfg.num_frames
    pad = S // 2
    m = _upsample_matrix(S + pad, 5)  # (S+pad, 5)
    field = rng.uniform(0.15, 0.85, (5, 5, 3)).astype(np.float32)
    big = np.einsum("ij,jkc,lk->ilc", m, field, m)  # (S+pad, S+pad, 3)
    ox = _bounce(rng.uniform(0, pad), rng.uniform(-1.5, 1.5), 0, pad, T).astype(int)
    oy = _bounce(rng.uniform(0, pad), rng.uniform(-1.5, 1.5), 0, pad, T).astype(int)
    bank = _noise_bank(S, cfg.noise)
    picks = rng.integers(0, len(bank), T)
    return np.stack([big[oy[t] : oy[t] + S, ox[t] : ox[t] + S] + bank[picks[t]] for t in range(T)])


def _draw_distractors(video: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> None:
    T, S = cfg.num_frames, cfg.size
    for _ in range(int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))):
        side = int(rng.integers(cfg.distractor_sizes[0], cfg.distractor_sizes[1] + 1))
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        disc = bool(rng.integers(0, 2))
        xs = _bounce(rng.uniform(0, S - side), rng.uniform(-cfg.max_speed, cfg.max_speed), 0, S - side, T)
        ys = _bounce(rng.uniform(0, S - side), rng.uniform(-cfg.max_speed, cfg.max_speed), 0, S - side, T)
        yy, xx = np.mgrid[:side, :side]
        r = (side - 1) / 2
        mask = ((yy - r) ** 2 + (xx - r) ** 2 <= r * r + 0.5) if disc else np.ones((side, side), bool)
        for t in range(T):
            x, y = int(xs[t]), int(ys[t])
            video[t, y : y + side, x : x + side][mask] = colour


def make_clip(cfg: SynthConfig, seed: int, index: int) -> SynthClip:
    """Clip ``index`` of the stream ``seed``: deterministic, independent of every other clip."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(0, cfg.num_classes))
    video = _background(cfg, rng)  # (T, S, S, 3)
    _draw_distractors(video, cfg, rng)
    ts, vis = cfg.target_size, cfg.visible_frames
    box = TargetBox(
        x=int(rng.integers(0, cfg.size - ts + 1)),
        y=int(rng.integers(0, cfg.size - ts + 1)),
        t=int(rng.integers(0, cfg.num_frames - vis + 1)),
        size=ts,
        frames=vis,
    )
    pattern = class_patterns(cfg.num_classes, cfg.tile, cfg.pattern_seed)[label]
    texture = np.tile(pattern, (ts // cfg.tile, ts // cfg.tile)).astype(bool)  # (ts, ts)
    on = rng.uniform(0.7, 1.0, 3).astype(np.float32)
    off = rng.uniform(0.0, 0.3, 3).astype(np.float32)
    patch = np.where(texture[..., None], on, off)  # (ts, ts, 3)
    video[box.t : box.t + vis, box.y : box.y + ts, box.x : box.x + ts] = patch
    frames = (np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # (T, S, S, 3)
    return SynthClip(frames, label, box)


def make_batch(cfg: SynthConfig, seed: int, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked clips: frames (B, T, S, S, 3) uint8, labels (B,) int64, targets (B, 5) int64 as TargetBox."""
    clips = [make_clip(cfg, seed, i) for i in indices]
    frames = np.stack([c.frames for c in clips])
    labels = np.array([c.label for c in clips], dtype=np.int64)
    targets = np.array([tuple(c.target) for c in clips], dtype=np.int64)
    return frames, labels, targets


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8, crf: int = 12) -> None:
    """Encode (T, H, W, 3) uint8 RGB as H.264 (yuv420p) MP4. Low CRF keeps the 1-pixel class texture."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


LABELS_HEADER = ("filename", "label", "class_name", "x", "y", "t", "size", "frames")


def write_clips(
    out: Path, clips: Iterable[tuple[np.ndarray, tuple[object, ...]]], header: tuple[str, ...], fps: int
) -> Path:
    """Encode each (frames, row) as ``clip_000000.mp4`` ... and write ``labels.csv`` (``header``, then the file name
    followed by each row); returns the CSV path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (frames, row) in enumerate(clips):
        name = f"clip_{index:06d}.mp4"
        write_mp4(out / name, frames, fps=fps)
        rows.append((name, *row))
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return labels


def write_dataset(out: Path, cfg: SynthConfig, count: int, seed: int, fps: int = 8) -> Path:
    """``count`` clips of stream ``seed`` as ``clip_000000.mp4`` ... plus ``labels.csv``; returns the CSV path."""
    names = cfg.class_names

    def clips() -> Iterator[tuple[np.ndarray, tuple[object, ...]]]:
        for index in range(count):
            clip = make_clip(cfg, seed, index)
            yield clip.frames, (clip.label, names[clip.label], *clip.target)

    return write_clips(out, clips(), LABELS_HEADER, fps)


__all__ = [
    "SPLIT_SEEDS",
    "SYNTH_PRESETS",
    "SynthClip",
    "SynthConfig",
    "TargetBox",
    "class_patterns",
    "make_batch",
    "make_clip",
    "write_clips",
    "write_dataset",
    "write_mp4",
]
