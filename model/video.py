"""The project's one video decoder: a file -> T uniformly sampled RGB frames, resized and centre-cropped.

Used by training (class folders of video files) and by the service's decode workers, so both see the same
pixels. Decoding is PyAV (FFmpeg):

1. an index pass demuxes the video stream without decoding (cheap) to learn every frame's timestamp and the
   keyframe positions, so that durations are exact even when the container's metadata is missing or wrong;
2. T target times at the centres of T equal segments pick T frames (the nearest frame at or after each);
3. a cost model picks seek-per-target (pays when keyframes are frequent) or one sequential pass (long GOPs:
   seeking would re-decode a whole GOP per target); both return the same frames;
4. only the picked frames are converted, in libswscale, straight to the scaled size (shorter side = ``size``,
   rotation metadata applied), then centre-cropped to ``size`` x ``size``.

Untrusted input: every failure is a ``DecodeError`` with a stable ``code``. FFmpeg can still crash the process on
some malformed files (PyAV #2344), which is why the service runs this in worker processes.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from model.video_encode import encode_video

# Demuxers that read single still images; such a file is "not a video" even though FFmpeg opens it.
IMAGE_FORMATS = frozenset(
    {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe", "jpegls_pipe",
     "j2k_pipe", "qoi_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "pbm_pipe", "svg_pipe", "dpx_pipe", "exr_pipe"}
)
# Containers whose demuxers seek exactly by timestamp (seeking elsewhere, e.g. MPEG-TS, is byte-based and loose).
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})
UNTIMED_FORMATS = frozenset({"avi"})
# Frames decoded per seek, on top of the frames between the keyframe and the target (flush + demuxer restart).
SEEK_OVERHEAD_FRAMES = 8

DecodeCode = Literal[
    "not_a_video", "no_video_stream", "undecodable", "zero_frames", "too_large", "too_long", "frame_too_large",
    "decode_timeout",
]


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
    max_bytes: int = 256 * 1024 * 1024  # file size
    max_pixels_per_frame: int = 4096 * 2160  # coded width x height
    max_duration_s: float = 600.0  # stream duration
    max_decode_s: float = 30.0  # wall time for one decode (checked between frames)
    max_frames: int = 100_000  # packets in the video stream (bounds the index)
    threads: int = 1  # FFmpeg decoder threads (the service parallelises across worker processes instead)
    method: Literal["auto", "seek", "scan"] = "auto"  # seek per target, one sequential scan, or cost-based


@dataclass(frozen=True)
class ClipPlan:
    """What the index pass found and what the decode will fetch."""

    targets: tuple[int, ...]  # per output frame, the pts (or ordinal, without timestamps) of the frame to take
    timed: bool  # targets are pts (else ordinals in decode order)
    method: Literal["seek", "scan"]
    frames_in_stream: int
    duration_s: float
    decode_cost: int  # estimated frames to decode with ``method``


Source = str | os.PathLike[str] | bytes  # a file path, or the whole file in memory


def decode_clip(source: Source, num_frames: int, size: int, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """T uniformly sampled frames of the video at ``source`` as (T, size, size, 3) uint8 RGB."""
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
    started = time.monotonic()
    nbytes = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if nbytes == 0:
        raise DecodeError("not_a_video", "the file is empty")
    if nbytes > limits.max_bytes:
        raise DecodeError("too_large", f"the file has {nbytes} bytes; the limit is {limits.max_bytes}")
    stream: av.video.stream.VideoStream | None = None
    try:
        with _open(source) as container:  # index pass
            stream = _video_stream(container, limits)
            plan = plan_clip(container, stream, num_frames, limits)
            if plan.timed and _seekable(container):
                # NOTE(e2e): the same demuxer, rewound: a second open costs ~1.2 ms of CPU per clip (stream probing)
                try:
                    return _decode(container, stream, plan, size, limits, started, rewind=True)
                except _SeekMiss:  # the rewind did not land at the start: a fresh demuxer below
                    pass
        with _open(source) as container:  # decode pass: a fresh demuxer, no rewind (unreliable in TS, FLV ...)
            stream = _video_stream(container, limits)
            return _decode(container, stream, plan, size, limits, started)
    except av.FFmpegError as exc:
        ctx = None if stream is None else stream.codec_context  # FFmpeg's max_pixels refused a frame the stream
        if ctx is not None and ctx.width * ctx.height > limits.max_pixels_per_frame:  # switched to mid-way
            raise DecodeError(
                "frame_too_large",
                f"the stream switches to {ctx.width}x{ctx.height} frames; the limit is "
                f"{limits.max_pixels_per_frame} pixels",
            ) from None
        raise DecodeError("undecodable", f"corrupt or unsupported video data: {exc}") from exc


def _seekable(container: av.container.InputContainer) -> bool:
    """Containers whose demuxers seek exactly by timestamp (MP4, Matroska, WebM)."""
    return any(name in SEEKABLE_FORMATS for name in container.format.name.split(","))


def _open(source: Source) -> av.container.InputContainer:
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


def _video_stream(container: av.container.InputContainer, limits: DecodeLimits) -> av.video.stream.VideoStream:
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


def plan_clip(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_frames: int, limits: DecodeLimits
) -> ClipPlan:
    """Index pass (demux only) + target selection + seek-or-scan choice."""
    pts: list[int | None] = []
    keyframe: list[bool] = []
    shown: dict[int, int] = {}  # pts -> the packet's own display duration, where the container states one
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        pts.append(packet.pts)
        keyframe.append(packet.is_keyframe)
        if packet.pts is not None and packet.duration:
            shown[packet.pts] = int(packet.duration)
        if len(pts) > limits.max_frames:
            raise DecodeError("too_long", f"more than {limits.max_frames} frames in the video stream")
    if not pts:
        raise DecodeError("zero_frames", "the video stream holds no frames")
    time_base = stream.time_base or Fraction(1, 1)
    fmt = container.format.name
    # AVI has no presentation timestamps (FFmpeg guesses them, out of order with B-frames): count frames instead
    timed = all(p is not None for p in pts) and fmt not in UNTIMED_FORMATS
    seekable = _seekable(container)
    if timed:
        order = sorted(range(len(pts)), key=lambda i: pts[i])  # type: ignore[arg-type,return-value]
        keys = [int(pts[i]) for i in order]  # type: ignore[arg-type]  # presentation order
        step = _frame_step(keys)
        duration = (keys[-1] - keys[0] + _last_frame_span(keys[-1], shown, step, time_base)) * float(time_base)
        tolerance = step / 2
        span = keys[-1] - keys[0] + step
        wanted = [keys[0] + (i + 0.5) * span / num_frames - tolerance for i in range(num_frames)]
        targets = tuple(_first_at_or_after(keys, w) for w in wanted)
    else:  # no timestamps (some AVI): frame ordinals in decode order, one sequential scan
        order = list(range(len(pts)))
        rate = stream.average_rate or stream.guessed_rate
        duration = len(pts) / float(rate) if rate else 0.0
        targets = tuple(min(len(pts) - 1, int((i + 0.5) * len(pts) / num_frames)) for i in range(num_frames))
    if duration > limits.max_duration_s:
        raise DecodeError("too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:.1f} s")
    scan_cost, seek_cost = _costs(targets, keys if timed else None, order, keyframe)
    if not timed or not seekable or limits.method == "scan":
        method: Literal["seek", "scan"] = "scan"
    elif limits.method == "seek":
        method = "seek"
    else:
        method = "seek" if seek_cost < scan_cost else "scan"
    return ClipPlan(targets, timed, method, len(pts), duration, seek_cost if method == "seek" else scan_cost)


def _last_frame_span(last: int, shown: dict[int, int], step: int, time_base: Fraction) -> int:
    """How long the last frame stays on screen, in pts units: its packet's duration when the container gives one,
    else the typical frame gap but at most one second (two frames far apart do not make the clip twice as long)."""
    stated = shown.get(last, 0)
    if 0 < stated <= step:
        return stated
    return min(step, max(1, int(1 / float(time_base))))


def _frame_step(keys: list[int]) -> int:
    """The typical pts difference between consecutive frames (median), at least 1."""
    if len(keys) < 2:
        return 1
    diffs = sorted(b - a for a, b in itertools.pairwise(keys) if b > a)
    return max(1, diffs[len(diffs) // 2]) if diffs else 1


def _first_at_or_after(keys: list[int], value: float) -> int:
    """The first key >= value (keys sorted); the last key when none is."""
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return keys[min(lo, len(keys) - 1)]


def _costs(
    targets: tuple[int, ...], keys: list[int] | None, order: list[int], keyframe: list[bool]
) -> tuple[int, int]:
    """Estimated frames to decode: (one scan up to the last target, one seek per target GOP)."""
    if keys is None:
        return max(targets) + 1, 1 << 60
    # presentation position -> decode position, and the keyframe at or before each decode position
    decode_pos = {keys[rank]: order[rank] for rank in range(len(keys))}
    last_key: list[int] = []
    current = 0
    for i, is_key in enumerate(keyframe):
        current = i if is_key else current
        last_key.append(current)
    scan = max(decode_pos[t] for t in targets) + 1
    seek, position = 0, -1
    for target in sorted(set(targets)):
        pos = decode_pos[target]
        start = last_key[pos]
        if start <= position < pos:  # same GOP, ahead of where the decoder already is: keep decoding
            seek += pos - position
        else:
            seek += pos - start + 1 + SEEK_OVERHEAD_FRAMES
        position = max(position, pos)
    return scan, seek


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    plan: ClipPlan,
    size: int,
    limits: DecodeLimits,
    started: float,
    rewind: bool = False,
) -> np.ndarray:
    """The plan's frames; ``rewind``: the index pass read this demuxer to its end, a scan seeks back to the start
    first and raises ``_SeekMiss`` when that lands past the first target."""
    picked: dict[int, np.ndarray] = {}
    wanted = sorted(set(plan.targets))
    scaler = VideoReformatter()  # one scaler context for the clip: a new one per frame cost ~0.3 ms at 112 px
    if plan.method == "seek":
        try:
            for target in wanted:
                if target not in picked:
                    _seek_one(container, stream, target, wanted, picked, size, limits, started, scaler)
        except _SeekMiss:  # the demuxer landed past a target or found nothing: one sequential pass instead
            picked.clear()
            container.seek(0, stream=stream)
            stream.codec_context.flush_buffers()
            _scan(container, stream, wanted, picked, size, limits, started, plan.timed, scaler)
    else:
        if rewind:
            try:
                container.seek(0, stream=stream)
            except av.FFmpegError:
                raise _SeekMiss() from None
        _scan(container, stream, wanted, picked, size, limits, started, plan.timed, scaler, strict=rewind)
    if not picked:
        raise DecodeError("zero_frames", "no frame of the video stream could be decoded")
    last = picked[max(picked)]
    # a target the decoder never produced (truncated tail): the nearest earlier decoded frame stands in
    out = [picked.get(t, _nearest_before(picked, t, last)) for t in plan.targets]
    return np.stack(out)  # (T, size, size, 3)


def _nearest_before(picked: dict[int, np.ndarray], target: int, fallback: np.ndarray) -> np.ndarray:
    earlier = [k for k in picked if k <= target]
    return picked[max(earlier)] if earlier else fallback


def _scan(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: list[int],
    picked: dict[int, np.ndarray],
    size: int,
    limits: DecodeLimits,
    started: float,
    timed: bool,
    scaler: VideoReformatter | None = None,
    strict: bool = False,
) -> None:
    """Decode in order, keeping the first frame at or after each target; ``strict``: a first frame already past
    the first target (a rewind that missed the start) raises ``_SeekMiss``."""
    ordinal = 0
    remaining = list(wanted)
    for frame in container.decode(stream):
        _check_frame(frame, started, limits)
        key = frame.pts if timed else ordinal
        ordinal += 1
        if key is None:
            continue
        if strict and ordinal == 1 and remaining and key > remaining[0]:
            raise _SeekMiss()
        while remaining and key >= remaining[0]:  # this frame is the first at or after each such target
            picked[remaining.pop(0)] = to_rgb(frame, size, scaler)
        if not remaining:
            return


def _seek_one(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    target: int,
    wanted: list[int],
    picked: dict[int, np.ndarray],
    size: int,
    limits: DecodeLimits,
    started: float,
    scaler: VideoReformatter | None = None,
) -> None:
    container.seek(target, backward=True, any_frame=False, stream=stream)
    first = True
    for frame in container.decode(stream):
        _check_frame(frame, started, limits)
        if frame.pts is None:
            continue
        if first and frame.pts > target:
            raise _SeekMiss()
        first = False
        hits = [t for t in wanted if t not in picked and t <= frame.pts and t >= target]
        if hits:
            rgb = to_rgb(frame, size, scaler)
            for t in hits:
                picked[t] = rgb
        if frame.pts >= target:
            return
    raise _SeekMiss()


class _SeekMiss(Exception):
    """A seek that did not land at or before its target."""


def _check_frame(frame: av.VideoFrame, started: float, limits: DecodeLimits) -> None:
    """Every decoded frame: within the wall-time limit, and within the pixel limit (the stream header only tells
    the first frame's size; a raw stream may switch to a larger one mid-way)."""
    if time.monotonic() - started > limits.max_decode_s:
        raise DecodeError("decode_timeout", f"decoding took longer than {limits.max_decode_s:.1f} s")
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


__all__ = [
    "ClipPlan", "DecodeError", "DecodeLimits", "decode_clip", "encode_video", "plan_clip", "to_rgb",
]
