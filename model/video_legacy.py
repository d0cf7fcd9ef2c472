"""The decoder as it was before it skipped frames (``DecodeLimits(sampling="legacy")``): it decodes every frame
of every GOP it passes through, by one seek per target GOP or one sequential scan.

Kept for the benchmark (``adafocus bench decode --corpus realistic``) and for the test that the new decoder
returns the same bytes; never chosen by the service.
"""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from model.video_io import DecodeError, DecodeLimits, check_frame, to_rgb
from model.video_plan import ClipPlan


class SeekMiss(Exception):
    """A seek that did not land at or before its target."""


def decode_legacy(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    plan: ClipPlan,
    size: int,
    limits: DecodeLimits,
    started: float,
    rewind: bool = False,
) -> tuple[np.ndarray, int]:
    """The plan's frames as (T, size, size, 3) and the frames decoded; ``rewind``: the index pass read this
    demuxer to its end, a scan seeks back to the start first and raises ``SeekMiss`` when that lands past the
    first target."""
    picked: dict[int, np.ndarray] = {}
    wanted = sorted(set(plan.targets))
    scaler = VideoReformatter()  # one scaler context for the clip: a new one per frame cost ~0.3 ms at 112 px
    decoded = [0]
    if plan.method == "seek":
        try:
            for target in wanted:
                if target not in picked:
                    _seek_one(container, stream, target, wanted, picked, size, limits, started, scaler, decoded)
        except SeekMiss:  # the demuxer landed past a target or found nothing: one sequential pass instead
            picked.clear()
            container.seek(0, stream=stream)
            stream.codec_context.flush_buffers()
            _scan(container, stream, wanted, picked, size, limits, started, plan.timed, scaler, decoded)
    else:
        if rewind:
            try:
                container.seek(0, stream=stream)
            except av.FFmpegError:
                raise SeekMiss() from None
        _scan(container, stream, wanted, picked, size, limits, started, plan.timed, scaler, decoded, strict=rewind)
    if not picked:
        raise DecodeError("zero_frames", "no frame of the video stream could be decoded")
    last = picked[max(picked)]
    # a target the decoder never produced (truncated tail): the nearest earlier decoded frame stands in
    out = [picked.get(t, nearest_before(picked, t, last)) for t in plan.targets]
    return np.stack(out), decoded[0]  # (T, size, size, 3)


def nearest_before(picked: dict[int, np.ndarray], target: int, fallback: np.ndarray) -> np.ndarray:
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
    scaler: VideoReformatter,
    decoded: list[int],
    strict: bool = False,
) -> None:
    """Decode in order, keeping the first frame at or after each target; ``strict``: a first frame already past
    the first target (a rewind that missed the start) raises ``SeekMiss``."""
    ordinal = 0
    remaining = list(wanted)
    for frame in container.decode(stream):
        decoded[0] += 1
        check_frame(frame, started, limits)
        key = frame.pts if timed else ordinal
        ordinal += 1
        if key is None:
            continue
        if strict and ordinal == 1 and remaining and key > remaining[0]:
            raise SeekMiss()
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
    scaler: VideoReformatter,
    decoded: list[int],
) -> None:
    container.seek(target, backward=True, any_frame=False, stream=stream)
    first = True
    for frame in container.decode(stream):
        decoded[0] += 1
        check_frame(frame, started, limits)
        if frame.pts is None:
            continue
        if first and frame.pts > target:
            raise SeekMiss()
        first = False
        hits = [t for t in wanted if t not in picked and t <= frame.pts and t >= target]
        if hits:
            rgb = to_rgb(frame, size, scaler)
            for t in hits:
                picked[t] = rgb
        if frame.pts >= target:
            return
    raise SeekMiss()
