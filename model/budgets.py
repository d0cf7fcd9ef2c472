"""Threshold sets (budget levels) and the exit criterion, shared by calibration, the engine and the exporters.

A level holds one threshold per exit, eta_0 .. eta_K. With the ``entropy`` criterion (paper Sec. 3.4) a sample
stops at exit k when entropy(p_k) <= eta_k; with ``max_prob`` when max(p_k) >= eta_k. Exit K always stops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

Criterion = Literal["entropy", "max_prob"]
CRITERIA: tuple[Criterion, ...] = ("entropy", "max_prob")


class BudgetError(ValueError):
    """A threshold set or budget table that cannot be used."""


@dataclass(frozen=True)
class BudgetLevel:
    name: str
    thresholds: tuple[float, ...]  # eta_0 .. eta_K
    expected_gmacs: float  # mean GMACs/video on the calibration split
    expected_accuracy: float  # accuracy on the calibration split, in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BudgetTable:
    criterion: Criterion
    levels: tuple[BudgetLevel, ...]  # ordered by expected_gmacs, cheapest first
    default: str

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise BudgetError(f"unknown criterion {self.criterion!r}")
        names = [lvl.name for lvl in self.levels]
        if len(set(names)) != len(names):
            raise BudgetError(f"duplicate level names in {names}")
        if self.default not in names:
            raise BudgetError(f"default level {self.default!r} is not one of {names}")

    def get(self, name: str) -> BudgetLevel:
        for level in self.levels:
            if level.name == name:
                return level
        raise BudgetError(f"unknown budget level {name!r}; available: {[lvl.name for lvl in self.levels]}")

    def best_within(self, gmacs: float) -> BudgetLevel:
        """The most accurate level whose expected GMACs/video is within ``gmacs``."""
        fitting = [lvl for lvl in self.levels if lvl.expected_gmacs <= gmacs]
        if not fitting:
            cheapest = min(self.levels, key=lambda lvl: lvl.expected_gmacs)
            raise BudgetError(
                f"no level fits {gmacs:.6g} GMACs/video; the cheapest needs {cheapest.expected_gmacs:.6g}"
            )
        return max(fitting, key=lambda lvl: (lvl.expected_accuracy, -lvl.expected_gmacs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "default": self.default,
            "levels": [lvl.to_dict() for lvl in self.levels],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], num_exits: int | None = None) -> BudgetTable:
        try:
            levels = tuple(
                BudgetLevel(
                    name=str(lvl["name"]),
                    thresholds=validate_thresholds(lvl["thresholds"], num_exits),
                    expected_gmacs=float(lvl["expected_gmacs"]),
                    expected_accuracy=float(lvl["expected_accuracy"]),
                )
                for lvl in data["levels"]
            )
            return cls(criterion=data["criterion"], levels=levels, default=str(data["default"]))
        except (KeyError, TypeError) as exc:
            raise BudgetError(f"malformed budget table: {exc!r}") from exc


def validate_thresholds(values: Any, num_exits: int | None) -> tuple[float, ...]:
    """Thresholds must be a list of ``num_exits`` finite, non-negative numbers."""
    if not isinstance(values, list | tuple) or not values:
        raise BudgetError("thresholds must be a non-empty list of numbers")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise BudgetError(f"thresholds must be numbers: {exc}") from exc
    if num_exits is not None and len(out) != num_exits:
        raise BudgetError(f"expected {num_exits} thresholds (exits 0..{num_exits - 1}), got {len(out)}")
    bad = [v for v in out if not math.isfinite(v) or v < 0]
    if bad:
        raise BudgetError(f"thresholds must be finite and non-negative, got {bad}")
    return out


def exit_scores(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Per-sample score the thresholds compare against: entropy (nats) or max probability; (B,)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, classes)
    if criterion == "entropy":
        return -(log_p.exp() * log_p).sum(-1)  # (B,)
    return log_p.max(-1).values.exp()  # (B,)


def should_exit(scores: torch.Tensor, thresholds: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """(B,) bool from scores (B,) and each sample's own threshold (B,)."""
    if criterion == "entropy":
        return scores <= thresholds
    return scores >= thresholds
