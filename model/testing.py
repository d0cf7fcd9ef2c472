"""Untrained models and bundles for tests and benchmarks: the one builder, so that nothing needs trained weights.

- ``spread_exit_model``: random weights with the f_C heads and the policy head scaled up, so that predictions, exit
  scores and cube positions spread out over a set of clips (an untrained head gives near-ties everywhere);
- ``reference_exits``: such a model's eval forward pass on clips (every exit's logits and entropy, the centres);
- budget tables: ``exit_budgets`` (``fast`` / ``mid`` / ``full``) from two threshold sets, ``spread_thresholds`` to
  place them between a reference's scores (``spread_budgets``: exact tests) or ``model.exits.quantile_thresholds``
  (timing); ``fixed_budgets`` (``low`` / ``mid`` / ``high``), whose exits do not depend on the weights at all;
- ``untrained_bundle``: a model and its budget table saved as a bundle and loaded back.

The network never imports this module (``tests/test_import_graph.py``: it sits above ``model/``'s root).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import Bundle, load_bundle, save_bundle
from model.config import AdaFocusConfig
from model.exits import score_table
from model.macs import cost_report

# expected GMACs and accuracy of ``exit_budgets``' fast, mid and full: labels only, cheapest first as a table wants
EXIT_BUDGET_FIGURES = ((0.0003, 0.5), (0.0004, 0.6), (0.0006, 0.7))


def spread_exit_model(config: AdaFocusConfig, seed: int = 0) -> AdaFocusV3:
    """An untrained model (eval mode) whose predictions, exit scores and cube positions spread out: random f_C
    heads and policy head scaled up (an untrained head gives near-ties everywhere)."""
    torch.manual_seed(seed)
    model = AdaFocusV3(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.head_weight, std=1.0)
        torch.nn.init.normal_(model.policy.head.weight, std=1.0)
    return model.eval()


@dataclass(frozen=True)
class ExitReference:
    """A model's eval forward pass on N clips (integer crops and skips, as at inference)."""

    logits: torch.Tensor  # (N, K + 1, classes) at every exit
    scores: torch.Tensor  # (N, K + 1) entropy at every exit
    centres: torch.Tensor  # (N, K, 3) the cube centres (x, y, t) in [0, 1]


def reference_exits(model: AdaFocusV3, clips: torch.Tensor) -> ExitReference:
    """``clips`` (N, 3, T, H, W) uint8 through ``model``'s full forward pass."""
    with torch.no_grad():
        out = model(clips)
    logits = out.exit_logits  # (N, K + 1, classes)
    return ExitReference(logits, score_table(logits, "entropy"), out.centres)  # scores (N, K + 1)


def spread_thresholds(scores: torch.Tensor, per_exit: int) -> tuple[float, ...]:
    """Entropy thresholds that let about ``per_exit`` of the remaining clips leave at each exit; each threshold
    sits halfway between two scores so fp32 noise cannot flip an exit. ``scores`` (N, K + 1)."""
    N, E = scores.shape
    remaining = torch.ones(N, dtype=torch.bool)
    out = []
    for k in range(E - 1):
        s = scores[remaining, k].sort().values
        eta = float((s[per_exit - 1] + s[per_exit]) / 2) if len(s) > per_exit else float(s[-1]) + 1.0
        remaining &= scores[:, k] > eta
        out.append(eta)
    return (*out, 0.0)


def exit_budgets(fast: Sequence[float], mid: Sequence[float], default: str = "mid") -> BudgetTable:
    """Entropy levels ``fast`` and ``mid`` with these thresholds (eta_0 .. eta_K), and ``full`` (no early exit)."""
    thresholds = (tuple(fast), tuple(mid), (0.0,) * len(fast))
    levels = tuple(
        BudgetLevel(name, eta, gmacs, accuracy)
        for name, eta, (gmacs, accuracy) in zip(("fast", "mid", "full"), thresholds, EXIT_BUDGET_FIGURES, strict=True)
    )
    return BudgetTable("entropy", levels, default)


def spread_budgets(scores: torch.Tensor, default: str = "mid") -> BudgetTable:
    """``exit_budgets`` placed between the clips' ``scores`` (N, K + 1): about 3 (``fast``) and 1 (``mid``) of the
    remaining clips leave at each exit."""
    return exit_budgets(spread_thresholds(scores, 3), spread_thresholds(scores, 1), default)


def fixed_budgets(model: AdaFocusV3) -> BudgetTable:
    """Levels whose exits do not depend on the weights: ``low`` always exits after the glance, ``mid`` after one
    cube, ``high`` never early (all K cubes); expected GMACs are the model's own costs at those exits."""
    costs, exits = cost_report(model), model.config.num_cubes + 1
    always = math.log(model.config.num_classes) + 1.0  # entropy never exceeds ln(classes)
    levels = (
        BudgetLevel("low", (always,) * exits, costs.exit_gmacs[0], 0.3),
        BudgetLevel("mid", (0.0,) + (always,) * (exits - 1), costs.exit_gmacs[1], 0.5),
        BudgetLevel("high", (0.0,) * exits, costs.exit_gmacs[-1], 0.7),
    )
    return BudgetTable("entropy", levels, default="high")


def untrained_bundle(path: Path, model: AdaFocusV3, budgets: BudgetTable, card: str | None = None) -> Bundle:
    """``model`` and ``budgets`` saved as a bundle at ``path``, loaded back (hash-checked) as a server loads it."""
    text = card or f"# untrained {model.config.name} bundle for tests and benchmarks (random weights)\n"
    return load_bundle(save_bundle(path, model, budgets, text))
