"""The decoder on NVIDIA's hardware video decoder (NVDEC, through PyNvVideoCodec): the same plan, the same resize.

``sample_clip_nvdec`` has ``model.video.sample_clip``'s interface and limits. The CPU still runs the index pass
(``model.video_plan``: demuxing only, about 0.1 ms a packet) and so picks the very frames ``sample_clip`` would, in
either sampling; NVDEC decodes them (PyNvVideoCodec's ``SimpleDecoder.get_batch_frames_by_index``: it seeks to each
target's keyframe and decodes on the GPU, the CPU idle meanwhile) into NV12, which the one resize path
(``model.video_io.to_rgb``, libswscale) scales and crops like a CPU-decoded frame. H.264, HEVC, VP9 and AV1 are
bit-exact by their standards, so the planes are the CPU decoder's. They are written into a frame the CPU decoder
made of the same stream (its first, decoded once): libswscale reads the frame's chroma siting and colour properties,
and a bare NV12 array wrapped by PyAV differs there (6-8 of 255 on average at 112 px, measured); written into the
CPU's frame, the CPU's planes give its bytes exactly (``tests/model/test_video_nvdec.py``). Tolerance stated for the
GPU test: at most 2 of 255 per channel.

What NVDEC does not take goes to the CPU decoder for that request (``Clip.backend`` says which ran): a codec
outside ``NVDEC_CODECS``, a container ``SimpleDecoder`` cannot seek in, a pixel format other than 8-bit 4:2:0, a
stream without timestamps, and any error PyNvVideoCodec raises (a hostile file then gets the CPU decoder's stable
codes). A crash or hang of the hardware decode kills only the worker process that ran it (``service.decode.pool``).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from model.video import Clip, sample_clip
from model.video_io import (
    SEEKABLE_FORMATS,
    DecodeError,
    DecodeLimits,
    Source,
    check_source,
    check_time,
    open_container,
    to_rgb,
    video_stream,
)
from model.video_legacy import nearest_before
from model.video_plan import ClipPlan, plan_clip

log = logging.getLogger(__name__)

NVDEC_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})  # decoded by NVDEC on every GPU since Ampere
NVDEC_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p"})  # 8-bit 4:2:0: NVDEC's NV12 output
PACKAGE = "PyNvVideoCodec"  # PyPI `pynvvideocodec` (the `gpu` extra)


def nvdec_unavailable() -> str | None:
    """None when NVDEC can run in this process's environment, else why not (for the start-up error and log)."""
    if importlib.util.find_spec(PACKAGE) is None:
        return f"the {PACKAGE} package is not installed (pip install 'adafocus-serve[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return None


def sample_clip_nvdec(source: Source, num_frames: int, size: int, limits: DecodeLimits = DecodeLimits()) -> Clip:
    """``sample_clip`` with the frames decoded by NVDEC; the CPU decoder for what NVDEC cannot take."""
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be positive, got {num_frames}, {size}")
    started = time.monotonic()
    check_source(source, limits)
    try:
        with open_container(source) as container:
            stream = video_stream(container, limits)
            plan = plan_clip(container, stream, num_frames, limits, started)
            why = _not_for_nvdec(container, stream, plan)
            template = _template(container, stream) if why is None else None
    except av.FFmpegError:
        why = "the CPU decoder reports the error"
    if why is None and template is None:
        why = "no frame decodes on the CPU"
    if why is not None or template is None:
        log.debug("NVDEC cannot take this upload (%s): the CPU decoder", why)
        return sample_clip(source, num_frames, size, limits)
    try:
        return _decode_on_gpu(source, plan, size, template, limits, started)
    except DecodeError:
        raise
    except Exception as exc:  # PyNvVideoCodec's own exceptions: this stream is not NVDEC's; the CPU may manage it
        _Session.decoder = None  # a fresh hardware session for the next upload, not one left mid-stream
        log.warning("NVDEC failed on an upload (%s: %s); decoding it on the CPU", type(exc).__name__, exc)
        return sample_clip(source, num_frames, size, limits)


def _not_for_nvdec(container: av.container.InputContainer, stream: Any, plan: ClipPlan) -> str | None:
    ctx = stream.codec_context
    if ctx.name not in NVDEC_CODECS:
        return f"codec {ctx.name}"
    if not set(container.format.name.split(",")) & SEEKABLE_FORMATS:
        return f"container {container.format.name}"
    if ctx.format is None or ctx.format.name not in NVDEC_PIXEL_FORMATS:
        return f"pixel format {None if ctx.format is None else ctx.format.name}"
    if not plan.timed or plan.sampling == "legacy":
        return "no timestamps" if not plan.timed else "legacy sampling"
    return None


def _template(container: av.container.InputContainer, stream: Any) -> av.VideoFrame | None:
    """The stream's first frame decoded on the CPU (one keyframe's cost): it carries what ``to_rgb`` reads besides
    the pixels (rotation, chroma siting, colour range), so NVDEC's pictures are written into it."""
    container.seek(0, backward=True, any_frame=False, stream=stream)
    for frame in container.decode(stream):
        return frame if frame.format.name in NVDEC_PIXEL_FORMATS else None
    return None


def target_indices(plan: ClipPlan) -> list[int]:
    """The plan's targets as frame indices in presentation order (what ``SimpleDecoder`` indexes), sorted, once
    each."""
    keys = plan.index.keys  # (N,) timestamps, sorted
    return sorted({int(np.searchsorted(keys, t)) for t in plan.targets})


def _decode_on_gpu(
    source: Source, plan: ClipPlan, size: int, template: av.VideoFrame, limits: DecodeLimits, started: float
) -> Clip:
    indices = target_indices(plan)
    with _as_file(source) as path:
        planes = _nvdec_frames(path, indices)  # (H * 3 / 2, W) uint8 NV12 each
    check_time(started, limits)
    scaler = VideoReformatter()
    keys = plan.index.keys
    picked: dict[int, np.ndarray] = {}
    for index, nv12 in zip(indices, planes, strict=True):
        picked[int(keys[index])] = to_rgb(fill_from_nv12(template, nv12), size, scaler)  # (size, size, 3)
    last = picked[max(picked)]
    frames = np.stack([picked.get(t, nearest_before(picked, t, last)) for t in plan.targets])  # (T, size, size, 3)
    return Clip(frames, plan.sampling, plan.max_offset_s, len(indices), backend="nvdec")


def fill_from_nv12(frame: av.VideoFrame, nv12: np.ndarray) -> av.VideoFrame:
    """``frame`` (planar YUV 4:2:0, H x W) with its pixels replaced by an NV12 picture: (Hc * 3 / 2, Wc) uint8, Y
    rows then interleaved UV rows, Hc >= H and Wc >= W (a decoder may pad to its coded size)."""
    h, w = frame.height, frame.width
    coded = nv12.shape[0] * 2 // 3  # Hc: where the UV rows start
    if nv12.shape[0] < h * 3 // 2 or nv12.shape[1] < w or coded < h:
        raise ValueError(f"an NV12 picture of shape {nv12.shape} cannot hold a {w}x{h} frame")
    uv = nv12[coded : coded + (h + 1) // 2, : (w + 1) // 2 * 2].reshape((h + 1) // 2, -1, 2)  # (H/2, W/2, 2)
    for plane, pixels in zip(frame.planes, (nv12[:h, :w], uv[..., 0], uv[..., 1]), strict=True):
        rows = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size]  # type: ignore[call-overload]
        rows.reshape(plane.height, plane.line_size)[:, : plane.width] = pixels[: plane.height, : plane.width]
    return frame


class _as_file:
    """The upload as a file path (``SimpleDecoder`` reads files): the spooled file itself, or the bytes in a
    temporary file that is gone once the decode ends (on disk, not /dev/shm)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._tmp: Any = None

    def __enter__(self) -> str:
        if not isinstance(self.source, bytes):
            return str(Path(self.source))
        self._tmp = tempfile.NamedTemporaryFile(prefix="adafocus-nvdec-", suffix=".bin")
        self._tmp.write(self.source)
        self._tmp.flush()
        return str(self._tmp.name)

    def __exit__(self, *_: object) -> None:
        if self._tmp is not None:
            self._tmp.close()


class _Session:
    """This process's NVDEC decoder, made on the first clip and reconfigured for each next one (a new
    ``SimpleDecoder`` per clip would create a hardware session each time)."""

    # NOTE(w21): one per decoder worker process, deliberately process-global: the hardware session is the
    # process's, like its CUDA context; the pool's workers never share one.
    decoder: Any = None


def _nvdec_frames(path: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The frames at ``indices`` (presentation order) decoded by NVDEC, copied to host memory as NV12."""
    import PyNvVideoCodec as nvc
    from torch.utils.dlpack import from_dlpack

    if _Session.decoder is None:
        _Session.decoder = nvc.SimpleDecoder(
            path, gpu_id=0, use_device_memory=True, max_width=4096, max_height=4096,
            output_color_type=nvc.OutputColorType.NATIVE,
        )
    else:
        _Session.decoder.reconfigure_decoder(path)
    frames = _Session.decoder.get_batch_frames_by_index(list(indices))
    planes = [from_dlpack(f).cpu().numpy() for f in frames]  # (H * 3 / 2, W) uint8 each
    if len(planes) != len(indices) or any(p.ndim != 2 or p.shape[0] % 3 for p in planes):
        raise RuntimeError(f"NVDEC returned {len(planes)} frames of shapes {[p.shape for p in planes][:2]}")
    return planes
