"""The project's one video decoder: a file -> T uniformly sampled RGB frames, resized and centre-cropped.

Used by training (class folders of video files) and by the service's decode workers, so both see the same
pixels. Decoding is PyAV (FFmpeg):

1. ``model.video_plan`` demuxes the video stream once without decoding (cheap) to learn every frame's timestamp,
   the keyframes and, for H.264 and HEVC, which frames are references; it picks T target frames and the packet
   runs that decode them (each from its keyframe);
2. the decoder is fed only those runs: FFmpeg's ``skip_frame`` is ``DEFAULT`` for the targets' packets and
   ``NONREF`` for the others, so it decodes the targets and the reference frames they need, nothing else; it
   crosses the packets between runs by a seek or by demuxing on (the plan's cost model);
3. only the picked frames are converted, in libswscale, straight to the scaled size (shorter side = ``size``,
   rotation metadata applied), then centre-cropped to ``size`` x ``size``.

``exact`` sampling returns byte for byte the frames of a full decode (``sampling="legacy"`` keeps the old decoder,
which decoded every frame of every GOP it passed, for that comparison); ``fast`` takes per target the cheapest
frame within ``tolerance_s`` and says how far it moved (``Clip``). Memory is bounded by the output clip and the
index (a few integers per packet), not by the video.

Untrusted input: every failure is a ``DecodeError`` with a stable ``code``. FFmpeg can still crash the process on
some malformed files (PyAV #2344), which is why the service runs this in worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

if TYPE_CHECKING:
    from av.video.stream import VideoStream

    Packet = av.Packet[VideoStream]
    SkipFrame = Literal["DEFAULT", "NONREF"]

from model.video_encode import encode_video
from model.video_io import (
    DecodeCode,
    DecodeError,
    DecodeLimits,
    Sampling,
    Source,
    check_frame,
    check_source,
    check_time,
    container_kind,
    open_container,
    seekable,
    to_rgb,
    video_stream,
)
from model.video_legacy import SeekMiss, decode_legacy, nearest_before
from model.video_plan import ClipPlan, Run, plan_clip


@dataclass(frozen=True)
class Clip:
    """A decoded clip and how it was sampled."""

    frames: np.ndarray  # (T, size, size, 3) uint8 RGB
    sampling: Sampling  # the sampling that ran (a stream without timestamps always gets exact frames)
    max_offset_s: float  # fast: the largest time offset of a taken frame from its exact target; else 0
    frames_decoded: int  # frames out of the decoder: what the clip cost
    backend: str = "cpu"  # the decoder that ran: `cpu` (PyAV) or `nvdec` (model.video_nvdec)


def decode_clip(source: Source, num_frames: int, size: int, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """T uniformly sampled frames of the video at ``source`` as (T, size, size, 3) uint8 RGB."""
    return sample_clip(source, num_frames, size, limits).frames


def sample_clip(source: Source, num_frames: int, size: int, limits: DecodeLimits = DecodeLimits()) -> Clip:
    """T frames of the video at ``source``, sampled as ``limits.sampling`` says, with what the sampling took."""
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
    started = time.monotonic()
    check_source(source, limits)
    stream: av.video.stream.VideoStream | None = None
    try:
        with open_container(source) as container:  # index pass
            stream = video_stream(container, limits)
            plan = plan_clip(container, stream, num_frames, limits, started)
            if plan.timed and seekable(container):
                # NOTE(e2e): the same demuxer, rewound: a second open costs ~1.2 ms of CPU per clip (stream probing)
                try:
                    return _decode(container, stream, plan, size, limits, started, rewind=True)
                except SeekMiss:  # a seek did not land where the index says: a fresh demuxer below
                    pass
        with open_container(source) as container:  # decode pass: a fresh demuxer, no seeks (TS, FLV ...)
            stream = video_stream(container, limits)
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


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    plan: ClipPlan,
    size: int,
    limits: DecodeLimits,
    started: float,
    rewind: bool = False,
) -> Clip:
    """``rewind``: the index pass read this demuxer to its end; seeks are allowed (a miss raises ``SeekMiss``)."""
    if plan.sampling == "legacy" or not plan.timed:
        frames, decoded = decode_legacy(container, stream, plan, size, limits, started, rewind)
        return Clip(frames, "legacy" if plan.sampling == "legacy" else "exact", 0.0, decoded)
    picked: dict[int, np.ndarray] = {}
    decoded = _decode_runs(container, stream, plan, picked, size, limits, started, rewind)
    if not picked:
        raise DecodeError("zero_frames", "no frame of the video stream could be decoded")
    last = picked[max(picked)]
    # a target the decoder never produced (a corrupt or missing packet): the nearest earlier picked frame stands in
    frames = np.stack([picked.get(t, nearest_before(picked, t, last)) for t in plan.targets])  # (T, size, size, 3)
    return Clip(frames, plan.sampling, plan.max_offset_s, decoded)


def _decode_runs(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    plan: ClipPlan,
    picked: dict[int, np.ndarray],
    size: int,
    limits: DecodeLimits,
    started: float,
    seeks: bool,
) -> int:
    """Feed the decoder each run of the plan (reached by a seek where the plan says and ``seeks`` allows, else by
    demuxing on) and keep the targets' frames in ``picked``; returns the frames decoded."""
    scaler = VideoReformatter()  # one scaler context for the clip: a new one per frame cost ~0.3 ms at 112 px
    ctx = stream.codec_context
    packets: Iterator[tuple[int, Packet]] | None = None
    decoded = 0
    at = {t: plan.index.at(t) for t in set(plan.targets)}  # target pts -> decode position
    skip: SkipFrame = "NONREF" if plan.skip_nonref else "DEFAULT"
    for run in plan.runs:
        if seeks and run.seek:
            try:
                container.seek(int(plan.index.pts[run.start]), backward=True, any_frame=False, stream=stream)
            except av.FFmpegError:
                raise SeekMiss() from None
            packets = _positions(container, stream, plan, None)
        elif packets is None:  # a fresh demuxer: position 0 is the stream's first packet
            packets = _positions(container, stream, plan, 0)
        pending = sorted(t for t, pos in at.items() if run.start <= pos <= run.end)
        for frame in _feed(ctx, packets, run, set(pending), skip, started, limits):
            decoded += 1
            check_frame(frame, started, limits)
            if frame.pts is None or not pending or frame.pts < pending[0]:
                continue
            rgb = to_rgb(frame, size, scaler)
            while pending and pending[0] <= frame.pts:  # the first frame at or after each such target
                picked[pending.pop(0)] = rgb
    return decoded


def _positions(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, plan: ClipPlan, first: int | None
) -> Iterator[tuple[int, Packet]]:
    """The stream's packets with their decode positions; ``first=None``: just after a seek, the first packet's
    timestamp tells its position (``SeekMiss`` when the index does not know it)."""
    position = first
    for packet in container.demux(stream):
        if packet.size == 0:  # end-of-stream marker, not a frame (the index pass skipped it too)
            continue
        if position is None:
            position = None if packet.pts is None else plan.index.position(packet.pts)
            if position is None:
                raise SeekMiss()
        yield position, packet
        position += 1


def _feed(
    ctx: av.video.codeccontext.VideoCodecContext,
    packets: Iterator[tuple[int, Packet]],
    run: Run,
    targets: set[int],
    skip: SkipFrame,
    started: float,
    limits: DecodeLimits,
) -> Iterator[av.VideoFrame]:
    """Decode packets ``run.start`` .. ``run.end`` (earlier ones are dropped undecoded; landing past the start
    raises ``SeekMiss``), with ``skip`` for the packets that are not targets; then drain the decoder."""
    first = True
    for position, packet in packets:
        if first and position > run.start:  # a seek that landed past the run's keyframe
            raise SeekMiss()
        first = False
        if position < run.start:
            if position % 256 == 0:
                check_time(started, limits)
            continue
        ctx.skip_frame = "DEFAULT" if packet.pts in targets else skip
        yield from ctx.decode(packet)
        if position >= run.end:
            break
    ctx.skip_frame = "DEFAULT"
    yield from ctx.decode(None)  # drain: the frames still held for reordering come out
    ctx.flush_buffers()  # ready for the next run, which starts at a keyframe


__all__ = [
    "Clip", "ClipPlan", "DecodeCode", "DecodeError", "DecodeLimits", "Sampling", "Source", "container_kind",
    "decode_clip", "encode_video", "plan_clip", "sample_clip", "to_rgb",
]
