"""Writing frames as a video file with PyAV: for tests, tools and the service's start-up self-test."""

from __future__ import annotations

import os
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
    out = Path(path)
    pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
    with av.open(str(out), mode="w", options=container_options or {}) as container:
        stream: av.video.stream.VideoStream = container.add_stream(codec, rate=fps, options=options or {})  # type: ignore[assignment]
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))
    return out
