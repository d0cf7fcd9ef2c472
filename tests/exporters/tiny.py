"""A tiny bundle whose exits actually vary, and its ONNX export, shared by the exporter and runner tests."""

from __future__ import annotations

from pathlib import Path

from exporters.validate import load_clips
from model.bundle import Bundle
from model.config import get_config
from model.testing import reference_exits, spread_budgets, spread_exit_model, untrained_bundle

NUM_CLIPS = 12


def make_tiny_bundle(path: Path) -> Bundle:
    """Tiny config with covered-cube skipping, a spread-exit model, thresholds spread over ``NUM_CLIPS`` clips
    (``load_clips`` seed 0)."""
    config = get_config("tiny").replace(skip_covered_frames=True)
    model = spread_exit_model(config, seed=0)
    clips, _ = load_clips(config, NUM_CLIPS, seed=0)  # (N, 3, T, H, W)
    return untrained_bundle(path, model, spread_budgets(reference_exits(model, clips).scores), "# tiny test bundle\n")
