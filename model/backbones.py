"""Plain-PyTorch MobileNetV2 and ResNet with torchvision's parameter names.

torchvision does not import on the CPU-only torch build used here, so the two families are written out.
Every parameter name and shape follows torchvision, so a torchvision state dict loads with ``strict=True``.
Each network exposes its last feature map through ``forward_features``; ``forward_head`` pools and classifies.
Configurations are frozen dataclasses so that tiny variants (for tests and the CPU-served model) are data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

# (expand ratio t, output channels c, repeats n, first stride s), torchvision's MobileNetV2 table.
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never below 90% of ``value``."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class MobileNetV2Config:
    width_mult: float = 1.0
    setting: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2_SETTING
    stem_channels: int = 32  # before the width multiplier
    last_channel: int = 1280  # before the width multiplier (never shrunk below 1280 * 1.0 for width >= 1)
    round_nearest: int = 8


@dataclass(frozen=True)
class ResNetConfig:
    block: Literal["basic", "bottleneck"] = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)  # blocks per stage; fewer than 4 stages is allowed
    base_channels: int = 64  # planes of the first stage; doubles at every later stage
    width_per_group: int = 64  # torchvision's wide-ResNet knob (bottleneck only)
    maxpool: bool = True
    stage_strides: tuple[int, ...] = field(default=(1, 2, 2, 2))


class ConvBNActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation`` (keys ``0`` conv, ``1`` bn) with ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden, kernel=1))
        layers += [
            ConvBNActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, config: MobileNetV2Config = MobileNetV2Config(), num_classes: int = 0) -> None:
        super().__init__()
        width = config.width_mult
        input_channel = make_divisible(config.stem_channels * width, config.round_nearest)
        self.out_channels = make_divisible(config.last_channel * max(1.0, width), config.round_nearest)
        features: list[nn.Module] = [ConvBNActivation(3, input_channel, stride=2)]
        for t, c, n, s in config.setting:
            output_channel = make_divisible(c * width, config.round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, self.out_channels, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier: nn.Module = (
            nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_channels, num_classes))
            if num_classes > 0
            else nn.Identity()
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, C, h, w)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats.mean(dim=(2, 3)))  # (N, classes) or (N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig = ResNetConfig(), num_classes: int = 0) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if config.block == "basic" else Bottleneck
        self.inplanes = config.base_channels
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if config.maxpool else nn.Identity()
        self.num_stages = len(config.layers)
        self.stage_strides = config.stage_strides[: self.num_stages]
        for i, blocks in enumerate(config.layers):
            planes = config.base_channels * 2**i
            stage = self._make_layer(block, planes, blocks, config.stage_strides[i], config)
            self.add_module(f"layer{i + 1}", stage)
        self.out_channels = self.inplanes
        self.fc: nn.Module = nn.Linear(self.out_channels, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        cfg: ResNetConfig,
    ) -> nn.Sequential:
        width = int(planes * cfg.width_per_group / 64)
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def total_stride(self) -> int:
        """Pixels per feature cell of the last map (for the deep-feature crop)."""
        stride = 2 * (2 if isinstance(self.maxpool, nn.MaxPool2d) else 1)
        for s in self.stage_strides:
            stride *= s
        return stride

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, C0, H/4, W/4)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x  # (N, C, h, w)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming for convs, BN to identity, small normal for linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(MobileNetV2Config(width_mult=width_mult), num_classes)


def resnet18(num_classes: int = 1000, width_per_group: int = 64) -> ResNet:
    return ResNet(ResNetConfig("basic", (2, 2, 2, 2), width_per_group=width_per_group), num_classes)


def resnet34(num_classes: int = 1000, width_per_group: int = 64) -> ResNet:
    return ResNet(ResNetConfig("basic", (3, 4, 6, 3), width_per_group=width_per_group), num_classes)


def resnet50(num_classes: int = 1000, width_per_group: int = 64) -> ResNet:
    return ResNet(ResNetConfig("bottleneck", (3, 4, 6, 3), width_per_group=width_per_group), num_classes)


def build_backbone(config: MobileNetV2Config | ResNetConfig) -> MobileNetV2 | ResNet:
    """The feature extractor (no classification head) for a backbone configuration."""
    if isinstance(config, MobileNetV2Config):
        return MobileNetV2(config, num_classes=0)
    return ResNet(config, num_classes=0)
