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


class RunnerGlance(Protocol):
    @property
    def centres(self) -> torch.Tensor: ...  # (B, K, 3) cube centres (x, y, t) in [0, 1]

    @property
    def logits(self) -> torch.Tensor: ...  # (B, classes) exit-0 logits

    @property
    def state(self) -> FocusState: ...


class Runner(Protocol):
    name: str  # "torch" or "onnx"
    device: torch.device

    def glance(self, frames_small: torch.Tensor) -> RunnerGlance:
        """frames_small (B, 3, T, g, g) float pixels in [0, 255] -> centres, exit-0 logits, state."""
        ...

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        """cubes (B, 3, t, h, w) uint8 -> (logits (B, classes), next state); mixed step indices allowed."""
        ...


class TorchRunner:
    """Eager PyTorch in inference mode on one device."""

    name = "torch"

    def __init__(self, model: AdaFocusV3, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def glance(self, frames_small: torch.Tensor) -> RunnerGlance:
        return self.model.glance(frames_small)

    @torch.inference_mode()
    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        return self.model.focus(cubes, state)
