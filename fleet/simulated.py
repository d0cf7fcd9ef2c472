"""A runner whose every model call takes a fixed wall time: a stand-in accelerator for fleet benchmarks, so that N
replicas on a 2-core machine scale as N devices would (the calls sleep; the real tiny model still computes)."""

from __future__ import annotations

import time

import torch

from model.adafocus import FocusState
from model.exits import GlanceResult
from service.engine.runners.torch_runner import Runner


class SimulatedStep:
    def __init__(self, inner: Runner, step_s: float) -> None:
        self.inner, self.step_s = inner, step_s
        self.name = f"{inner.name}+sleep{step_s * 1000:g}ms"
        self.device = inner.device

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        start = time.monotonic()
        out = self.inner.glance(frames_small)
        time.sleep(max(0.0, self.step_s - (time.monotonic() - start)))
        return out

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        start = time.monotonic()
        out = self.inner.focus(cubes, state)
        time.sleep(max(0.0, self.step_s - (time.monotonic() - start)))
        return out
