"""Which decoder the pool's workers run, chosen once at start-up: ``ADAFOCUS_DECODER=cpu|nvdec|auto``.

``cpu``: PyAV (``model.video.sample_clip``). ``nvdec``: NVIDIA's hardware decoder (``model.video_nvdec``), refused
at start-up with the reason when this host cannot run it (no PyNvVideoCodec, no CUDA device). ``auto``: NVDEC when
it can run, else the CPU, and the log says which and why. Either way the workers stay processes of the same pool
(a crash or hang costs one request), and an upload NVDEC cannot take is decoded on the CPU (``Decoded.backend``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from model.video import sample_clip
from model.video_nvdec import nvdec_unavailable, sample_clip_nvdec
from service.decode.pool import JobFn

DecoderSetting = Literal["cpu", "nvdec", "auto"]
Backend = Literal["cpu", "nvdec"]


class DecoderUnavailable(RuntimeError):
    """``ADAFOCUS_DECODER=nvdec`` on a host where NVDEC cannot run."""


@dataclass(frozen=True)
class DecoderChoice:
    backend: Backend
    job_fn: JobFn  # what each decoder worker runs per upload
    reason: str  # why this one (for the start-up log)


def choose_decoder(setting: DecoderSetting, unavailable: Callable[[], str | None] = nvdec_unavailable) -> DecoderChoice:
    """The decoder for ``setting``; ``unavailable`` says why NVDEC cannot run here (None: it can)."""
    if setting == "cpu":
        return DecoderChoice("cpu", sample_clip, "ADAFOCUS_DECODER=cpu")
    why = unavailable()
    if why is None:
        return DecoderChoice("nvdec", sample_clip_nvdec, f"ADAFOCUS_DECODER={setting}: NVDEC is available")
    if setting == "nvdec":
        raise DecoderUnavailable(f"ADAFOCUS_DECODER=nvdec, but NVDEC cannot run here: {why}")
    return DecoderChoice("cpu", sample_clip, f"ADAFOCUS_DECODER=auto: {why}, so the CPU decoder")
