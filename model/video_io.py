"""The decoder's ground floor: its options and errors, opening an untrusted file, and turning a frame into pixels.

Shared by the planner (``model.video_plan``), the decoder (``model.video``) and the old decoder kept for
comparison (``model.video_legacy``).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Demuxers that read single still images; such a file is "not a video" even though FFmpeg opens it.
IMAGE_FORMATS = frozenset(
    {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe", "jpegls_pipe",
     "j2k_pipe", "qoi_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "pbm_pipe", "svg_pipe", "dpx_pipe", "exr_pipe"}
)
# Containers whose demuxers seek exactly by timestamp (seeking elsewhere, e.g. MPEG-TS, is byte-based and loose).
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})

DecodeCode = Literal[
    "not_a_video", "no_video_stream", "undecodable", "zero_frames", "too_large", "too_long", "frame_too_large",
    "decode_timeout",
]
# exact: the frames at the T target times, decoding only them and the reference frames they need;
# fast: per target the cheapest frame within ``tolerance_s`` (a keyframe, else a reference frame), else exact;
# legacy: the decoder before skipping (every frame of every GOP it passes); benchmarks and tests only.
Sampling = Literal["exact", "fast", "legacy"]
SAMPLINGS: tuple[Sampling, ...] = ("exact", "fast", "legacy")

Source = str | os.PathLike[str] | bytes  # a file path, or the whole file in memory


class DecodeError(Exception):
    """A file that cannot become a clip; ``code`` is stable (the HTTP layer maps it), ``str`` is for humans."""

    def __init__(self, code: DecodeCode, message: str) -> None:
        super().__init__(message)
        self.code: DecodeCode = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return (DecodeError, (self.code, self.message))


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost, and how it samples (the limits keep their codes in every sampling)."""

    max_bytes: int = 256 * 1024 * 1024  # file size
    max_pixels_per_frame: int = 4096 * 2160  # coded width x height
    max_duration_s: float = 600.0  # stream duration
    max_decode_s: float = 30.0  # wall time for one decode (checked between packets and frames)
    max_frames: int = 100_000  # packets in the video stream (bounds the index)
    threads: int = 1  # FFmpeg decoder threads (the service parallelises across worker processes instead)
    method: Literal["auto", "seek", "scan"] = "auto"  # how the decoder crosses the packets it does not need
    sampling: Sampling = "exact"
    tolerance_s: float = 0.5  # fast sampling: the largest time offset a frame may take from its target

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not self.tolerance_s >= 0:
            raise ValueError(f"tolerance_s must be >= 0, got {self.tolerance_s}")


def check_source(source: Source, limits: DecodeLimits) -> None:
    """An empty file is not a video; one over ``limits.max_bytes`` is too large (before anything opens it)."""
    nbytes = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if nbytes == 0:
        raise DecodeError("not_a_video", "the file is empty")
    if nbytes > limits.max_bytes:
        raise DecodeError("too_large", f"the file has {nbytes} bytes; the limit is {limits.max_bytes}")


def open_container(source: Source) -> av.container.InputContainer:
    """The file opened for reading; a file FFmpeg cannot open, or a still image, is a ``DecodeError``."""
    try:
        file: Any = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        container = av.open(file, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        kind = container_kind(source)
        if kind is not None:  # e.g. an MP4 cut before its index (moov): a video, but a broken one
            raise DecodeError("undecodable", f"a truncated or corrupt {kind} file (FFmpeg: {reason})") from exc
        raise DecodeError("not_a_video", f"not a recognised video container (FFmpeg: {reason})") from exc
    if container.format.name in IMAGE_FORMATS:
        name = container.format.name
        container.close()
        raise DecodeError("not_a_video", f"a still image ({name}), not a video")
    return container


def container_kind(source: Source) -> str | None:
    """The container family named by the file's first bytes (magic numbers), or None."""
    if isinstance(source, bytes):
        head = source[:12]
    else:
        with Path(source).open("rb") as fh:
            head = fh.read(12)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "MP4/QuickTime"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[:3] == b"FLV":
        return "FLV"
    return None


def video_stream(container: av.container.InputContainer, limits: DecodeLimits) -> av.video.stream.VideoStream:
    """The first video stream, its decoder set up within the limits."""
    if not container.streams.video:
        kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
        raise DecodeError("no_video_stream", f"the file has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.width * ctx.height > limits.max_pixels_per_frame:
        raise DecodeError(
            "frame_too_large", f"frames are {ctx.width}x{ctx.height}; the limit is {limits.max_pixels_per_frame} pixels"
        )
    ctx.thread_count = limits.threads
    ctx.thread_type = "AUTO" if limits.threads != 1 else "SLICE"
    # FFmpeg itself refuses to allocate a larger frame (a stream may change size mid-way; the header is not enough)
    ctx.options = {**ctx.options, "max_pixels": str(limits.max_pixels_per_frame)}
    return stream


def seekable(container: av.container.InputContainer) -> bool:
    """Containers whose demuxers seek exactly by timestamp (MP4, Matroska, WebM)."""
    return any(name in SEEKABLE_FORMATS for name in container.format.name.split(","))


def check_time(started: float, limits: DecodeLimits) -> None:
    if time.monotonic() - started > limits.max_decode_s:
        raise DecodeError("decode_timeout", f"decoding took longer than {limits.max_decode_s:.1f} s")


def check_frame(frame: av.VideoFrame, started: float, limits: DecodeLimits) -> None:
    """Every decoded frame: within the wall-time limit, and within the pixel limit (the stream header only tells
    the first frame's size; a raw stream may switch to a larger one mid-way)."""
    check_time(started, limits)
    if frame.width * frame.height > limits.max_pixels_per_frame:
        raise DecodeError(
            "frame_too_large",
            f"a frame is {frame.width}x{frame.height}; the limit is {limits.max_pixels_per_frame} pixels",
        )


def to_rgb(frame: av.VideoFrame, size: int, scaler: VideoReformatter | None = None) -> np.ndarray:
    """Scale in libswscale so the displayed shorter side is ``size``, apply rotation, centre-crop: (size, size, 3).

    ``scaler``: a reformatter kept across the frames of a clip, so that libswscale reuses its context."""
    rotation = round((frame.rotation or 0) / 90.0) % 4  # counter-clockwise quarter turns for display
    width, height = frame.width, frame.height
    if width < 1 or height < 1:
        raise DecodeError("undecodable", f"a decoded frame has size {width}x{height}")
    scale = size / min(width, height)
    out_w, out_h = max(size, round(width * scale)), max(size, round(height * scale))
    scaler = scaler or VideoReformatter()
    rgb = scaler.reformat(frame, out_w, out_h, "rgb24", interpolation="AREA").to_ndarray()  # (h, w, 3)
    if rotation:
        rgb = np.rot90(rgb, k=rotation)  # (w, h, 3) for quarter turns
    top = (rgb.shape[0] - size) // 2
    left = (rgb.shape[1] - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])  # (size, size, 3)
