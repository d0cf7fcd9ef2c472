"""Compute accounting in multiply-adds (the paper's "GFLOPs"), counted by running each stage once.

Forward hooks count the multiply-adds of every convolution and linear layer (the layers the authors' constants
count); element-wise work (BN, activations, pooling, softmax) is left out, as in the paper. The figures are
exact for the configured input sizes and independent of weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from model.adafocus import AdaFocusV3
from model.backbones import MobileNetV2, ResNet
from model.config import AdaFocusConfig


@contextmanager
def count_macs(module: nn.Module) -> Iterator[list[int]]:
    """Within the block, multiply-adds of conv/linear layers under ``module`` accumulate in the list's item."""
    total = [0]

    def conv_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        kernel = math.prod(m.kernel_size) * (m.in_channels // m.groups)
        total[0] += output.numel() * kernel

    def linear_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(m, nn.Linear)
        total[0] += output.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def measure_gmacs(module: nn.Module, fn: Callable[[], object], batch: int = 1) -> float:
    """GMACs per sample of ``fn()`` (which runs ``module`` on a batch of ``batch``)."""
    with torch.no_grad(), count_macs(module) as total:
        fn()
    return total[0] / batch / 1e9


def backbone_gmacs(backbone: MobileNetV2 | ResNet, size: int) -> float:
    """GMACs of a backbone's feature extractor on one ``size`` x ``size`` image (no ImageNet head: this is
    how the authors' per-frame constants count, e.g. MobileNetV2 at 224 = 0.2995, ResNet-50 at 128 = 1.3346)."""
    backbone.eval()
    x = torch.zeros(1, 3, size, size)
    return measure_gmacs(backbone, lambda: backbone.forward_features(x))


@dataclass(frozen=True)
class CostReport:
    config: str
    glance_backbone_gmacs_per_frame: float  # f_G's feature extractor on one glance frame
    local_backbone_gmacs_per_cube: float  # f_L's feature extractor on one cube (t frames)
    glance_gmacs: float  # whole glance: f_G on T frames + policy + exit-0 classifier
    policy_gmacs: float
    focus_step_gmacs: float  # one cube through f_L + one classifier step
    classifier_step_gmacs: float
    exit_gmacs: list[float]  # cumulative cost of stopping after 0..K cubes

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cost_report(model: AdaFocusV3) -> CostReport:
    cfg: AdaFocusConfig = model.config
    was_training = model.training
    model.eval()
    try:
        frames = torch.zeros(1, 3, cfg.num_frames, cfg.glance_size, cfg.glance_size)
        glance_total = measure_gmacs(model, lambda: model.glance(frames))
        out = model.glance(frames)
        policy = measure_gmacs(model.policy, lambda: model.glance(frames))
        cube = torch.zeros(1, 3, cfg.cube_frames, cfg.cube_size, cfg.cube_size, dtype=torch.uint8)
        focus_total = measure_gmacs(model, lambda: model.focus(cube, out.state))
        classifier = measure_gmacs(model.classifier, lambda: model.focus(cube, out.state))
        # the gathered per-exit head is an einsum, not an nn.Linear: add its multiply-adds by hand
        head = cfg.classifier_hidden * cfg.num_classes / 1e9
        glance_total += head
        focus_total += head
        classifier += head
        per_frame = backbone_gmacs(model.global_encoder, cfg.glance_size)
        per_cube = cfg.cube_frames * backbone_gmacs(model.local_encoder, cfg.cube_size)
    finally:
        model.train(was_training)
    return CostReport(
        config=cfg.name,
        glance_backbone_gmacs_per_frame=per_frame,
        local_backbone_gmacs_per_cube=per_cube,
        glance_gmacs=glance_total,
        policy_gmacs=policy,
        focus_step_gmacs=focus_total,
        classifier_step_gmacs=classifier,
        exit_gmacs=[glance_total + k * focus_total for k in range(cfg.num_cubes + 1)],
    )
