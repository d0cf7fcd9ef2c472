"""What the engine benchmarks serve: a model, its budget table and costs, and pre-decoded test clips; and the
allocator setting that keeps glibc from trimming and re-faulting memory between batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np
import torch

from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.config import AdaFocusConfig, get_config
from model.data.datasets import benchmark_clips
from model.exits import first_exit, quantile_thresholds, score_table
from model.macs import CostReport, cost_report


@dataclass(frozen=True)
class Workload:
    """What the bench serves: the model, its budget table and costs, and pre-decoded clips."""

    model: AdaFocusV3
    budgets: BudgetTable
    costs: CostReport
    frames: np.ndarray  # (N, T, H, W, 3) uint8
    labels: np.ndarray | None  # (N,) int64 ground truth, when the clips have it
    source: str  # where the weights and budgets came from, for the report
    clip_source: str


# ---------------------------------------------------------------------------------------------- allocator
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters (malloc.h)
STEADY_MALLOPT = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30))


def steady_allocator() -> str:
    """Make glibc malloc behave the same for every engine thread of this process; returns what was done.

    By default each new thread gets its own malloc arena, and whether an arena gives the freed activations of a
    batch back to the kernel (and page-faults them in again on the next batch) depends on its layout: one engine
    thread ran without page faults while the engines created after it took ~5k minor faults per glance batch of 8
    and were ~1.4x slower on identical schedules. One shared arena, no trimming and mmap only above 32 MiB keep
    the pages of every engine thread mapped. Process-wide and irreversible: call it once, before the engines.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return "default (no mallopt in this C library)"
    if not all(mallopt(param, value) == 1 for param, value in STEADY_MALLOPT):
        return "default (mallopt refused)"
    return "glibc mallopt: 1 arena, mmap threshold 32 MiB, trim threshold 1 GiB"


# ---------------------------------------------------------------------------------------------- workload
def make_clips(
    config: AdaFocusConfig, count: int, seed: int, benchmark: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Test clips at the model's input size (``model.data.datasets.benchmark_clips``), else random pixels."""
    try:
        frames, labels, desc = benchmark_clips(
            config.num_frames, config.frame_size, config.num_classes, count, seed, benchmark
        )
        return frames, labels, f"{desc}, {count} distinct"
    except ValueError as exc:
        shape = (count, config.num_frames, config.frame_size, config.frame_size, 3)
        return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), None, f"random uint8 clips ({exc})"


def quantile_budgets(model: AdaFocusV3, costs: CostReport, frames: np.ndarray, device: str = "cpu") -> BudgetTable:
    """A hand-made budget table for a model without calibrated thresholds (random weights): at level ``q`` the
    threshold of every exit is the ``q``-quantile of that exit's entropy on these clips, so cheaper levels stop
    earlier. ``max`` (all zeros) runs every cube. Expected GMACs come from the same clips; accuracy is unknown."""
    model = model.eval().to(device)
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(frames), 8):
            video = torch.from_numpy(frames[i : i + 8]).to(device).permute(0, 4, 1, 2, 3)  # (b, 3, T, H, W) uint8
            chunks.append(model(video).exit_logits.float().cpu())  # (b, K + 1, C)
    entropy = score_table(torch.cat(chunks), "entropy")  # (N, K + 1)
    levels = []
    for name, q in (("min", 0.8), ("low", 0.5), ("balanced", 0.3), ("high", 0.1), ("max", 0.0)):
        thresholds = quantile_thresholds(entropy, q)
        exit_at = first_exit(entropy, thresholds, "entropy")  # (N,)
        gmacs = float(np.mean([costs.exit_gmacs[int(k)] for k in exit_at]))
        levels.append(BudgetLevel(name, tuple(thresholds), gmacs, 0.0))
    return BudgetTable("entropy", tuple(sorted(levels, key=lambda lvl: lvl.expected_gmacs)), "balanced")


def load_workload(bundle: str | None, config: str | None, clips: int, seed: int, device: str = "cpu") -> Workload:
    """The shipped (or named) bundle; with ``config``, that named config with random weights."""
    if config is None:
        path = bundle or (str(DEFAULT_BUNDLE) if (DEFAULT_BUNDLE / "manifest.json").exists() else None)
        if path is not None:
            loaded = load_bundle(path)
            frames, labels, clip_source = make_clips(loaded.config, clips, seed, loaded.benchmark)
            costs = cost_report(loaded.model)
            source = f"bundle {loaded.path} (sha256 {loaded.sha256[:12]})"
            return Workload(loaded.model.eval(), loaded.budgets, costs, frames, labels, source, clip_source)
        config = "default"
    torch.manual_seed(seed)
    model = AdaFocusV3(get_config(config)).eval()
    costs = cost_report(model)
    frames, labels, clip_source = make_clips(model.config, clips, seed)
    budgets = quantile_budgets(model, costs, frames, device)
    source = f"config {config!r} with RANDOM weights (no bundle); budget levels hand-made from entropy quantiles"
    return Workload(model, budgets, costs, frames, labels, source, clip_source)
