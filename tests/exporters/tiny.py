"""A tiny bundle whose exits actually vary, and its ONNX export, shared by the exporter and runner tests."""

from __future__ import annotations

from pathlib import Path

import torch

from exporters.validate import load_clips
from model.budgets import BudgetLevel, BudgetTable
from model.bundle import Bundle, load_bundle, save_bundle
from model.config import get_config
from model.exits import score_table, spread_exit_model, spread_thresholds

NUM_CLIPS = 12


def make_tiny_bundle(path: Path) -> Bundle:
    """Tiny config with covered-cube skipping; random weights scaled so predictions, exit scores and cube
    positions spread out (an untrained head gives near-ties everywhere)."""
    config = get_config("tiny").replace(skip_covered_frames=True)
    model = spread_exit_model(config, seed=0)
    clips, _ = load_clips(config, NUM_CLIPS, seed=0)
    with torch.no_grad():
        logits = model(clips).exit_logits  # (N, K + 1, classes)
    scores = score_table(logits, "entropy")  # (N, K + 1)
    levels = (
        BudgetLevel("fast", spread_thresholds(scores, 3), 0.001, 0.5),
        BudgetLevel("mid", spread_thresholds(scores, 1), 0.002, 0.6),
        BudgetLevel("full", (0.0,) * (config.num_cubes + 1), 0.003, 0.7),
    )
    save_bundle(path, model, BudgetTable("entropy", levels, "mid"), "# tiny test bundle\n")
    return load_bundle(path)
