"""Realistic uploads with ground truth: the moving Fashion-MNIST test scenes at phone and web sizes and frame rates.

A clip of preset P and index i is the benchmark clip ``(split, seed, i)`` (``model.data.fashion``: same product,
difficulty, background, distractors and motion, drawn from the same ``Scene``) rendered at P's resolution and
timeline, then encoded with the encoders PyAV's wheel carries (libx264, libx265, libvpx-vp9, libsvtav1):

- space: the benchmark's square is the frame's centre square (shorter side), the background canvas and its clutter
  continue into the margins; sprites are resampled from the 28 x 28 product images at the frame's scale (sharp,
  not upscaled pixels), positions are continuous;
- time: the benchmark's T frames are T equal slots of the video; motion is continuous, and what changes per frame
  in the benchmark (occluders, visibility, noise) changes per slot, so the frame the decoder samples at the centre
  of segment k shows the benchmark's frame k;
- noise is drawn at the benchmark's resolution and enlarged, so that once the decoder scales the frame down the
  model sees the benchmark's noise level.

``write_realistic`` writes ``<out>/<preset>/clip_000000.<ext>`` ... and a ``labels.csv`` per preset, in the
benchmark's format (boxes in benchmark pixels and frames).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from model.config import FASHION_LABELS
from model.data.fashion import (
    FASHION_DIR,
    LABELS_HEADER,
    FashionConfig,
    Scene,
    bounce,
    draw_scene,
    interpolation_matrix,
    label_row,
    occlude,
    paste,
    product_sprite,
    resize,
    scene_boxes,
    sprite,
)
from model.video_encode import encode_frames

Codec = Literal["h264", "hevc", "vp9", "av1"]
SUFFIXES: dict[Codec, str] = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "av1": "mp4"}
NOISE_BANK = 64  # scene-resolution noise frames, picked per slot as the benchmark picks its own


@dataclass(frozen=True)
class RealisticPreset:
    name: str
    width: int  # displayed frame, pixels (a rotated preset stores it turned back)
    height: int
    fps: int
    seconds: float
    gop: int  # keyframe interval in frames
    codec: Codec = "h264"
    bframes: bool = True  # the encoder's default B-frames (H.264, HEVC), or none
    rotation: int = 0  # display rotation metadata, counter-clockwise degrees (phones filming upright)

    @property
    def frames(self) -> int:
        return max(1, round(self.fps * self.seconds))

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.codec]

    @property
    def keyframe_every_s(self) -> float:
        return self.gop / self.fps

    def encoder(self) -> tuple[str, dict[str, str]]:
        """PyAV encoder name and options: x264/x265 at ``veryfast`` (CRF 23/28), VP9 real-time, SVT-AV1 preset 12;
        a fixed keyframe interval (no scene cuts)."""
        g = str(self.gop)
        if self.codec == "h264":
            return "libx264", {"preset": "veryfast", "crf": "23", "keyint_min": g, "sc_threshold": "0",
                               **({} if self.bframes else {"bf": "0"})}
        if self.codec == "hevc":
            params = f"keyint={g}:min-keyint={g}:scenecut=0:log-level=error" + ("" if self.bframes else ":bframes=0")
            return "libx265", {"preset": "veryfast", "crf": "28", "x265-params": params}
        if self.codec == "vp9":
            return "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32", "b": "0",
                                  "keyint_min": g}
        return "libsvtav1", {"preset": "12", "crf": "40", "svtav1-params": "scd=0"}

    def shortened(self, seconds: float, height: int | None = None) -> RealisticPreset:
        """The same codec, frame rate, GOP and B-frames at ``seconds`` (and a smaller frame, ``height`` on the shorter
        side), named apart (``<name>~<seconds>s[~<height>p]``): quick runs and tests."""
        scale = 1.0 if height is None else height / min(self.width, self.height)
        width, tall = _even(self.width * scale), _even(self.height * scale)
        name = f"{self.name}~{seconds:g}s" + ("" if height is None else f"~{height}p")
        return dataclasses.replace(self, name=name, seconds=seconds, width=width, height=tall)


REALISTIC_PRESETS: dict[str, RealisticPreset] = {
    p.name: p
    for p in (
        RealisticPreset("480p24-5s-gop30-h264", 854, 480, 24, 5, 30),
        RealisticPreset("480p30-10s-gop30-h264-nob", 854, 480, 30, 10, 30, bframes=False),
        RealisticPreset("720p30-10s-gop30-h264", 1280, 720, 30, 10, 30),
        RealisticPreset("720p30-10s-gop250-h264", 1280, 720, 30, 10, 250),
        RealisticPreset("720p60-10s-gop60-h264-nob", 1280, 720, 60, 10, 60, bframes=False),
        RealisticPreset("720p30-10s-gop30-h264-rot90", 720, 1280, 30, 10, 30, rotation=90),
        RealisticPreset("720p30-10s-gop60-hevc", 1280, 720, 30, 10, 60, codec="hevc"),
        RealisticPreset("720p30-10s-gop30-vp9", 1280, 720, 30, 10, 30, codec="vp9", bframes=False),
        RealisticPreset("480p30-5s-gop60-av1", 854, 480, 30, 5, 60, codec="av1", bframes=False),
        RealisticPreset("1080p30-10s-gop60-h264", 1920, 1080, 30, 10, 60),
        RealisticPreset("1080p60-30s-gop60-h264", 1920, 1080, 60, 30, 60),
        RealisticPreset("1080p24-30s-gop250-h264", 1920, 1080, 24, 30, 250),
        RealisticPreset("720p30-600s-gop60-h264", 1280, 720, 30, 600, 60),
    )
}


def _even(value: float) -> int:
    """A frame side for yuv420p: even, at least 16."""
    return max(16, 2 * round(value / 2))


def parse_presets(text: str) -> tuple[RealisticPreset, ...]:
    """``all`` or a comma list of preset names."""
    names = list(REALISTIC_PRESETS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REALISTIC_PRESETS]
    if unknown or not names:
        raise ValueError(f"unknown realistic preset(s) {unknown}; choose from: all, {', '.join(REALISTIC_PRESETS)}")
    return tuple(REALISTIC_PRESETS[n] for n in names)


@functools.lru_cache(maxsize=4)
def _noise_bank(rows: int, cols: int) -> np.ndarray:
    """(NOISE_BANK, rows, cols, 3) unit-variance noise at the benchmark's resolution, fixed."""
    return np.random.default_rng(11).standard_normal((NOISE_BANK, rows, cols, 3)).astype(np.float32)


def _enlarge(image: np.ndarray, scale: float, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour enlargement by ``scale`` of an (r, c, ...) image, cut to (rows, cols, ...)."""
    r = np.bincount(np.minimum((np.arange(rows) / scale).astype(int), image.shape[0] - 1), minlength=image.shape[0])
    c = np.bincount(np.minimum((np.arange(cols) / scale).astype(int), image.shape[1] - 1), minlength=image.shape[1])
    return np.repeat(np.repeat(image, r, axis=0), c, axis=1)  # (rows, cols, ...)


class SceneRenderer:
    """A scene drawn at ``width`` x ``height`` on ``count`` frames; ``frame(j)`` is frame j, (H, W, 3) uint8."""

    def __init__(self, cfg: FashionConfig, scene: Scene, width: int, height: int, count: int) -> None:
        self.cfg, self.scene, self.width, self.height = cfg, scene, width, height
        S, T = cfg.size, cfg.num_frames
        self.k = k = min(width, height) / S  # frame pixels per benchmark pixel
        self.mx, self.my = (width / k - S) / 2, (height / k - S) / 2  # benchmark pixels beside the centre square
        self.times = (np.arange(count) + 0.5) * T / count - 0.5  # (count,) benchmark frame time of each frame
        self.slots = np.clip(np.rint(self.times), 0, T - 1).astype(int)  # (count,) the benchmark frame it shows
        self.canvas = self._canvas()
        pad = S // 2
        self.pan_x = np.rint(bounce(scene.pan[0], scene.pan[1], pad, self.times) * k).astype(int)  # (count,)
        self.pan_y = np.rint(bounce(scene.pan[2], scene.pan[3], pad, self.times) * k).astype(int)
        self.noise_rows, self.noise_cols = math.ceil(height / k) + 1, math.ceil(width / k) + 1
        self.bank = _noise_bank(self.noise_rows, self.noise_cols)
        self.movers = [self._mover(m.image, m.side, m.tint, m.x0, m.vx, m.y0, m.vy) for m in scene.distractors]
        side = max(1, round(scene.difficulty.size * k))
        self.product = product_sprite(scene, side, k)
        self.product_rgb = self.product[0] * 255.0  # (side, side, 3)
        p = scene.product
        self.product_xy = self._track(p.x0, p.vx, p.y0, p.vy, scene.difficulty.size)
        self._slot: tuple[int, np.ndarray] | None = None

    def _canvas(self) -> np.ndarray:
        """The panning background (colour field and clutter) at frame scale, in 0..255 (+0.5 for rounding)."""
        S, k = self.cfg.size, self.k
        pad = S // 2
        rows = self.height + round(pad * k) + 2
        cols = self.width + round(pad * k) + 2
        ys = ((np.arange(rows) + 0.5) / k - self.my) * 5 / (S + pad) - 0.5  # field control-point coordinates
        xs = ((np.arange(cols) + 0.5) / k - self.mx) * 5 / (S + pad) - 0.5
        my, mx = interpolation_matrix(ys, 5), interpolation_matrix(xs, 5)  # (rows, 5), (cols, 5)
        canvas = np.ascontiguousarray((my @ self.scene.field.transpose(2, 0, 1) @ mx.T).transpose(1, 2, 0))
        for x, y, w, h, grey in self.scene.clutter:
            x0, x1 = round((x + self.mx) * k), round((x + w + self.mx) * k)
            y0, y1 = round((y + self.my) * k), round((y + h + self.my) * k)
            canvas[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = grey
        canvas *= 255.0
        canvas += 0.5
        return canvas  # (rows, cols, 3)

    def _track(self, x0: float, vx: float, y0: float, vy: float, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame-pixel top-left corners of a bouncing sprite on every frame: ((count,), (count,))."""
        high = self.cfg.size - side
        xs = np.rint((bounce(x0, vx, high, self.times) + self.mx) * self.k).astype(int)
        ys = np.rint((bounce(y0, vy, high, self.times) + self.my) * self.k).astype(int)
        return xs, ys

    def _mover(
        self, image: np.ndarray, side: int, tint: np.ndarray, x0: float, vx: float, y0: float, vy: float
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        rgb, alpha = sprite(resize(image, max(1, round(side * self.k))), tint)
        return rgb * 255.0, alpha, self._track(x0, vx, y0, vy, side)

    def _noise(self, slot: int) -> np.ndarray:
        """The slot's base noise at frame size, in 0..255 units (one slot's worth kept at a time)."""
        if self._slot is None or self._slot[0] != slot:
            small = self.bank[int(self.scene.noise_picks[slot]) % NOISE_BANK] * (self.cfg.noise * 255.0)
            self._slot = (slot, _enlarge(small, self.k, self.height, self.width))
        return self._slot[1]

    def frame(self, j: int) -> np.ndarray:
        """Frame ``j``: (H, W, 3) uint8 RGB."""
        t = int(self.slots[j])
        oy, ox = int(self.pan_y[j]), int(self.pan_x[j])
        out = self.canvas[oy : oy + self.height, ox : ox + self.width] + self._noise(t)  # (H, W, 3)
        for rgb, alpha, (xs, ys) in self.movers:
            paste(out, rgb, alpha, int(xs[j]), int(ys[j]))
        diff = self.scene.difficulty
        if diff.visible_from <= t < diff.visible_from + diff.visible_frames:
            self._draw_product(out, j, t)
        np.clip(out, 0.0, 255.0, out=out)
        return out.astype(np.uint8)

    def _draw_product(self, out: np.ndarray, j: int, t: int) -> None:
        rgb, alpha = self.product_rgb, self.product[1]
        strip = self.scene.occluders.get(t)
        if strip is not None:
            rgb, alpha = rgb.copy(), alpha.copy()
            occlude(rgb, alpha, strip._replace(grey=strip.grey * 255.0), self.k)
        x, y = int(self.product_xy[0][j]), int(self.product_xy[1][j])
        paste(out, rgb, alpha, x, y)
        pick = self.scene.product_noise.get(t)
        if pick is not None:  # the benchmark's extra noise over the product's box, at its resolution
            s, side = self.scene.difficulty.size, alpha.shape[0]
            patch = self.bank[pick % NOISE_BANK, :s, :s] * (self.scene.difficulty.noise * 255.0)  # (s, s, 3)
            noise = _enlarge(patch, self.k, side, side)  # (side, side, 3)
            y0, x0 = max(y, 0), max(x, 0)
            region = out[y0 : y + side, x0 : x + side]
            region += noise[y0 - y : y0 - y + region.shape[0], x0 - x : x0 - x + region.shape[1]]


def render_frames(cfg: FashionConfig, scene: Scene, preset: RealisticPreset) -> Iterator[np.ndarray]:
    """The preset's frames as stored: (H, W, 3) uint8 RGB each (turned back by the rotation metadata)."""
    renderer = SceneRenderer(cfg, scene, preset.width, preset.height, preset.frames)
    turns = -(preset.rotation // 90) % 4
    for j in range(preset.frames):
        image = renderer.frame(j)
        yield np.rot90(image, k=turns) if turns else image  # (W, H, 3) for quarter turns


def write_realistic(
    out: Path,
    presets: Sequence[RealisticPreset],
    count: int,
    seed: int = 2,
    split: str = "test",
    cfg: FashionConfig = FashionConfig(),
    root: str = str(FASHION_DIR),
) -> list[Path]:
    """``count`` scenes per preset as ``<out>/<preset>/clip_000000.<ext>`` ... plus a ``labels.csv`` per preset
    (the benchmark's format); returns the CSV paths."""
    written = []
    for preset in presets:
        folder = out / preset.name
        folder.mkdir(parents=True, exist_ok=True)
        codec, options = preset.encoder()
        stored = (preset.height, preset.width) if preset.rotation % 180 else (preset.width, preset.height)
        rows = []
        for index in range(count):
            scene = draw_scene(cfg, split, seed, index, root)
            name = f"clip_{index:06d}.{preset.suffix}"
            frames = render_frames(cfg, scene, preset)
            encode_frames(folder / name, frames, stored, codec, preset.fps, preset.rotation, preset.gop, options)
            rows.append((name, *label_row(scene.label, scene.difficulty, scene.image_index, scene_boxes(cfg, scene))))
        labels = folder / "labels.csv"
        with labels.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(LABELS_HEADER)
            writer.writerows(rows)
        written.append(labels)
    return written


# ---------------------------------------------------------------------------------------------- long scene videos
TIMELINE_HEADER = ("scene", "start_s", "end_s", "label", "class_name", "kind", "image_index")


@dataclass(frozen=True)
class TimelineScene:
    index: int  # the benchmark clip (split, seed, index) this scene draws
    start_s: float
    end_s: float
    label: int


def timeline_plan(total_s: float, seed: int, min_s: int = 2, max_s: int = 12) -> list[tuple[float, float]]:
    """Scene boundaries: whole-second durations drawn in ``min_s`` .. ``max_s`` until ``total_s`` (the last one cut
    to fit), so that some boundaries fall inside 2 s segments and some on their edges."""
    rng = np.random.default_rng([7, seed])
    spans, at = [], 0.0
    while at < total_s - 1e-9:
        end = min(total_s, at + int(rng.integers(min_s, max_s + 1)))
        spans.append((at, end))
        at = end
    return spans


def write_timeline(
    out: Path, preset: RealisticPreset, period_s: float = 2.0, seed: int = 2, split: str = "test",
    cfg: FashionConfig = FashionConfig(), root: str = str(FASHION_DIR),
) -> tuple[Path, Path]:
    """One long video of ``preset``'s size, rate and length made of scenes with different labels and difficulties
    (the benchmark's test scenes 0, 1, 2 ... in turn), and ``<name>.scenes.csv`` with each scene's boundaries.

    Within a scene the benchmark clip's timeline repeats every ``period_s`` of absolute time (its T slots in each
    period), so a segment of ``period_s`` starting on a multiple of it sees the benchmark clip of its scene, as the
    realistic single clips do; a segment that straddles a boundary sees parts of two scenes."""
    out.mkdir(parents=True, exist_ok=True)
    spans = timeline_plan(preset.seconds, seed)
    scenes = [draw_scene(cfg, split, seed, i, root) for i in range(len(spans))]
    per_period = max(1, round(period_s * preset.fps))

    def frames() -> Iterator[np.ndarray]:
        for (start, end), scene in zip(spans, scenes, strict=True):
            renderer = SceneRenderer(cfg, scene, preset.width, preset.height, per_period)
            for j in range(round(start * preset.fps), round(end * preset.fps)):
                yield renderer.frame(j % per_period)

    video = out / f"{preset.name}.timeline.{preset.suffix}"
    codec, options = preset.encoder()
    encode_frames(video, frames(), (preset.width, preset.height), codec, preset.fps, 0, preset.gop, options)
    labels = out / f"{preset.name}.scenes.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TIMELINE_HEADER)
        for i, ((start, end), scene) in enumerate(zip(spans, scenes, strict=True)):
            writer.writerow((i, start, end, scene.label, FASHION_LABELS[scene.label], scene.difficulty.kind,
                             scene.image_index))
    return video, labels


def read_timeline(labels: Path) -> list[TimelineScene]:
    """The scenes of a ``write_timeline`` labels file."""
    with labels.open(newline="") as fh:
        return [TimelineScene(int(r["scene"]), float(r["start_s"]), float(r["end_s"]), int(r["label"]))
                for r in csv.DictReader(fh)]
