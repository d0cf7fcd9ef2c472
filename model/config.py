"""AdaFocusV3 configuration: one frozen dataclass, named variants, and JSON round trip for bundles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from model.backbones import MobileNetV2Config, ResNetConfig

# The ten Fashion-MNIST classes (model/data/fashion.py draws its clips from them): the labels of the variants
# sized for the moving Fashion-MNIST benchmark, the shipped model's.
FASHION_LABELS = (
    "t_shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

@dataclass(frozen=True)
class AdaFocusConfig:
    name: str
    num_classes: int
    num_frames: int  # T frames sampled uniformly from a video
    frame_size: int  # full-resolution side (H = W) the frames are resized to; cubes are cropped here
    glance_size: int  # side of the frames the global encoder f_G sees
    glance: MobileNetV2Config
    local: ResNetConfig
    cube_size: int  # cube height = width, in full-resolution pixels
    cube_frames: int  # cube duration t, in frames
    num_cubes: int  # K, the maximum number of cubes per video
    policy_hidden: int = 64  # channels of the heatmap policy's 3D convolutions
    classifier_hidden: int = 1024  # width of f_C's per-step MLP (4096 in the authors' code)
    dropout: float = 0.2
    skip_covered_frames: bool = False  # paper 4.1: skip a cube whose frames earlier cubes already covered
    # f_G's clip feature: mean over (T, h, w), or mean and max concatenated (a small object can dominate the max)
    glance_pool: Literal["mean", "mean_max"] = "mean"
    # how the K centres come out of the K heatmaps: each one's soft-argmax, or (not in the paper) cube k takes the
    # best frame of heatmap k among the frames cubes 1..k-1 left free, then the soft-argmax within that frame
    placement: Literal["soft_argmax", "distinct_frames"] = "soft_argmax"
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if not 0 < self.cube_size <= self.frame_size:
            raise ValueError(f"cube_size {self.cube_size} must be in (0, frame_size={self.frame_size}]")
        if not 0 < self.cube_frames <= self.num_frames:
            raise ValueError(f"cube_frames {self.cube_frames} must be in (0, num_frames={self.num_frames}]")
        if self.num_cubes < 1:
            raise ValueError("num_cubes must be >= 1")
        if self.glance_pool not in ("mean", "mean_max"):
            raise ValueError(f"glance_pool must be 'mean' or 'mean_max', got {self.glance_pool!r}")
        if self.placement not in ("soft_argmax", "distinct_frames"):
            raise ValueError(f"placement must be 'soft_argmax' or 'distinct_frames', got {self.placement!r}")
        if self.placement == "distinct_frames" and self.num_cubes * self.cube_frames > self.num_frames:
            raise ValueError("distinct_frames needs num_cubes * cube_frames <= num_frames")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels or tuple(f"class_{i}" for i in range(self.num_classes))

    def replace(self, **changes: Any) -> AdaFocusConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaFocusConfig:
        data = dict(data)
        glance = data.pop("glance")
        local = data.pop("local")
        glance["setting"] = tuple(tuple(row) for row in glance["setting"])
        local["layers"] = tuple(local["layers"])
        local["stage_strides"] = tuple(local["stage_strides"])
        data["labels"] = tuple(data.get("labels", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(glance=MobileNetV2Config(**glance), local=ResNetConfig(**local), **data)


def _tiny() -> AdaFocusConfig:
    """A few thousand parameters: a forward pass in milliseconds on CPU, for tests."""
    return AdaFocusConfig(
        name="tiny",
        num_classes=5,
        num_frames=4,
        frame_size=32,
        glance_size=16,
        glance=MobileNetV2Config(
            width_mult=1.0, setting=((1, 8, 1, 1), (2, 16, 1, 2)), stem_channels=8, last_channel=32
        ),
        local=ResNetConfig("basic", layers=(1,), base_channels=16),
        cube_size=8,
        cube_frames=1,
        num_cubes=3,
        policy_hidden=8,
        classifier_hidden=32,
    )


def _synth() -> AdaFocusConfig:
    """The first shipped model, for the procedural benchmark: 16 frames at 96 px, a 24x24x1 cube, K = 4."""
    return AdaFocusConfig(
        name="synth",
        num_classes=10,
        num_frames=16,
        frame_size=96,
        glance_size=24,
        glance=MobileNetV2Config(
            width_mult=1.0,
            setting=((1, 16, 1, 1), (4, 24, 1, 1), (4, 32, 1, 2), (4, 64, 1, 1)),
            stem_channels=16,
            last_channel=64,
        ),
        local=ResNetConfig("basic", layers=(2,), base_channels=64),
        cube_size=24,
        cube_frames=1,
        num_cubes=4,
        policy_hidden=16,
        classifier_hidden=256,
        labels=tuple(f"pattern_{i:02d}" for i in range(10)),  # the synthetic benchmark's classes (model/data/synth.py)
    )


def _default() -> AdaFocusConfig:
    """The shipped, CPU-servable model for the moving Fashion-MNIST benchmark: 16 frames at 112 px, a 28 px glance,
    K = 6 cubes of 32x32x1 on distinct frames. The cubes dominate the cost, as in the paper."""
    return AdaFocusConfig(
        name="default",
        num_classes=10,
        num_frames=16,
        frame_size=112,
        glance_size=28,
        glance=MobileNetV2Config(
            width_mult=1.0,
            setting=((1, 16, 1, 1), (3, 24, 1, 2), (3, 32, 1, 1), (3, 48, 1, 1)),
            stem_channels=16,
            last_channel=64,
        ),
        local=ResNetConfig("basic", layers=(2, 1), base_channels=64),
        cube_size=32,
        cube_frames=1,
        num_cubes=6,
        policy_hidden=8,
        classifier_hidden=256,
        glance_pool="mean_max",
        placement="distinct_frames",
        labels=FASHION_LABELS,
    )


def _paper_mn2_r50() -> AdaFocusConfig:
    """The paper's ActivityNet setting: 18 frames at 224, MobileNetV2 glance at 224, ResNet-50 on 128^2x1."""
    return AdaFocusConfig(
        name="paper-mn2-r50",
        num_classes=200,
        num_frames=18,
        frame_size=224,
        glance_size=224,
        glance=MobileNetV2Config(),
        local=ResNetConfig("bottleneck", (3, 4, 6, 3)),
        cube_size=128,
        cube_frames=1,
        num_cubes=18,
        policy_hidden=64,
        classifier_hidden=4096,
        skip_covered_frames=True,
    )


NAMED_CONFIGS = {"tiny": _tiny, "default": _default, "synth": _synth, "paper-mn2-r50": _paper_mn2_r50}


def get_config(name: str) -> AdaFocusConfig:
    try:
        return NAMED_CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(NAMED_CONFIGS)}") from None
