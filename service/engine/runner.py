"""Model runners: the one small protocol the engine drives, and the PyTorch implementation.

A runner owns the accelerator-side model and is called from the engine's single runner thread only.
Backends, dtypes and devices are chosen once, in the constructor; ``glance`` and ``focus`` do no set-up work.
Inputs and outputs are torch tensors on ``runner.device`` so that cube cropping (an integer gather on the
full-resolution uint8 frames) happens on the same device as the model.
"""

from __future__ import annotations

from typing import Protocol

import torch

from model.adafocus import AdaFocusV3, FocusState
from model.exits import GlanceResult, StagedModel


class Runner(StagedModel, Protocol):
    """The staged model API (``glance``, ``focus``: ``model.exits.StagedModel``) on one device, chosen once."""

    name: str  # "torch" or "onnx"
    device: torch.device


class TorchRunner:
    """Eager PyTorch in inference mode on one device."""

    name = "torch"

    def __init__(self, model: AdaFocusV3, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        return self.model.glance(frames_small)

    @torch.inference_mode()
    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        return self.model.focus(cubes, state)
