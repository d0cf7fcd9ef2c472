"""Hand-made threshold sets for tests: exits that spread over a small set of clips."""

from __future__ import annotations

import torch


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
