"""The one exit rule and the one staged exit loop: used by the engine, calibration, ONNX validation, benchmarks.

Exit rule: a sample leaves at the first exit whose score passes that exit's threshold (``model.budgets``:
entropy <= eta_k, or max probability >= eta_k); exit K always stops. ``first_exit`` applies it to a table of
scores (torch), ``exits_taken`` to a numpy table, ``passes`` to one score, and ``skip_covered`` steps an
in-flight sample past cubes that earlier cubes already covered (the engine, one step at a time).

Staged loop: ``staged_exit_logits`` runs ``glance`` then ``focus`` K times through anything with the staged model
API (the model itself, a serving runner), skipping covered cubes exactly as ``AdaFocusV3.forward`` does in eval
mode, and returns the logits of every exit.

``quantile_thresholds`` places a threshold set at a quantile of each exit's scores (benchmark workloads; the
untrained spread-exit models of tests and benchmarks are ``model.testing``'s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch

from model.adafocus import AdaFocusV3, FocusState
from model.budgets import Criterion, exit_scores, should_exit

QuantileMode = Literal["linear", "lower"]


class GlanceResult(Protocol):
    @property
    def centres(self) -> torch.Tensor: ...  # (B, K, 3) cube centres (x, y, t) in [0, 1]

    @property
    def logits(self) -> torch.Tensor: ...  # (B, classes) exit-0 logits

    @property
    def state(self) -> FocusState: ...


class StagedModel(Protocol):
    """The staged model API (DESIGN.md): ``AdaFocusV3`` itself and every serving runner have it."""

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        """frames_small (B, 3, T, g, g) float pixels in [0, 255] -> centres, exit-0 logits, state."""
        ...

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        """cubes (B, 3, t, h, w) uint8 -> (logits (B, classes), next state); mixed step indices allowed."""
        ...


# ------------------------------------------------------------------------------------------------ exit rule
def score_table(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """(N, E) exit scores from logits (N, E, classes)."""
    N, E, _ = logits.shape
    return exit_scores(logits.flatten(0, 1), criterion).view(N, E)  # (N, E)


def first_exit(scores: torch.Tensor, thresholds: Sequence[float], criterion: Criterion) -> torch.Tensor:
    """(N,) int64 index of the first exit whose score (N, E) passes its threshold (E,); exit E - 1 always stops."""
    eta = torch.tensor(list(thresholds), dtype=scores.dtype).expand_as(scores)  # (N, E)
    stop = should_exit(scores, eta, criterion)  # (N, E)
    stop[:, -1] = True
    return stop.int().argmax(dim=1)  # (N,) first True


def exits_taken(scores: np.ndarray, thresholds: Sequence[float], criterion: Criterion) -> np.ndarray:
    """``first_exit`` on a numpy table: (N,) exit index of each sample from scores (N, E)."""
    return first_exit(torch.from_numpy(np.asarray(scores, dtype=np.float64)), thresholds, criterion).numpy()


def passes(score: float, threshold: float, criterion: Criterion) -> bool:
    """Does one exit score pass its threshold?"""
    return bool(should_exit(torch.tensor([score]), torch.tensor([threshold]), criterion)[0])


def skip_covered(
    index: int, exited: bool, score: float, skip: Sequence[bool], thresholds: Sequence[float], criterion: Criterion
) -> tuple[int, bool]:
    """A sample just evaluated exit ``index`` (``exited``: it passed there, with ``score``). While it stays and its
    next cube is covered by earlier ones, that cube is skipped: the logits (and so the score) carry over to the
    next exit, which is checked against its own threshold. Returns (exit index reached, exited there)."""
    K = len(thresholds) - 1
    while not exited and index < K and skip[index]:
        index += 1  # cube index-1 is skipped without compute
        exited = passes(score, thresholds[index], criterion)
    return index, exited


# ------------------------------------------------------------------------------------------------ staged loop
def staged_exit_logits(staged: StagedModel, model: AdaFocusV3, clips: torch.Tensor) -> torch.Tensor:
    """Logits at every exit 0..K, (N, K+1, classes), the way inference produces them (covered cubes skipped).

    ``staged`` runs the stages (the model, or a runner over it); ``model`` gives the crop and skip geometry.
    ``clips`` (N, 3, T, H, W) uint8 at full resolution.
    """
    out = staged.glance(model.glance_input(clips))
    skip = model.skip_mask(out.centres)  # (N, K)
    logits, state = [out.logits], out.state
    for k in range(model.config.num_cubes):
        step_logits, new_state = staged.focus(model.crop_cubes(clips, out.centres[:, k]), state)
        keep = skip[:, k : k + 1]  # a skipped cube leaves f_C untouched, as in AdaFocusV3.forward
        logits.append(torch.where(keep, logits[-1], step_logits))
        pooled = torch.where(keep, state.pooled, new_state.pooled)
        state = FocusState(state.global_feats, pooled, new_state.step)
    return torch.stack(logits, dim=1)  # (N, K+1, classes)


# ------------------------------------------------------------------------------------------------ quantiles
def quantile_thresholds(scores: torch.Tensor, q: float, mode: QuantileMode = "linear") -> tuple[float, ...]:
    """Entropy thresholds: exit k (< K) stops the ``q``-fraction of clips with the lowest exit-k entropy (the
    ``q``-quantile of column k of ``scores`` (N, K + 1)); q = 0 means no early exit. The last exit is 0.0."""
    K = scores.shape[1] - 1
    if q <= 0:
        return (0.0,) * (K + 1)
    return (*(float(torch.quantile(scores[:, k], q, interpolation=mode)) for k in range(K)), 0.0)
