"""Real encoded test videos (PyAV, through the project's ``model.video.encode_video``) for the decode benchmark
and load-test corpora."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.video import encode_video


@dataclass(frozen=True)
class EncodeSpec:
    name: str  # e.g. "h264-gop250"
    codec: str  # PyAV encoder name: libx264, libvpx-vp9, ...
    container: str  # file suffix: mp4, webm, mkv
    gop: int  # keyframe interval in frames
    pix_fmt: str = "yuv420p"


# The decode benchmark's formats: H.264 with short and long GOPs (the seek-vs-single-pass trade-off), VP9.
DECODE_SPECS = (
    EncodeSpec("h264-gop30", "libx264", "mp4", 30),
    EncodeSpec("h264-gop250", "libx264", "mp4", 250),
    EncodeSpec("vp9-gop30", "libvpx-vp9", "webm", 30),
)


def moving_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, H, W, 3) uint8: a textured background with a moving bright square (compresses like real video)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(xx / 7.0 + seed) * 40 + np.cos(yy / 5.0) * 40 + 128).astype(np.float32)  # (H, W)
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)  # (H, W, 3)
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    side = max(4, min(height, width) // 6)
    for i in range(count):
        img = base[..., None] + noise + i  # (H, W, 3)
        y = int((height - side) * (0.5 + 0.4 * np.sin(i / 9.0)))
        x = int((width - side) * (i / max(count - 1, 1)))
        img[y : y + side, x : x + side] = (250, 60 + (seed * 37) % 180, 40)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def encode_spec(path: str | Path, frames: np.ndarray, spec: EncodeSpec, fps: int = 30) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to ``path`` with ``spec``'s codec and keyframe interval."""
    options = {
        "libx264": {"preset": "veryfast", "keyint_min": str(spec.gop), "sc_threshold": "0"},
        "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    }.get(spec.codec, {})
    return encode_video(path, frames, codec=spec.codec, fps=fps, gop=spec.gop, options=options, pix_fmt=spec.pix_fmt)
