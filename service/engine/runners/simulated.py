"""A simulated accelerator: a runner whose every call takes the time a stated cost curve gives, t(b) = a + c * b
seconds for b samples, per stage. The wrapped runner (a small model on the CPU) still computes, so the outputs are
well-formed and requests exit where that model says; the call then sleeps until t(b) has passed. Used by
``adafocus bench engine --runner simulated`` (the flat regime of an accelerator, measured on a CPU machine) and
by the fleet benchmark (a fixed time per call, so that N replicas on 2 cores scale as N devices would). Every
figure it produces is a simulation, and the benchmarks label it so.

The default profile, ``PAPER_V100``: the paper configuration (``paper-mn2-r50``: MobileNetV2 glance on 18 frames
at 224 px, ResNet-50 on 128 px cubes) on one V100, from published measurements:
- ResNet-50 v1.5, PyTorch, mixed precision, one V100 16 GB (NVIDIA DeepLearningExamples,
  PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Inference performance: NVIDIA DGX-1 (1x V100 16GB)",
  pytorch-21.03 NGC container), mean latency per batch at 224 px: 12.78 ms at batch 1, 13.65 at 8, 15.84 at 32,
  23.18 at 64, 43.55 at 128, 84.14 at 256. The slope between 128 and 256 is c = 0.317 ms per 224 px image; the
  fixed part is a = 12.78 - 0.32 = 12.5 ms per call (eager PyTorch's launch-bound floor).
- MobileNetV2 against ResNet-50, per image at 224 px: 10810 vs 4218 images/s (timm's published inference
  benchmark, results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv, batch 1024, AMP): 0.390 of ResNet-50's
  time per image.
So the glance costs a = 12.5 ms plus c = 18 frames x 0.390 x 0.317 = 2.23 ms per video, and a focus call a = 12.5 ms
plus c = 0.317 x (128 / 224)^2 = 0.104 ms per cube (ResNet-50's cost scales with the pixels: 1.34 vs 4.09 GMACs).
The same fixed part is assumed for both stages; the policy network and the classifier heads are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from model.adafocus import FocusState
from model.config import AdaFocusConfig, get_config
from model.exits import GlanceResult
from service.engine.runners.torch_runner import Runner


@dataclass(frozen=True)
class StageTime:
    """t(b) = a + c * b seconds for one call with b samples."""

    a: float  # seconds per call
    c: float  # seconds per sample

    def seconds(self, batch: int) -> float:
        return self.a + self.c * batch


@dataclass(frozen=True)
class StepProfile:
    """The simulated device: the time of a glance call and of a focus call, and where the numbers come from."""

    glance: StageTime
    focus: StageTime
    source: str

    @classmethod
    def fixed(cls, seconds: float) -> StepProfile:
        """Every call takes ``seconds``, whatever its batch (the fleet benchmark's stand-in accelerator)."""
        return cls(StageTime(seconds, 0.0), StageTime(seconds, 0.0), f"every call {seconds * 1000:g} ms")

    @property
    def label(self) -> str:
        """``glance 12.5+2.23b ms, focus 12.5+0.104b ms``: the curve, for logs and benchmark tables."""
        g, f = self.glance, self.focus
        return f"glance {g.a * 1e3:.3g}+{g.c * 1e3:.3g}b ms, focus {f.a * 1e3:.3g}+{f.c * 1e3:.3g}b ms"


PAPER_V100 = StepProfile(
    StageTime(12.5e-3, 2.23e-3),
    StageTime(12.5e-3, 0.104e-3),
    "paper-mn2-r50 on one V100 (ResNet-50: NVIDIA DeepLearningExamples, AMP; MobileNetV2/ResNet-50: timm benchmark)",
)
PROFILE_KEYS = ("a", "c", "glance_a", "glance_c", "focus_a", "focus_c")  # milliseconds; a, c set both stages


def parse_profile(spec: str, base: StepProfile = PAPER_V100) -> StepProfile:
    """``a=12.5,c=0.1`` (milliseconds; ``a``/``c`` for both stages, ``glance_a``... for one) over ``base``; ``""``
    is ``base`` itself. ValueError for an unknown key or a value that is not a non-negative number."""
    glance, focus = base.glance, base.focus
    if not spec:
        return base
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in PROFILE_KEYS:
            raise ValueError(f"simulated runner: {item!r} is not one of {PROFILE_KEYS} = milliseconds")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"simulated runner: {key}={value!r} is not a number of milliseconds") from None
        if not ms >= 0:
            raise ValueError(f"simulated runner: {key} must be >= 0 ms, got {value}")
        part = key.rpartition("_")[2]
        if key.startswith("glance") or key in ("a", "c"):
            glance = replace(glance, **{part: ms / 1e3})
        if key.startswith("focus") or key in ("a", "c"):
            focus = replace(focus, **{part: ms / 1e3})
    return StepProfile(glance, focus, f"stated: {spec}")


def tiny_layers(config: AdaFocusConfig) -> AdaFocusConfig:
    """``config``'s exit structure (frames, cubes, their placement and skips, classes) with the tiny model's layers
    and sizes: what the simulated runner wraps, so that requests exit over ``config``'s K cubes while the CPU
    computes little (the runner's profile, not this model, sets the time of every call)."""
    tiny = get_config("tiny")
    if config.name == tiny.name:
        return config
    return config.replace(
        name=f"{config.name}@tiny-layers",
        frame_size=tiny.frame_size,
        glance_size=tiny.glance_size,
        glance=tiny.glance,
        local=tiny.local,
        cube_size=tiny.cube_size,
        policy_hidden=tiny.policy_hidden,
        classifier_hidden=tiny.classifier_hidden,
    )


class SimulatedRunner:
    """``inner``'s outputs, each call padded with sleep to the time ``profile`` gives for its batch.

    ``overruns`` counts the calls whose own compute took longer than that (their time is then the compute's)."""

    def __init__(
        self,
        inner: Runner,
        profile: StepProfile,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner, self.profile = inner, profile
        self.name = f"simulated({inner.name})"
        self.device = inner.device
        self.clock, self.sleep = clock, sleep
        self.overruns = 0

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        start = self.clock()
        out = self.inner.glance(frames_small)
        self._pad(start, self.profile.glance.seconds(frames_small.shape[0]))
        return out

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        start = self.clock()
        out = self.inner.focus(cubes, state)
        self._pad(start, self.profile.focus.seconds(cubes.shape[0]))
        return out

    def _pad(self, start: float, target: float) -> None:
        left = target - (self.clock() - start)
        if left > 0:
            self.sleep(left)
        else:
            self.overruns += 1
