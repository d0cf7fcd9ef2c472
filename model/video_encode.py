"""Writing frames as a video file with PyAV: for tests, tools, the realistic corpus and the start-up self-test."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np


def encode_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    codec: str = "libx264",
    fps: int = 8,
    rotation: int = 0,
    gop: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pix_fmt: str | None = None,
) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as a video (container from the file suffix); for tests and tools.

    ``rotation`` stores a display-matrix rotation (counter-clockwise degrees, as ``VideoFrame.rotation`` reads it).
    """
    size = (int(frames.shape[2]), int(frames.shape[1]))
    return encode_frames(path, frames, size, codec, fps, rotation, gop, options, container_options, pix_fmt)


def encode_frames(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    codec: str = "libx264",
    fps: int = 8,
    rotation: int = 0,
    gop: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    pix_fmt: str | None = None,
) -> Path:
    """``encode_video`` for frames that arrive one at a time ((H, W, 3) uint8 RGB each, ``size`` = (W, H)): a long
    video is never held in memory whole."""
    out = Path(path)
    pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    with av.open(str(out), mode="w", options=container_options or {}) as container:
        stream: av.video.stream.VideoStream = container.add_stream(codec, rate=fps, options=options or {})  # type: ignore[assignment]
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    return out
