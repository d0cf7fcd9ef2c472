"""The moving Fashion-MNIST benchmark: real product images moving over clutter, with per-clip difficulty.

Debian's ``dataset-fashion-mnist`` package (MIT licence) installs the 70,000 real 28x28 product images as IDX files
under ``/usr/share/datasets/fashion-mnist/``; they are read with numpy, never downloaded. Train clips use train
images 0 .. 53,999, calibration clips train images 54,000 .. 59,999, test clips the t10k images.

A clip (``num_frames`` x ``size`` x ``size`` RGB) shows one tinted product moving in a straight line (bouncing off
the borders) over a smooth, panning colour background with static grey clutter, among moving distractors cut from
other products with their 7x7 blocks shuffled (fabric-like texture, no class). Every clip draws one of three kinds:
- ``clear``: a large, clean product the low-resolution glance can classify (exit 0);
- ``small``: a small clean product the glance cannot resolve; one well-placed cube can;
- ``degraded``: every frame hides a different part of the product behind a flat occluder, with extra noise and
  blur, and the product is on screen for only part of the clip; cubes on *different* frames add up.
Within a kind, size, occlusion, noise, blur and visibility vary continuously (``FashionConfig`` bounds them).
Fashion-MNIST's own confusable classes (shirt / T-shirt / pullover / coat) add natural hard cases.

Clips are a pure function of ``(split, seed, index)``; each clip has its own ``numpy`` stream and keeps per-frame
ground-truth boxes (``model.data.targets``).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from model.config import FASHION_LABELS
from model.data.synth import write_clips
from model.data.targets import BOX_FIELDS

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CALIBRATION_START = 54_000  # train images from here on are held out for calibration
SPLITS = ("train", "calibration", "test")
KINDS = ("clear", "small", "degraded")
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class MissingDataset(FileNotFoundError):
    """The Fashion-MNIST IDX files are not installed."""


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array: magic 0 0 dtype ndim, big-endian uint32 sizes, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(f"{path}: header says {shape} of {dtype}, file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=2)
def load_split_images(split: str, root: str = str(FASHION_DIR)) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) float32 in [0, 1], labels (N,) int64) of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    prefix = "t10k" if split == "test" else "train"
    folder = Path(root)
    paths = [folder / f"{prefix}-{kind}-idx{nd}-ubyte.gz" for kind, nd in (("images", 3), ("labels", 1))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingDataset(
            f"Fashion-MNIST is not installed ({', '.join(missing)} missing): "
            "install Debian's package with `apt-get install dataset-fashion-mnist` (or `make data`)"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if split == "train":
        images, labels = images[:CALIBRATION_START], labels[:CALIBRATION_START]
    elif split == "calibration":
        images, labels = images[CALIBRATION_START:], labels[CALIBRATION_START:]
    return images.astype(np.float32) / 255.0, labels


@dataclass(frozen=True)
class FashionConfig:
    num_frames: int = 16
    size: int = 112  # frame side in pixels
    kind_shares: tuple[float, float, float] = (0.3, 0.3, 0.4)  # clear, small, degraded
    clear_sizes: tuple[int, int] = (44, 60)  # product side in pixels, inclusive
    small_sizes: tuple[int, int] = (22, 32)
    degraded_sizes: tuple[int, int] = (28, 48)
    occlusion: tuple[float, float] = (0.3, 0.6)  # share of the product box each degraded frame hides
    degraded_noise: tuple[float, float] = (0.06, 0.16)  # extra pixel noise sigma (pixels in [0, 1])
    degraded_blur: tuple[float, float] = (0.0, 1.0)  # Gaussian blur sigma of the product, pixels
    degraded_visible: tuple[int, int] = (8, 16)  # frames the degraded product is on screen, inclusive
    noise: float = 0.03  # base pixel noise sigma of every clip
    max_speed: float = 1.5  # product speed, pixels per frame on each axis
    distractors: tuple[int, int] = (2, 4)  # scrambled-product distractors per clip, inclusive
    clutter: int = 8  # static grey rectangles in the background
    num_classes: int = 10

    def __post_init__(self) -> None:
        if len(self.kind_shares) != len(KINDS) or min(self.kind_shares) < 0 or sum(self.kind_shares) <= 0:
            raise ValueError(f"kind_shares must be {len(KINDS)} non-negative shares with a positive sum")
        for name in ("clear_sizes", "small_sizes", "degraded_sizes"):
            lo, hi = getattr(self, name)
            if not 8 <= lo <= hi <= self.size:
                raise ValueError(f"{name} must satisfy 8 <= low <= high <= size, got {(lo, hi)}")
        lo_v, hi_v = self.degraded_visible
        if not 1 <= lo_v <= hi_v <= self.num_frames:
            raise ValueError(f"degraded_visible must lie in [1, {self.num_frames}]")
        if not 0 <= self.occlusion[0] <= self.occlusion[1] < 1:
            raise ValueError("occlusion must satisfy 0 <= low <= high < 1")
        if self.num_classes != len(FASHION_LABELS):
            raise ValueError(f"Fashion-MNIST has {len(FASHION_LABELS)} classes")

    @property
    def class_names(self) -> tuple[str, ...]:
        return FASHION_LABELS


class Difficulty(NamedTuple):
    kind: str
    size: int  # product side, pixels
    occlusion: float  # mean share of the box hidden per visible frame (0 when clean)
    noise: float  # extra noise sigma
    blur: float  # blur sigma, pixels
    visible_from: int  # first frame on screen
    visible_frames: int


class FashionClip(NamedTuple):
    frames: np.ndarray  # (T, H, W, 3) uint8
    label: int
    boxes: np.ndarray  # (T, 4) int64 (x, y, size, visible)
    difficulty: Difficulty
    image_index: int  # index of the product image within its split


class Mover(NamedTuple):
    """A sprite moving in a straight line and bouncing off the frame's borders (benchmark pixels and frames)."""

    image: np.ndarray  # (28, 28) grey in [0, 1]: the product, or a scrambled one
    tint: np.ndarray  # (3,) float32
    side: int  # pixels at the benchmark's frame size
    x0: float  # start position and speed on each axis: pixels, pixels per frame
    vx: float
    y0: float
    vy: float


class Occluder(NamedTuple):
    start: int  # first row (or column) of the flat strip, in sprite pixels
    depth: int  # rows (or columns) it covers
    grey: float
    columns: bool  # a vertical strip


class Scene(NamedTuple):
    """Everything random about one clip, apart from how it is drawn: the benchmark draws it at ``cfg.size`` on
    ``cfg.num_frames`` frames, ``model.data.realistic`` at any resolution and frame rate."""

    label: int
    image_index: int
    difficulty: Difficulty
    field: np.ndarray  # (5, 5, 3) control points of the smooth colour background
    clutter: tuple[tuple[int, int, int, int, float], ...]  # (x, y, w, h, grey) on the background canvas
    pan: tuple[float, float, float, float]  # the canvas offset: start x, speed x, start y, speed y
    noise_picks: np.ndarray  # (T,) int: the noise-bank frame of each frame
    distractors: tuple[Mover, ...]
    product: Mover
    occluders: dict[int, Occluder]  # frame -> the strip hiding part of the product (degraded clips)
    product_noise: dict[int, int]  # frame -> the noise-bank frame of the product's extra noise (degraded clips)


@functools.lru_cache(maxsize=128)
def _resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of a linear resize with pixel centres aligned (area-like for downscaling)."""
    pos = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    return interpolation_matrix(pos, in_size)


def interpolation_matrix(pos: np.ndarray, in_size: int) -> np.ndarray:
    """(len(pos), in) linear interpolation weights at positions ``pos`` in input pixels (clamped at the borders)."""
    pos = np.clip(pos, 0, in_size - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((len(pos), in_size), dtype=np.float32)
    m[np.arange(len(pos)), lo] += 1 - frac
    m[np.arange(len(pos)), hi] += frac
    return m


@functools.lru_cache(maxsize=256)
def blur_matrix(size: int, sigma_tenths: int) -> np.ndarray:
    """(size, size) Gaussian blur along one axis (rows normalised), sigma in tenths of a pixel."""
    sigma = sigma_tenths / 10
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    m = np.exp(-0.5 * (d / sigma) ** 2).astype(np.float32)
    return m / m.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=4)
def _unit_noise(size: int, count: int = 64) -> np.ndarray:
    """A fixed bank of unit-variance noise frames (count, size, size, 3): fresh normals per clip are the slow part."""
    return np.random.default_rng(11).standard_normal((count, size, size, 3)).astype(np.float32)


def bounce(start: float, velocity: float, high: float, times: np.ndarray) -> np.ndarray:
    """Positions at ``times`` (frames, fractional allowed) moving at ``velocity`` and reflecting off [0, high]."""
    span = max(high, 1e-6)
    folded = np.mod(start + velocity * times, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded)  # (len(times),)


def resize(image: np.ndarray, side: int) -> np.ndarray:
    m = _resize_matrix(side, image.shape[0])  # (side, 28)
    return m @ image @ m.T  # (side, side)


def sprite(gray: np.ndarray, tint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tinted product (s, s, 3) and its opacity (s, s) from a grey image in [0, 1]: the silhouette is opaque, so
    clutter never shows through dark garment pixels, and the garment's own shading stays visible."""
    alpha = np.clip((gray - 0.02) * 12.0, 0.0, 1.0)  # (s, s)
    rgb = (0.08 + 0.92 * gray)[..., None] * tint  # (s, s, 3)
    return rgb, alpha


def _scrambled(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A product image with its 4x4 grid of 7x7 blocks shuffled: texture of a product, no class."""
    blocks = image.reshape(4, 7, 4, 7).transpose(0, 2, 1, 3).reshape(16, 7, 7)
    blocks = blocks[rng.permutation(16)]
    return blocks.reshape(4, 4, 7, 7).transpose(0, 2, 1, 3).reshape(28, 28)


def paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend a sprite whose top-left corner is (x, y), clipped to the frame, in place."""
    height, width = frame.shape[:2]
    s = alpha.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, width), min(y + s, height)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = frame[y0:y1, x0:x1]
    region *= 1 - a
    region += a * rgb[y0 - y : y1 - y, x0 - x : x1 - x]


def draw_difficulty(cfg: FashionConfig, rng: np.random.Generator) -> Difficulty:
    """A clip's kind and degradation, within ``cfg``'s bounds."""
    shares = np.asarray(cfg.kind_shares, dtype=np.float64)
    kind = KINDS[int(rng.choice(len(KINDS), p=shares / shares.sum()))]
    T = cfg.num_frames
    if kind == "clear":
        return Difficulty(kind, int(rng.integers(cfg.clear_sizes[0], cfg.clear_sizes[1] + 1)), 0.0, 0.0, 0.0, 0, T)
    if kind == "small":
        return Difficulty(kind, int(rng.integers(cfg.small_sizes[0], cfg.small_sizes[1] + 1)), 0.0, 0.0, 0.0, 0, T)
    frames = int(rng.integers(cfg.degraded_visible[0], cfg.degraded_visible[1] + 1))
    return Difficulty(
        kind,
        int(rng.integers(cfg.degraded_sizes[0], cfg.degraded_sizes[1] + 1)),
        float(rng.uniform(*cfg.occlusion)),
        float(rng.uniform(*cfg.degraded_noise)),
        float(rng.uniform(*cfg.degraded_blur)),
        int(rng.integers(0, T - frames + 1)),
        frames,
    )


def _mover(image: np.ndarray, side: int, speed: float, frame: int, rng: np.random.Generator) -> Mover:
    """Tint, start and speed of a sprite of ``side`` pixels in a ``frame``-pixel square (the draw order is fixed)."""
    tint = rng.uniform(0.55, 1.0, 3).astype(np.float32)
    x0, vx = rng.uniform(0, frame - side), rng.uniform(-speed, speed)
    y0, vy = rng.uniform(0, frame - side), rng.uniform(-speed, speed)
    return Mover(image, tint, side, float(x0), float(vx), float(y0), float(vy))


def _draw_background(cfg: FashionConfig, rng: np.random.Generator) -> tuple[Any, ...]:
    """(field, clutter, pan, noise picks) of the smooth panning background."""
    S, pad = cfg.size, cfg.size // 2
    field = rng.uniform(0.2, 0.8, (5, 5, 3)).astype(np.float32)
    clutter = []
    for _ in range(cfg.clutter):
        w, h = rng.integers(6, 24, 2)
        x, y = rng.integers(0, S + pad - 24, 2)
        clutter.append((int(x), int(y), int(w), int(h), float(rng.uniform(0.1, 0.9))))
    pan_x0, pan_vx = rng.uniform(0, pad), rng.uniform(-1.0, 1.0)
    pan_y0, pan_vy = rng.uniform(0, pad), rng.uniform(-1.0, 1.0)
    picks = rng.integers(0, len(_unit_noise(S)), cfg.num_frames)
    return field, tuple(clutter), (float(pan_x0), float(pan_vx), float(pan_y0), float(pan_vy)), picks


def draw_scene(cfg: FashionConfig, split: str, seed: int, index: int, root: str = str(FASHION_DIR)) -> Scene:
    """Every random choice of clip ``index`` of the stream ``(split, seed)``, in the benchmark's draw order."""
    images, labels = load_split_images(split, root)
    rng = np.random.default_rng([SPLITS.index(split), seed, index])
    image_index = int(rng.integers(0, len(images)))
    diff = draw_difficulty(cfg, rng)
    S, s = cfg.size, diff.size
    field, clutter, pan, picks = _draw_background(cfg, rng)
    distractors = []
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        other = _scrambled(images[int(rng.integers(0, len(images)))], rng)
        side = int(rng.integers(max(8, s // 2), s + 1))
        distractors.append(_mover(other, side, 2.5, S, rng))
    product = _mover(images[image_index], s, cfg.max_speed, S, rng)
    occluders, product_noise = {}, {}
    for t in range(diff.visible_from, diff.visible_from + diff.visible_frames):
        if diff.occlusion > 0:
            share = float(np.clip(diff.occlusion + rng.uniform(-0.1, 0.1), 0.05, 0.9))
            depth = max(1, round(share * s))
            start, grey = int(rng.integers(0, s - depth + 1)), float(rng.uniform(0.2, 0.8))
            occluders[t] = Occluder(start, depth, grey, bool(rng.integers(0, 2)))
        if diff.noise > 0:
            product_noise[t] = int(rng.integers(0, len(_unit_noise(S))))
    return Scene(int(labels[image_index]), image_index, diff, field, clutter, pan, picks, tuple(distractors),
                 product, occluders, product_noise)


def product_sprite(scene: Scene, side: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The product at ``side`` pixels, blurred as the difficulty says (sigma scaled by ``scale``): (rgb, alpha)."""
    gray = resize(scene.product.image, side)  # (side, side)
    blur = scene.difficulty.blur * scale
    if scene.difficulty.blur > 0.05:
        b = blur_matrix(side, round(blur * 10))
        gray = b @ gray @ b.T
    return sprite(gray, scene.product.tint)


def occlude(rgb: np.ndarray, alpha: np.ndarray, strip: Occluder, scale: float = 1.0) -> None:
    """Cover the strip (sprite pixels times ``scale``) with flat grey, in place."""
    lo, hi = round(strip.start * scale), round((strip.start + strip.depth) * scale)
    if strip.columns:
        rgb[:, lo:hi], alpha[:, lo:hi] = strip.grey, 1.0
    else:
        rgb[lo:hi], alpha[lo:hi] = strip.grey, 1.0


def _background(cfg: FashionConfig, scene: Scene) -> np.ndarray:
    """Smooth colour field panning slowly, static grey clutter, base noise: (T, S, S, 3) float32."""
    S, T = cfg.size, cfg.num_frames
    pad = S // 2
    m = _resize_matrix(S + pad, 5)  # (S+pad, 5)
    big = np.ascontiguousarray((m @ scene.field.transpose(2, 0, 1) @ m.T).transpose(1, 2, 0))  # (S+pad, S+pad, 3)
    for x, y, w, h, grey in scene.clutter:
        big[y : y + h, x : x + w] = grey
    steps = np.arange(T)
    ox = bounce(scene.pan[0], scene.pan[1], pad, steps).astype(int)
    oy = bounce(scene.pan[2], scene.pan[3], pad, steps).astype(int)
    bank = _unit_noise(S)
    picks = scene.noise_picks
    return np.stack([big[oy[t] : oy[t] + S, ox[t] : ox[t] + S] + cfg.noise * bank[picks[t]] for t in range(T)])


def scene_boxes(cfg: FashionConfig, scene: Scene) -> np.ndarray:
    """The product's box on each benchmark frame: (T, 4) int64 (x, y, size, visible), as ``model.data.targets``."""
    T, s, p = cfg.num_frames, scene.difficulty.size, scene.product
    boxes = np.zeros((T, len(BOX_FIELDS)), dtype=np.int64)
    boxes[:, 0] = bounce(p.x0, p.vx, cfg.size - s, np.arange(T)).astype(int)
    boxes[:, 1] = bounce(p.y0, p.vy, cfg.size - s, np.arange(T)).astype(int)
    boxes[:, 2] = s
    visible = scene.difficulty.visible_from
    boxes[visible : visible + scene.difficulty.visible_frames, 3] = 1
    return boxes


def make_clip(cfg: FashionConfig, split: str, seed: int, index: int, root: str = str(FASHION_DIR)) -> FashionClip:
    """Clip ``index`` of the stream ``(split, seed)``: deterministic, independent of every other clip."""
    scene = draw_scene(cfg, split, seed, index, root)
    diff = scene.difficulty
    S, T, s = cfg.size, cfg.num_frames, diff.size
    steps = np.arange(T)
    video = _background(cfg, scene)  # (T, S, S, 3)
    for mover in scene.distractors:
        d_rgb, d_alpha = sprite(resize(mover.image, mover.side), mover.tint)
        dx = bounce(mover.x0, mover.vx, S - mover.side, steps).astype(int)
        dy = bounce(mover.y0, mover.vy, S - mover.side, steps).astype(int)
        for t in range(T):
            paste(video[t], d_rgb, d_alpha, int(dx[t]), int(dy[t]))
    rgb, alpha = product_sprite(scene, s)
    boxes = scene_boxes(cfg, scene)
    xs, ys = boxes[:, 0], boxes[:, 1]
    bank = _unit_noise(S)
    for t in range(diff.visible_from, diff.visible_from + diff.visible_frames):
        f_rgb, f_alpha = rgb, alpha
        if t in scene.occluders:
            f_rgb, f_alpha = rgb.copy(), alpha.copy()
            occlude(f_rgb, f_alpha, scene.occluders[t])
        paste(video[t], f_rgb, f_alpha, int(xs[t]), int(ys[t]))
        if t in scene.product_noise:
            x, y = int(xs[t]), int(ys[t])
            video[t, y : y + s, x : x + s] += diff.noise * bank[scene.product_noise[t], y : y + s, x : x + s]
    frames = (np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # (T, S, S, 3)
    return FashionClip(frames, scene.label, boxes, diff, scene.image_index)


LABELS_HEADER = ("filename", "label", "class_name", *Difficulty._fields, "image_index", "boxes")


def label_row(label: int, difficulty: Difficulty, image_index: int, boxes: np.ndarray) -> tuple[object, ...]:
    """A ``labels.csv`` row after the file name (``LABELS_HEADER``): difficulty rounded, boxes as JSON."""
    diff = tuple(round(v, 4) if isinstance(v, float) else v for v in difficulty)
    return (label, FASHION_LABELS[label], *diff, image_index, json.dumps(boxes.tolist(), separators=(",", ":")))


def write_dataset(
    out: Path, cfg: FashionConfig, count: int, split: str, seed: int, fps: int = 8, root: str = str(FASHION_DIR)
) -> Path:
    """``count`` clips as ``clip_000000.mp4`` ... plus ``labels.csv`` (difficulty and per-frame boxes as JSON)."""

    def clips() -> Iterator[tuple[np.ndarray, tuple[object, ...]]]:
        for index in range(count):
            clip = make_clip(cfg, split, seed, index, root)
            yield clip.frames, label_row(clip.label, clip.difficulty, clip.image_index, clip.boxes)

    return write_clips(out, clips(), LABELS_HEADER, fps)
