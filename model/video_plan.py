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

import array
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

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


MISSING_PTS = np.iinfo(np.int64).min  # a packet without a timestamp


@dataclass(frozen=True, eq=False)
class StreamIndex:
    """Per packet of the video stream, in decode order, a few bytes each (a 10-minute video: ~0.5 MB)."""

    pts: np.ndarray  # (N,) int64, MISSING_PTS where a packet has none
    keyframe: np.ndarray  # (N,) bool
    reference: np.ndarray  # (N,) int8: 1 another frame may refer to it, 0 none does, -1 the bitstream does not say
    last_duration: int  # the display duration the container states for the last frame (0: none)
    time_base: Fraction
    keys: np.ndarray  # (N,) int64: the timestamps sorted (presentation order)
    order: np.ndarray  # (N,) int64: the decode position of each of ``keys``

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def timed(self) -> bool:
        return bool(len(self.pts)) and not bool((self.pts == MISSING_PTS).any())

    def position(self, pts: int) -> int | None:
        """The decode position of the (last) packet with timestamp ``pts``; None when no packet has it."""
        at = int(np.searchsorted(self.keys, pts, side="right")) - 1
        return int(self.order[at]) if at >= 0 and int(self.keys[at]) == pts else None

    def at(self, pts: int) -> int:
        found = self.position(pts)
        assert found is not None, f"no packet has pts {pts}"
        return found


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
    index: StreamIndex
    sampling: Sampling = "exact"
    runs: tuple[Run, ...] = ()
    max_offset_s: float = 0.0  # fast: the largest time offset of a taken frame from its exact target
    skip_nonref: bool = False  # the decoder may skip the non-reference frames that are not targets


def index_stream(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: DecodeLimits,
    started: float | None = None,
) -> StreamIndex:
    """Demux every packet of ``stream`` (no decoding); ``too_long`` past ``limits.max_frames`` packets."""
    started = time.monotonic() if started is None else started
    parse = _reference_parser(stream)
    pts, keyframe, reference = array.array("q"), bytearray(), array.array("b")
    last_pts, last_duration = MISSING_PTS, 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        stamp = MISSING_PTS if packet.pts is None else int(packet.pts)
        pts.append(stamp)
        keyframe.append(packet.is_keyframe)
        found = True if packet.is_keyframe else parse(memoryview(packet))
        reference.append(-1 if found is None else int(found))
        if stamp > last_pts or (stamp == last_pts and packet.duration):
            last_pts, last_duration = stamp, int(packet.duration or 0)
        if len(pts) > limits.max_frames:
            raise DecodeError("too_long", f"more than {limits.max_frames} frames in the video stream")
        if len(pts) % 512 == 0:
            check_time(started, limits)
    if not pts:
        raise DecodeError("zero_frames", "the video stream holds no frames")
    stamps = np.frombuffer(pts, dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    return StreamIndex(
        stamps, np.frombuffer(bytes(keyframe), dtype=bool), np.frombuffer(reference, dtype=np.int8), last_duration,
        stream.time_base or Fraction(1, 1), stamps[order], order,
    )


def plan_clip(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, num_frames: int,
    limits: DecodeLimits, started: float | None = None,
) -> ClipPlan:
    """Index pass (demux only) + target selection + runs (or, for ``legacy``, the old seek-or-scan choice)."""
    index = index_stream(container, stream, limits, started)
    count = len(index)
    # AVI has no presentation timestamps (FFmpeg guesses them, out of order with B-frames): count frames instead
    if not index.timed or container.format.name in UNTIMED_FORMATS:  # frame ordinals: the old decoder's scan
        rate = stream.average_rate or stream.guessed_rate
        duration = count / float(rate) if rate else 0.0
        _check_duration(duration, limits)
        targets = tuple(min(count - 1, int((i + 0.5) * count / num_frames)) for i in range(num_frames))
        return ClipPlan(targets, False, "scan", count, duration, max(targets) + 1, index, "exact")
    first, last = int(index.keys[0]), int(index.keys[-1])
    step = _frame_step(index.keys)
    span = last - first + step
    # exact arithmetic: a 600.0 s video is not 600.0000000001 s long
    duration = float((last - first + _last_frame_span(index.last_duration, step, index.time_base)) * index.time_base)
    _check_duration(duration, limits)
    wanted = [first + (i + 0.5) * span / num_frames - step / 2 for i in range(num_frames)]
    targets = tuple(_first_at_or_after(index.keys, w) for w in wanted)
    if limits.sampling == "legacy":
        return _legacy_plan(index, targets, duration, limits, seekable(container))
    offset = 0.0
    if limits.sampling == "fast":
        targets, offset = _fast_targets(index, targets, limits.tolerance_s)
    runs, cost = _runs(index, targets, limits, seekable(container))
    method: Literal["seek", "scan"] = "seek" if any(r.seek for r in runs[1:]) else "scan"
    skip = stream.codec_context.name in SKIP_NONREF_CODECS
    return ClipPlan(targets, True, method, count, duration, cost, index, limits.sampling, runs, offset, skip)


def _check_duration(duration: float, limits: DecodeLimits) -> None:
    if duration > limits.max_duration_s:
        raise DecodeError("too_long", f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:.1f} s")


def _start_of(index: StreamIndex, prev_key: np.ndarray, pos: int, pts: int) -> int:
    """The keyframe a decode of the frame at ``pos`` (timestamp ``pts``) starts from: the last one before it in
    decode order that is not shown after it (an open GOP's leading frames refer to the GOP before)."""
    start = int(prev_key[pos])
    while start > 0 and int(index.pts[start]) > pts:
        start = int(prev_key[start - 1])
    return max(start, 0)


def _keyframes_before(index: StreamIndex) -> np.ndarray:
    """(N,) per decode position, the position of the last keyframe at or before it (-1: none)."""
    return np.maximum.accumulate(np.where(index.keyframe, np.arange(len(index)), -1))


def _needs(index: StreamIndex) -> np.ndarray:
    """(N + 1,) prefix sums of the frames a decoder fed every packet decodes even when it skips non-references:
    ``needs[j] - needs[i]`` counts positions i .. j-1."""
    return np.concatenate([[0], np.cumsum(index.reference != 0)])


def _runs(
    index: StreamIndex, targets: tuple[int, ...], limits: DecodeLimits, can_seek: bool
) -> tuple[tuple[Run, ...], int]:
    """Merged packet ranges from each target's keyframe to the target, and the frames they decode."""
    prev_key = _keyframes_before(index)
    wanted = {index.at(t) for t in targets}
    ranges = sorted({(_start_of(index, prev_key, index.at(t), t), index.at(t)) for t in targets})
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    needs = _needs(index)
    runs: list[Run] = []
    cost, last = 0, -1
    for start, end in merged:
        gap = start - last - 1
        far = limits.method == "seek" or (limits.method == "auto" and gap > SEEK_COST_PACKETS)
        seek = can_seek and (not runs or far)  # the index pass left the demuxer at the end: the first run seeks
        runs.append(Run(start, end, seek))
        skipped_targets = sum(1 for p in wanted if start <= p <= end and index.reference[p] == 0)
        cost += int(needs[end + 1] - needs[start]) + skipped_targets
        last = end
    return tuple(runs), cost


def _fast_targets(index: StreamIndex, targets: tuple[int, ...], tolerance_s: float) -> tuple[tuple[int, ...], float]:
    """Per target, the cheapest frame within ``tolerance_s`` that is a keyframe or a reference frame (nearest
    first among equals), or the target itself where none is; and the largest offset taken, in seconds."""
    prev_key = _keyframes_before(index)
    needs = _needs(index)
    reach = tolerance_s / float(index.time_base)
    chosen, offset = [], 0.0
    for target in targets:
        best, best_rank = target, (1 << 62, 0)
        lo = int(np.searchsorted(index.keys, target - reach, side="left"))
        hi = int(np.searchsorted(index.keys, target + reach, side="right"))
        for candidate, pos in zip(index.keys[lo:hi].tolist(), index.order[lo:hi].tolist(), strict=True):
            if index.keyframe[pos]:
                cost = 1
            elif index.reference[pos] == 1:
                cost = int(needs[pos + 1] - needs[_start_of(index, prev_key, pos, candidate)])
            else:
                continue
            rank = (cost, abs(candidate - target))
            if rank < best_rank:
                best, best_rank = candidate, rank
        chosen.append(best)
        offset = max(offset, float(abs(best - target) * index.time_base))
    return tuple(chosen), offset


def _legacy_plan(
    index: StreamIndex, targets: tuple[int, ...], duration: float, limits: DecodeLimits, can_seek: bool
) -> ClipPlan:
    """The old decoder's plan: one seek per target GOP, or one scan decoding every frame up to the last target."""
    scan_cost, seek_cost = _legacy_costs(index, targets)
    if not can_seek or limits.method == "scan":
        method: Literal["seek", "scan"] = "scan"
    elif limits.method == "seek":
        method = "seek"
    else:
        method = "seek" if seek_cost < scan_cost else "scan"
    cost = seek_cost if method == "seek" else scan_cost
    return ClipPlan(targets, True, method, len(index), duration, cost, index, "legacy")


def _legacy_costs(index: StreamIndex, targets: tuple[int, ...]) -> tuple[int, int]:
    """The old estimate of frames to decode: (one scan up to the last target, one seek per target GOP)."""
    last_key = np.maximum(_keyframes_before(index), 0)
    scan = max(index.at(t) for t in targets) + 1
    seek, reached = 0, -1
    for target in sorted(set(targets)):
        pos = index.at(target)
        start = int(last_key[pos])
        if start <= reached < pos:  # same GOP, ahead of where the decoder already is: keep decoding
            seek += pos - reached
        else:
            seek += pos - start + 1 + SEEK_OVERHEAD_FRAMES
        reached = max(reached, pos)
    return scan, seek


def _last_frame_span(stated: int, step: int, time_base: Fraction) -> int:
    """How long the last frame stays on screen, in pts units: its packet's duration when the container gives one,
    else the typical frame gap but at most one second (two frames far apart do not make the clip twice as long)."""
    if 0 < stated <= step:
        return stated
    return min(step, max(1, int(1 / float(time_base))))


def _frame_step(keys: np.ndarray) -> int:
    """The typical pts difference between consecutive frames (median), at least 1."""
    diffs = np.diff(keys)
    diffs = np.sort(diffs[diffs > 0])
    return max(1, int(diffs[len(diffs) // 2])) if len(diffs) else 1


def _first_at_or_after(keys: np.ndarray, value: float) -> int:
    """The first key >= value (keys sorted); the last key when none is."""
    return int(keys[min(int(np.searchsorted(keys, value, side="left")), len(keys) - 1)])


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
