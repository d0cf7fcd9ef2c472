"""What ``explain`` and ``frames`` add to a /classify answer: the prediction after every exit, and the frames.

The engine answers with the exit it stopped at; ``steps`` shows how it got there, from the engine's own progress
events for the request (the same events the SSE stream sends): the prediction, its confidence and the exit score at
each exit up to the engine's, with the threshold of the budget the request ran under. No second pass of the model.
``frames`` are the T frames the model saw (at its frame size, as PNG data URLs), so that a client can draw the cubes
on them (the web page does).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from service.engine.types import Progress
from service.schemas import Step


def steps_from_progress(
    progress: Sequence[Progress], exit_step: int, labels: Sequence[str], thresholds: Sequence[float] | None
) -> list[Step]:
    """The prediction at exits 0..``exit_step`` from the engine's own progress events (one per step it ran for the
    request). A cube skipped as covered leaves the prediction as it was, so its exit repeats the event that reached
    past it (the first event whose exit index is at or after it)."""
    events = sorted(progress, key=lambda e: e.exit_index)
    steps = []
    for k in range(exit_step + 1):
        event = next((e for e in events if e.exit_index >= k), None)
        if event is None:  # no step reached this exit (cannot happen for an answered request; never invent one)
            break
        steps.append(
            Step(
                exit=k,
                class_id=event.class_id,
                label=labels[event.class_id],
                confidence=event.confidence,
                score=event.score,
                threshold=None if thresholds is None else float(thresholds[k]),
                exited=k == exit_step,
                gmacs=event.gmacs,
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
