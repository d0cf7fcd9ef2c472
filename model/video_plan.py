"""What a decode will fetch, from an index pass that demuxes without decoding.

1. The index pass reads every packet of the video stream once: its timestamp, whether it is a keyframe, and,
   for H.264 and HEVC, whether another frame refers to it (read from the NAL unit headers at the start of the
   packet, no decoding). Durations are exact even when the container's metadata is missing or wrong.
2. T target times at the centres of T equal segments pick T frames (the nearest frame at or after each); ``fast``
   sampling then moves each target to the cheapest frame within the tolerance (a keyframe, else a reference
   frame), keeping it where none is near.
3. Each target needs the packets from its keyframe to itself (decode order); overlapping ranges merge into runs.
   The decoder is fed only the runs' packets and skips the non-reference frames among them that are not targets
   (``skip_frame``), so the frames it decodes are the targets and the reference frames before them in their GOPs.
   Between runs it crosses the packets it does not need by a seek or by demuxing on, whichever is cheaper.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av

from model.video_io import DecodeError, DecodeLimits, Sampling, check_time, seekable

UNTIMED_FORMATS = frozenset({"avi"})
# The old decoder's cost model: frames decoded per seek on top of those between the keyframe and the target.
SEEK_OVERHEAD_FRAMES = 8
# A seek costs about as much CPU as demuxing this many packets (measured: ~15 us vs ~3 us per packet, PyAV/MP4).
SEEK_COST_PACKETS = 8
# Decoders whose skip_frame=NONREF skips exactly the frames no other frame refers to (checked byte for byte against
# a full decode); elsewhere (AV1's libdav1d drops frames it must show) only the packets outside the runs are skipped.
SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video"})
NAL_SCAN_BYTES = 4096  # Annex B packets: where the first slice header is looked for (after SPS, PPS and SEI)

ReferenceParser = Callable[[memoryview], "bool | None"]


@dataclass(frozen=True)
class StreamIndex:
    """Per packet of the video stream, in decode order."""

    pts: list[int | None]
    keyframe: list[bool]
    reference: list[bool | None]  # another frame may refer to it (None: the bitstream does not say here)
    shown: dict[int, int]  # pts -> the packet's own display duration, where the container states one
    time_base: Fraction


@dataclass(frozen=True)
class Run:
    """Packets ``start`` .. ``end`` (decode positions) go to the decoder; ``start`` is a keyframe."""

    start: int
    end: int
    seek: bool  # reached by a seek; else by demuxing on from the previous run (or from the file's start)


@dataclass(frozen=True, eq=False)
class ClipPlan:
    """What the index pass found and what the decode will fetch."""

    targets: tuple[int, ...]  # per output frame, the pts (or ordinal, without timestamps) of the frame to take
    timed: bool  # targets are pts (else ordinals in decode order)
    method: Literal["seek", "scan"]  # whether the decode seeks between runs (legacy: per target)
    frames_in_stream: int
    duration_s: float
    decode_cost: int  # frames the decoder is expected to decode
    sampling: Sampling = "exact"
    runs: tuple[Run, ...] = ()
    max_offset_s: float = 0.0  # fast: the largest time offset of a taken frame from its exact target
    index: StreamIndex | None = None
    position: dict[int, int] = field(default_factory=dict)  # pts -> decode position (timed streams)
    skip_nonref: bool = False  # the decoder may skip the non-reference frames that are not targets


def index_stream(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: DecodeLimits,
    started: float | None = None,
) -> StreamIndex:
    """Demux every packet of ``stream`` (no decoding); ``too_long`` past ``limits.max_frames`` packets."""
    started = time.monotonic() if started is None else started
    parse = _reference_parser(stream)
    pts: list[int | None] = []
    keyframe: list[bool] = []
    reference: list[bool | None] = []
    shown: dict[int, int] = {}
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        pts.append(packet.pts)
        keyframe.append(packet.is_keyframe)
        reference.append(True if packet.is_keyframe else parse(memoryview(packet)))  # type: ignore[arg-type]
        if packet.pts is not None and packet.duration:
            shown[packet.pts] = int(packet.duration)
        if len(pts) > limits.max_frames:
            raise DecodeError("too_long", f"more than {limits.max_frames} frames in the video stream")
        if len(pts) % 512 == 0:
            check_time(started, limits)
    if not pts:
        raise DecodeError("zero_frames", "the video stream holds no frames")
    return StreamIndex(pts, keyframe, reference, shown, stream.time_base or Fraction(1, 1))


def plan_clip(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_frames: int,
    limits: DecodeLimits, started: float | None = None,
) -> ClipPlan:
    """Index pass (demux only) + target selection + runs (or, for ``legacy``, the old seek-or-scan choice)."""
    index = index_stream(container, stream, limits, started)
    pts = index.pts
    # AVI has no presentation timestamps (FFmpeg guesses them, out of order with B-frames): count frames instead
    timed = all(p is not None for p in pts) and container.format.name not in UNTIMED_FORMATS
    if not timed:  # frame ordinals in decode order, one sequential pass of the old decoder
        rate = stream.average_rate or stream.guessed_rate
        duration = len(pts) / float(rate) if rate else 0.0
        _check_duration(duration, limits)
        targets = tuple(min(len(pts) - 1, int((i + 0.5) * len(pts) / num_frames)) for i in range(num_frames))
        return ClipPlan(targets, False, "scan", len(pts), duration, max(targets) + 1, "exact", index=index)
    keys = sorted(p for p in pts if p is not None)  # presentation order
    step = _frame_step(keys)
    span = keys[-1] - keys[0] + step
    duration = float((keys[-1] - keys[0] + _last_frame_span(keys[-1], index.shown, step, index.time_base))
                     * index.time_base)  # exact: a 600.0 s video is not 600.0000000001 s long
    _check_duration(duration, limits)
    wanted = [keys[0] + (i + 0.5) * span / num_frames - step / 2 for i in range(num_frames)]
    targets = tuple(_first_at_or_after(keys, w) for w in wanted)
    position = {int(p): i for i, p in enumerate(pts)}  # type: ignore[arg-type]
    if limits.sampling == "legacy":
        return _legacy_plan(index, keys, targets, position, duration, limits, seekable(container))
    offset = 0.0
    if limits.sampling == "fast":
        targets, offset = _fast_targets(index, keys, targets, position, limits.tolerance_s)
    runs, cost = _runs(index, targets, position, limits, seekable(container))
    method: Literal["seek", "scan"] = "seek" if any(r.seek for r in runs[1:]) else "scan"
    skip = stream.codec_context.name in SKIP_NONREF_CODECS
    return ClipPlan(
        targets, True, method, len(pts), duration, cost, limits.sampling, runs, offset, index, position, skip
    )


def _check_duration(duration: float, limits: DecodeLimits) -> None:
    if duration > limits.max_duration_s:
        raise DecodeError("too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:.1f} s")


def _start_of(index: StreamIndex, prev_key: list[int], pos: int, pts: int) -> int:
    """The keyframe a decode of the frame at ``pos`` (timestamp ``pts``) starts from: the last one before it in
    decode order that is not shown after it (an open GOP's leading frames refer to the GOP before)."""
    start = prev_key[pos]
    while start > 0 and (index.pts[start] or 0) > pts:
        start = prev_key[start - 1]
    return max(start, 0)


def _keyframes_before(index: StreamIndex) -> list[int]:
    """Per decode position, the position of the last keyframe at or before it (-1: none)."""
    out, current = [], -1
    for i, is_key in enumerate(index.keyframe):
        current = i if is_key else current
        out.append(current)
    return out


def _needs(index: StreamIndex) -> list[int]:
    """Prefix sums of the frames a decoder fed every packet decodes even when skipping non-references:
    ``needs[j] - needs[i]`` counts positions i .. j-1."""
    return [0, *itertools.accumulate(int(r is not False) for r in index.reference)]


def _runs(
    index: StreamIndex, targets: tuple[int, ...], position: dict[int, int], limits: DecodeLimits, can_seek: bool
) -> tuple[tuple[Run, ...], int]:
    """Merged packet ranges from each target's keyframe to the target, and the frames they decode."""
    prev_key = _keyframes_before(index)
    ranges = sorted({(_start_of(index, prev_key, position[t], t), position[t]) for t in targets})
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    needs = _needs(index)
    wanted = {position[t] for t in targets}
    runs, cost, last = [], 0, -1
    for start, end in merged:
        gap = start - last - 1
        far = limits.method == "seek" or (limits.method == "auto" and gap > SEEK_COST_PACKETS)
        seek = can_seek and (not runs or far)  # the index pass left the demuxer at the end: the first run seeks
        runs.append(Run(start, end, seek))
        cost += needs[end + 1] - needs[start] + sum(1 for p in wanted if start <= p <= end and not needs_at(index, p))
        last = end
    return tuple(runs), cost


def needs_at(index: StreamIndex, pos: int) -> bool:
    """A decoder that skips non-reference frames still decodes the one at ``pos``."""
    return index.reference[pos] is not False


def _fast_targets(
    index: StreamIndex, keys: list[int], targets: tuple[int, ...], position: dict[int, int], tolerance_s: float
) -> tuple[tuple[int, ...], float]:
    """Per target, the cheapest frame within ``tolerance_s`` that is a keyframe or a reference frame (nearest
    first among equals), or the target itself where none is; and the largest offset taken, in seconds."""
    prev_key = _keyframes_before(index)
    needs = _needs(index)
    reach = tolerance_s / float(index.time_base)
    chosen, offset = [], 0.0
    for target in targets:
        best, best_cost = target, None
        lo, hi = bisect.bisect_left(keys, target - reach), bisect.bisect_right(keys, target + reach)
        for candidate in keys[lo:hi]:
            pos = position[candidate]
            if index.keyframe[pos]:
                cost = 1
            elif index.reference[pos] is True:
                start = _start_of(index, prev_key, pos, candidate)
                cost = needs[pos + 1] - needs[start]
            else:
                continue
            rank = (cost, abs(candidate - target))
            if best_cost is None or rank < best_cost:
                best, best_cost = candidate, rank
        chosen.append(best)
        offset = max(offset, float(abs(best - target) * index.time_base))
    return tuple(chosen), offset


def _legacy_plan(
    index: StreamIndex, keys: list[int], targets: tuple[int, ...], position: dict[int, int], duration: float,
    limits: DecodeLimits, can_seek: bool,
) -> ClipPlan:
    """The old decoder's plan: one seek per target GOP, or one scan decoding every frame up to the last target."""
    scan_cost, seek_cost = _legacy_costs(targets, position, index.keyframe)
    if not can_seek or limits.method == "scan":
        method: Literal["seek", "scan"] = "scan"
    elif limits.method == "seek":
        method = "seek"
    else:
        method = "seek" if seek_cost < scan_cost else "scan"
    cost = seek_cost if method == "seek" else scan_cost
    return ClipPlan(targets, True, method, len(index.pts), duration, cost, "legacy", index=index, position=position)


def _legacy_costs(targets: tuple[int, ...], position: dict[int, int], keyframe: list[bool]) -> tuple[int, int]:
    """The old estimate of frames to decode: (one scan up to the last target, one seek per target GOP)."""
    last_key: list[int] = []
    current = 0
    for i, is_key in enumerate(keyframe):
        current = i if is_key else current
        last_key.append(current)
    scan = max(position[t] for t in targets) + 1
    seek, reached = 0, -1
    for target in sorted(set(targets)):
        pos = position[target]
        start = last_key[pos]
        if start <= reached < pos:  # same GOP, ahead of where the decoder already is: keep decoding
            seek += pos - reached
        else:
            seek += pos - start + 1 + SEEK_OVERHEAD_FRAMES
        reached = max(reached, pos)
    return scan, seek


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
    return keys[min(bisect.bisect_left(keys, value), len(keys) - 1)]


def _reference_parser(stream: av.video.stream.VideoStream) -> ReferenceParser:
    """Reads from a packet's first slice NAL header whether other frames may refer to it (H.264, HEVC)."""
    name = stream.codec_context.name
    extradata = bytes(stream.codec_context.extradata or b"")
    if name not in ("h264", "hevc"):
        return lambda data: None
    length_size = 0  # Annex B (start codes), unless the extradata is an avcC / hvcC record
    if extradata[:1] == b"\x01":
        at = 4 if name == "h264" else 21
        length_size = (extradata[at] & 3) + 1 if len(extradata) > at else 4
    return lambda data: _nal_reference(data, name == "hevc", length_size)


def _slice_reference(header: int, hevc: bool) -> bool | None:
    """A NAL header's first byte: True/False for a slice (referenced or not), None for other NAL units."""
    if hevc:
        kind = (header >> 1) & 0x3F
        if kind >= 32:  # parameter sets, SEI, delimiters
            return None
        return not (kind <= 14 and kind % 2 == 0)  # TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N*
    if header & 0x1F not in (1, 5):
        return None
    return bool(header & 0x60)  # nal_ref_idc


def _nal_reference(data: memoryview, hevc: bool, length_size: int) -> bool | None:
    """Whether the packet's first slice may be referred to; None when no slice header is found."""
    if length_size == 0:
        head = bytes(data[:NAL_SCAN_BYTES])
        at = head.find(b"\x00\x00\x01")
        while 0 <= at < len(head) - 3:
            found = _slice_reference(head[at + 3], hevc)
            if found is not None:
                return found
            at = head.find(b"\x00\x00\x01", at + 3)
        return None
    at = 0
    for _ in range(64):  # a packet holds a handful of NAL units; a malformed length ends the walk
        if at + length_size >= len(data):
            return None
        size = int.from_bytes(data[at : at + length_size], "big")
        found = _slice_reference(data[at + length_size], hevc)
        if found is not None:
            return found
        at += length_size + size
    return None
