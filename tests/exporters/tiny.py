"""A tiny bundle whose exits actually vary, and its ONNX export, shared by the exporter and runner tests."""

from __future__ import annotations

from pathlib import Path

import torch

from exporters.validate import load_clips
from model.adafocus import AdaFocusV3
from model.budgets import BudgetLevel, BudgetTable, exit_scores
from model.bundle import Bundle, load_bundle, save_bundle
from model.config import get_config
from tests.thresholds import spread_thresholds

NUM_CLIPS = 12


def make_tiny_bundle(path: Path) -> Bundle:
    """Tiny config with covered-cube skipping; random weights scaled so predictions, exit scores and cube
    positions spread out (an untrained head gives near-ties everywhere)."""
    torch.manual_seed(0)
    config = get_config("tiny").replace(skip_covered_frames=True)
    model = AdaFocusV3(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.head_weight, std=1.0)
        torch.nn.init.normal_(model.policy.head.weight, std=1.0)
    model.eval()
    clips, _ = load_clips(config, NUM_CLIPS, seed=0)
    with torch.no_grad():
        logits = model(clips).exit_logits  # (N, K + 1, classes)
    scores = exit_scores(logits.flatten(0, 1), "entropy").view(NUM_CLIPS, -1)  # (N, K + 1)
    levels = (
        BudgetLevel("fast", spread_thresholds(scores, 3), 0.001, 0.5),
        BudgetLevel("mid", spread_thresholds(scores, 1), 0.002, 0.6),
        BudgetLevel("full", (0.0,) * (config.num_cubes + 1), 0.003, 0.7),
    )
    save_bundle(path, model, BudgetTable("entropy", levels, "mid"), "# tiny test bundle\n")
    return load_bundle(path)
