"""The configuration of one ``adafocus train`` run (``TrainConfig``, a frozen dataclass validated at construction)
and the names it is checked against: the stages of the recipe (``model.training.train``) and the modules a
learning-rate multiplier may name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from model.config import AdaFocusConfig
from model.data.datasets import DataSpec

STAGES = (
    "pretrain_glance", "pretrain_local_still", "pretrain_local", "pretrain_glance_clip", "placement",
    "policy", "deep_feature", "pixel", "random", "policy_only",
)  # fmt: skip
NEEDS_TARGETS = ("pretrain_local", "placement")
STILL_STAGES = ("pretrain_glance", "pretrain_local_still")  # trained on stills (model.data.stills): fashion only
MODULES = ("global_encoder", "local_encoder", "policy", "classifier", "global_aux", "local_aux")


@dataclass(frozen=True)
class TrainConfig:
    model: AdaFocusConfig
    data: DataSpec
    stages: tuple[tuple[str, int], ...] = (("pretrain_local", 300), ("policy", 600), ("deep_feature", 300))
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_mult: tuple[tuple[str, float], ...] = (("policy", 0.1),)  # paper stages only; module -> multiplier
    warmup_steps: int = 20
    entropy_bonus: float = 0.01
    policy_reward: Literal["marginal", "own"] = "marginal"  # policy stage: see model.training.train's docstring
    own_reward_weight: float = 0.5  # weight of the cube's own auxiliary CE in the marginal reward
    centred_fraction: float = 0.25  # share of random-branch cubes put on the target (synthetic data only)
    jitter: int = 4  # pixels of random offset of a target-centred cube
    # weight of the hit-rate term (objectives.placement_loss: heatmap mass on the product's cells; generated
    # benchmarks only) in the policy and paper stages; 0 = off (the recipe of the shipped bundle)
    placement_weight: float = 0.0
    # (glance | local, path) torchvision-format state dicts the encoders start from (model.pretrained)
    backbone_weights: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name, steps in self.stages:
            if name not in STAGES:
                raise ValueError(f"unknown stage {name!r}; choose from {STAGES}")
            if steps < 0:
                raise ValueError(f"stage {name} has negative steps")
            if name in NEEDS_TARGETS and not self.data.is_generated:
                raise ValueError(f"stage {name} needs target locations: generated benchmarks only")
            if name in STILL_STAGES and self.data.source != "fashion":
                raise ValueError(f"stage {name} trains on stills of the fashion benchmark: --data fashion only")
        if self.placement_weight < 0:
            raise ValueError(f"placement_weight must be >= 0, got {self.placement_weight}")
        if self.policy_reward not in ("marginal", "own"):
            raise ValueError(f"policy_reward must be 'marginal' or 'own', got {self.policy_reward!r}")
        for name, _ in self.lr_mult:
            if name not in MODULES:
                raise ValueError(f"unknown module {name!r} in lr_mult; choose from {MODULES}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.name
        return out
