"""Runner selection, once at start-up: ``torch``, ``onnx`` or ``auto`` (see the ONNX issue for the latter two)."""

from __future__ import annotations

from typing import Literal

import torch

from model.adafocus import AdaFocusV3
from service.engine.runner import Runner, TorchRunner

Backend = Literal["torch", "onnx", "auto"]


def create_runner(model: AdaFocusV3, backend: Backend = "torch", device: str | torch.device = "cpu") -> Runner:
    """Build the runner the engine will drive for the whole life of the process."""
    if backend == "torch":
        return TorchRunner(model, device)
    raise NotImplementedError(f"backend {backend!r} is not available in this build yet")
