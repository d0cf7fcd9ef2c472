"""Model runners: the one small protocol the engine drives, and the PyTorch implementation.

A runner owns the accelerator-side model and is called from the engine's single runner thread only.
Backends, dtypes, memory formats and CUDA graphs are chosen once, in the constructor (``TorchOptions``);
``glance`` and ``focus`` do no set-up work. Inputs and outputs are torch tensors on ``runner.device`` so that cube
cropping (an integer gather on the full-resolution uint8 frames) happens on the same device as the model.
Outputs are float32 whatever the compute dtype: the exit rule and the per-request state never see bf16.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch

from model.adafocus import AdaFocusV3, FocusState, GlanceOutput
from model.exits import StagedModel
from service.engine.config import PRECISIONS, Precision


class Runner(StagedModel, Protocol):
    """The staged model API (``glance``, ``focus``: ``model.exits.StagedModel``) on one device, chosen once."""

    name: str  # "torch" or "onnx"
    device: torch.device


@dataclass(frozen=True, kw_only=True)
class TorchOptions:
    """How the PyTorch runner computes, fixed for the life of the process.

    precision: ``bf16`` runs every stage under ``torch.autocast`` (weights stay float32; outputs are cast back).
    channels_last: the frame encoders' weights in NHWC, so cuDNN picks its NHWC kernels (faster on tensor cores).
    cuda_graphs: each stage is captured once per batch bucket at start-up (``service.engine.runners.cuda_graphs``) and
    replayed; a batch runs in the smallest bucket that holds it. CUDA only.
    """

    precision: Precision = "fp32"
    channels_last: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def label(self) -> str:
        """``fp32``, ``bf16+channels_last+cuda_graphs`` ...: names the variant in logs and benchmark tables."""
        parts: list[str] = [self.precision]
        parts += ["channels_last"] if self.channels_last else []
        parts += ["cuda_graphs"] if self.cuda_graphs else []
        return "+".join(parts)


def float_glance(out: GlanceOutput) -> GlanceOutput:
    """The glance's outputs in float32 (centres, logits, state), whatever dtype computed them."""
    state = FocusState(out.state.global_feats.float(), out.state.pooled.float(), out.state.step)
    return GlanceOutput(out.global_feats.float(), out.centres.float(), out.logits.float(), state, out.policy_logits)


def float_focus(logits: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
    return logits.float(), FocusState(state.global_feats.float(), state.pooled.float(), state.step)


class TorchRunner:
    """PyTorch in inference mode on one device, eager (or under autocast) as ``TorchOptions`` says.

    CUDA graphs are the ``GraphedRunner`` (``service.engine.runners.cuda_graphs``), which wraps one of these."""

    name = "torch"

    def __init__(
        self, model: AdaFocusV3, device: str | torch.device = "cpu", options: TorchOptions = TorchOptions()
    ) -> None:
        self.device = torch.device(device)
        self.options = options
        self.model = model.to(self.device).eval()
        if options.channels_last:  # the 2-D frame encoders' conv weights NHWC (the policy's 3-D convs stay as they are)
            for encoder in (self.model.global_encoder, self.model.local_encoder):
                encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.options.precision == "fp32":
            return contextlib.nullcontext()
        # cache off: a cast weight cached inside a CUDA graph capture would be freed after it
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    @torch.inference_mode()
    def glance(self, frames_small: torch.Tensor) -> GlanceOutput:
        with self.autocast():
            return float_glance(self.model.glance(frames_small))

    @torch.inference_mode()
    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        with self.autocast():
            return float_focus(*self.model.focus(cubes, state))
