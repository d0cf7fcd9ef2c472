"""What the moving Fashion-MNIST generator knows about its clips beyond the label: each clip's kind and the boxes of
its distractors (per frame), for the per-kind diagnosis (``model.evaluation.kinds``). Clips are pure functions of
``(split, seed, index)``, so the facts are redrawn from the scene, never stored.
"""

from __future__ import annotations

import numpy as np

from model.data.fashion import FashionConfig, bounce, draw_scene
from model.data.targets import BOX_FIELDS


def distractor_boxes(cfg: FashionConfig, split: str, seed: int, index: int, slots: int) -> np.ndarray:
    """(slots, T, 4) boxes (x, y, size, visible) of clip ``index``'s distractors, as ``make_clip`` draws them;
    rows of -1 for slots beyond the clip's distractors."""
    scene = draw_scene(cfg, split, seed, index)
    T, S = cfg.num_frames, cfg.size
    out = np.full((slots, T, len(BOX_FIELDS)), -1, dtype=np.int64)
    steps = np.arange(T)
    for d, mover in enumerate(scene.distractors[:slots]):
        out[d, :, 0] = bounce(mover.x0, mover.vx, S - mover.side, steps).astype(int)
        out[d, :, 1] = bounce(mover.y0, mover.vy, S - mover.side, steps).astype(int)
        out[d, :, 2] = mover.side
        out[d, :, 3] = 1
    return out


def stream_facts(cfg: FashionConfig, split: str, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Kinds (N,) and distractor boxes (N, D, T, 4) of clips ``0 .. count - 1`` of the stream ``(split, seed)``."""
    kinds = np.array([draw_scene(cfg, split, seed, i).difficulty.kind for i in range(count)])
    slots = cfg.distractors[1]
    boxes = np.stack([distractor_boxes(cfg, split, seed, i, slots) for i in range(count)])
    return kinds, boxes
