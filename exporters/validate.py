"""The export's self-check against PyTorch: output differences and early-exit decisions.

Three checks, all through the staged model API (``model.exits.StagedModel``: PyTorch is the model itself, and the
ONNX Runtime runner the service serves with is what is checked):
1. random inputs: max abs difference of every glance and focus output (focus with mixed step indices);
2. real inputs: the same on synthetic clips, the focus graph at every step k = 1..K on the cubes the policy picked;
3. decisions: every budget level's thresholds applied to both runners' exits on the clips; the predicted labels
   and exit steps must be identical.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import PARITY_REPORT, model_specs
from exporters.onnx_runner import OnnxRunner
from model.adafocus import AdaFocusV3, FocusState
from model.budgets import BudgetTable, Criterion
from model.config import AdaFocusConfig
from model.data.datasets import benchmark_clips
from model.exits import StagedModel, first_exit, score_table, staged_exit_logits

GLANCE_OUTPUTS = ("centres", "logits", "global_feats", "pooled", "step")
FOCUS_OUTPUTS = ("logits", "next_pooled", "next_step")


@dataclass(frozen=True)
class ParityOptions:
    tolerance: float = 1e-3  # max abs difference allowed on any output (fp32 graphs differ by about 1e-5)
    random_batch: int = 4
    clips: int = 16  # benchmark clips for the real-input and decision checks
    seed: int = 0
    benchmark: str | None = None  # the bundle's benchmark preset (model.data.datasets.PRESETS) for those clips


@dataclass
class ParityReport:
    tolerance: float
    clips: int
    clip_source: str
    random: dict[str, float]  # "glance.logits" -> max abs diff
    real: dict[str, float]
    decisions: dict[str, dict[str, Any]]  # budget level -> labels/exit steps agreement
    failures: list[str] = field(default_factory=list)
    # clips whose cube frames are a near tie in PyTorch (``distinct_frames`` placement): their centres, and so their
    # decisions, may legitimately differ under fp32 rounding; reported, not failed
    placement_near_ties: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def synthetic_clips(config: AdaFocusConfig, n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, T, H, W) uint8 clips: a textured background plus a bright square moving across a few frames.

    Deterministic in ``seed``; enough structure that a trained model's exits vary from clip to clip.
    """
    T, S = config.num_frames, config.frame_size
    gen = torch.Generator().manual_seed(seed)
    clips = torch.randint(40, 120, (n, 3, T, S, S), generator=gen, dtype=torch.int64)  # (n, 3, T, H, W)
    side = max(S // 4, 2)
    for i in range(n):
        colour = torch.randint(0, 256, (3, 1, 1, 1), generator=gen)
        t0 = int(torch.randint(0, T, (1,), generator=gen))
        x0, y0 = (int(v) for v in torch.randint(0, S - side + 1, (2,), generator=gen))
        for t in range(t0, min(T, t0 + max(T // 2, 1))):
            dx = min((t - t0) * 2, S - side - x0)
            clips[i, :, t : t + 1, y0 : y0 + side, x0 + dx : x0 + dx + side] = colour
    return clips.to(torch.uint8)


def load_clips(config: AdaFocusConfig, n: int, seed: int, benchmark: str | None = None) -> tuple[torch.Tensor, str]:
    """(n, 3, T, H, W) uint8 test clips sized for ``config`` (``model.data.datasets.benchmark_clips``: the bundle's
    benchmark, else the procedural one); ``synthetic_clips`` where no benchmark can be drawn at this size."""
    try:
        frames, _, source = benchmark_clips(
            config.num_frames, config.frame_size, config.num_classes, n, 1000 * seed, benchmark
        )  # (n, T, H, W, 3)
    except ValueError:
        return synthetic_clips(config, n, seed), "exporters.validate.synthetic_clips"
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous(), source


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def placement_ties(model: AdaFocusV3, frames_small: torch.Tensor, eps: float) -> torch.Tensor:
    """(B,) bool: clips where a cube's frame choice (``distinct_frames`` placement) is within ``eps`` of flipping."""
    if model.config.placement != "distinct_frames":
        return torch.zeros(frames_small.shape[0], dtype=torch.bool)
    _, margins = model.distinct_frames(model.glance(frames_small).policy_logits)  # (B, K)
    return (margins < eps).any(dim=1)


def compare_glance(
    ref: StagedModel, got: StagedModel, frames_small: torch.Tensor, ties: torch.Tensor | None = None
) -> dict[str, float]:
    """Max abs difference of every glance output; the centres of clips in ``ties`` (B,) are left out."""
    ref_out, got_out = ref.glance(frames_small), got.glance(frames_small)
    keep = slice(None) if ties is None else ~ties
    pairs = (
        (ref_out.centres[keep], got_out.centres[keep]),
        (ref_out.logits, got_out.logits),
        (ref_out.state.global_feats, got_out.state.global_feats),
        (ref_out.state.pooled, got_out.state.pooled),
        (ref_out.state.step, got_out.state.step),
    )
    return {f"glance.{name}": max_abs(a, b) for name, (a, b) in zip(GLANCE_OUTPUTS, pairs, strict=True)}


def compare_focus(ref: StagedModel, got: StagedModel, cubes: torch.Tensor, state: FocusState) -> dict[str, float]:
    ref_logits, ref_state = ref.focus(cubes, state)
    got_logits, got_state = got.focus(cubes, state)
    pairs = ((ref_logits, got_logits), (ref_state.pooled, got_state.pooled), (ref_state.step, got_state.step))
    return {f"focus.{name}": max_abs(a, b) for name, (a, b) in zip(FOCUS_OUTPUTS, pairs, strict=True)}


def merge_max(into: dict[str, float], new: dict[str, float]) -> None:
    for key, value in new.items():
        into[key] = max(into.get(key, 0.0), value)


def random_parity(model: AdaFocusV3, ref: StagedModel, onnx: StagedModel, opts: ParityOptions) -> dict[str, float]:
    c, B = model.config, opts.random_batch
    gen = torch.Generator().manual_seed(opts.seed)
    frames_small = torch.rand(B, 3, c.num_frames, c.glance_size, c.glance_size, generator=gen) * 255
    diffs = compare_glance(ref, onnx, frames_small, placement_ties(model, frames_small, opts.tolerance))
    state = ref.glance(frames_small).state
    mixed = FocusState(state.global_feats, state.pooled, torch.arange(B) % c.num_cubes)  # (B,) mixed steps
    cubes = torch.randint(0, 256, (B, 3, *model.cube_shape), generator=gen).to(torch.uint8)
    merge_max(diffs, compare_focus(ref, onnx, cubes, mixed))
    return diffs


def real_parity(
    model: AdaFocusV3, ref: StagedModel, onnx: StagedModel, clips: torch.Tensor, ties: torch.Tensor
) -> dict[str, float]:
    frames_small = model.glance_input(clips)  # (N, 3, T, g, g)
    diffs = compare_glance(ref, onnx, frames_small, ties)
    out = ref.glance(frames_small)
    state = out.state
    for k in range(model.config.num_cubes):
        cubes = model.crop_cubes(clips, out.centres[:, k])  # (N, 3, t, h, w)
        merge_max(diffs, compare_focus(ref, onnx, cubes, state))
        _, state = ref.focus(cubes, state)
    return diffs


def decide(logits: torch.Tensor, thresholds: tuple[float, ...], criterion: Criterion) -> tuple[list[int], list[int]]:
    """(labels, exit steps) of each clip under ``model.exits.first_exit``; ``logits`` (N, K+1, classes)."""
    N = logits.shape[0]
    steps = first_exit(score_table(logits, criterion), thresholds, criterion)  # (N,)
    labels = logits[torch.arange(N), steps].argmax(-1)  # (N,)
    return labels.tolist(), steps.tolist()


def near_ties(logits: torch.Tensor, thresholds: tuple[float, ...], criterion: Criterion, eps: float) -> list[bool]:
    """Per clip: is PyTorch's own decision within ``eps`` of flipping (top-2 logits or an exit score vs its
    threshold)? Such a clip may legitimately decide differently under fp32 rounding; it is reported, not failed."""
    scores = score_table(logits, criterion)  # (N, K+1)
    eta = torch.tensor(thresholds, dtype=scores.dtype)  # (K+1,)
    score_tie = ((scores - eta).abs() < eps)[:, :-1].any(dim=1)  # (N,)
    top2 = logits.topk(2, dim=-1).values  # (N, K+1, 2)
    label_tie = ((top2[..., 0] - top2[..., 1]) < eps).any(dim=1)  # (N,)
    return (score_tie | label_tie).tolist()


def compare_decisions(
    report: ParityReport,
    ref_logits: torch.Tensor,
    onnx_logits: torch.Tensor,
    budgets: BudgetTable,
    tol: float,
    placement: list[bool] | None = None,
) -> None:
    """Every budget level's labels and exit steps, PyTorch vs ONNX, into ``report`` (failures for real ones);
    clips in ``placement`` (near ties of the cube frames) count as near ties."""
    num_exits, num_classes = ref_logits.shape[1:]
    for level in budgets.levels:
        ref_labels, ref_steps = decide(ref_logits, level.thresholds, budgets.criterion)
        got_labels, got_steps = decide(onnx_logits, level.thresholds, budgets.criterion)
        ties = near_ties(ref_logits, level.thresholds, budgets.criterion, tol)
        if placement is not None:
            ties = [a or b for a, b in zip(ties, placement, strict=True)]
        differ = [
            i
            for i, (a, b, s, t) in enumerate(zip(ref_labels, got_labels, ref_steps, got_steps, strict=True))
            if a != b or s != t
        ]
        real_differences = [i for i in differ if not ties[i]]
        report.decisions[level.name] = {
            "labels_identical": ref_labels == got_labels,
            "exit_steps_identical": ref_steps == got_steps,
            "differing_clips": len(differ),
            "differing_near_ties": len(differ) - len(real_differences),
            "exit_step_counts": [ref_steps.count(k) for k in range(num_exits)],
            "label_counts": [ref_labels.count(c) for c in range(num_classes)],
        }
        if real_differences:
            report.failures.append(
                f"budget {level.name}: {len(real_differences)}/{len(ref_labels)} clips decided differently"
            )


def check_parity(
    model: AdaFocusV3,
    export_dir: Path,
    budgets: BudgetTable | None,
    source_sha256: str | None = None,
    options: ParityOptions = ParityOptions(),
) -> ParityReport:
    """Compare the ONNX Runtime runner on ``export_dir`` with PyTorch on ``model`` (both on CPU).

    ``budgets`` (the bundle's threshold sets) drive the decision check; without them only outputs are compared.
    """
    model = copy.deepcopy(model).cpu().eval()  # the caller's model may live on a GPU: leave it there
    ref = model  # PyTorch itself through its staged API, in inference mode below
    onnx = OnnxRunner(export_dir, "cpu", bundle_sha256=source_sha256, expected=model_specs(model))
    clips, source = load_clips(model.config, options.clips, options.seed, options.benchmark)
    with torch.inference_mode():
        random = random_parity(model, ref, onnx, options)
        ties = placement_ties(model, model.glance_input(clips), options.tolerance)  # (N,)
        real = real_parity(model, ref, onnx, clips, ties)
        ref_logits, onnx_logits = staged_exit_logits(ref, model, clips), staged_exit_logits(onnx, model, clips)
    report = ParityReport(options.tolerance, options.clips, source, random, real, {})
    report.placement_near_ties = int(ties.sum())
    for kind, diffs in (("random", random), ("real", real)):
        tol = options.tolerance
        report.failures += [f"{kind} {k}: max abs diff {v:.3g} > {tol:g}" for k, v in diffs.items() if v > tol]
    if budgets is not None:
        compare_decisions(report, ref_logits, onnx_logits, budgets, options.tolerance, ties.tolist())
    return report


def read_report(export_dir: Path) -> dict[str, Any]:
    return dict(json.loads((export_dir / PARITY_REPORT).read_text()))
