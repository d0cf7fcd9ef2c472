"""What ``explain`` and ``frames`` add to a /classify answer: the prediction after every exit, and the frames.

The engine answers with the exit it stopped at; ``steps`` shows how it got there: the model is replayed on the same
decoded frames (``model.exits.staged_exit_logits``, the staged loop inference uses, covered cubes skipped) and the
prediction, its confidence and the exit score are read at each exit up to the engine's, with the threshold of the
budget the request ran under. The replay costs one more pass of the video through the model (off the event loop,
beside the engine), which is why it comes only with ``explain``. ``frames`` are the T frames the model saw (at its
frame size, as PNG data URLs), so that a client can draw the cubes on them (the web page does).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from model.adafocus import AdaFocusV3
from model.budgets import Criterion, exit_scores
from model.cost import CostReport
from model.exits import staged_exit_logits
from service.engine.types import EngineResult
from service.schemas import Step


def replay_steps(
    model: AdaFocusV3,
    frames: np.ndarray,
    result: EngineResult,
    costs: CostReport,
    criterion: Criterion,
    thresholds: Sequence[float] | None,
) -> list[Step]:
    """The prediction at exits 0..``result.exit_step`` of ``frames`` (T, H, W, 3) uint8 (the engine's input)."""
    device = next(model.parameters()).device
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0).to(device)  # (1,3,T,H,W)
    with torch.inference_mode():
        logits = staged_exit_logits(model, model, clip)[0, : result.exit_step + 1].float().cpu()  # (E, classes)
    probs = logits.softmax(dim=-1)  # (E, classes)
    scores = exit_scores(logits, criterion)  # (E,)
    names = model.config.class_names
    skipped = [c.skipped for c in result.cubes or []]
    steps = []
    for k in range(result.exit_step + 1):
        class_id = int(probs[k].argmax())
        cubes_run = sum(1 for s in skipped[:k] if not s) if skipped else k
        steps.append(
            Step(
                exit=k,
                class_id=class_id,
                label=names[class_id],
                confidence=float(probs[k, class_id]),
                score=float(scores[k]),
                threshold=None if thresholds is None else float(thresholds[k]),
                exited=k == result.exit_step,
                gmacs=costs.glance_gmacs + cubes_run * costs.focus_step_gmacs,
            )
        )
    return steps


def frame_images(frames: np.ndarray) -> list[str]:
    """Each frame of (T, H, W, 3) uint8 as a ``data:image/png;base64,...`` URL."""
    urls = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame), "RGB").save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls
