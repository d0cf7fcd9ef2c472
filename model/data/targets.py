"""Ground-truth object boxes per frame, and whether a cube sees the object: shared by every generated benchmark.

A clip's boxes are an int64 array (T, 4) of (x, y, size, visible) rows: the object's square bounding box in
full-resolution pixels at each frame and whether it is on screen there. Videos without ground truth (class folders)
carry all -1 rows. Training centres cubes on visible boxes (local-encoder pretraining); evaluation counts hits.
"""

from __future__ import annotations

import numpy as np

BOX_FIELDS = ("x", "y", "size", "visible")


def no_boxes(num_frames: int) -> np.ndarray:
    """(T, 4) rows of -1: a video without ground-truth locations."""
    return np.full((num_frames, len(BOX_FIELDS)), -1, dtype=np.int64)


def static_boxes(x: int, y: int, size: int, first: int, frames: int, num_frames: int) -> np.ndarray:
    """(T, 4) for an object that stays at (x, y) and is visible in frames first .. first + frames - 1."""
    boxes = np.zeros((num_frames, len(BOX_FIELDS)), dtype=np.int64)
    boxes[:, 0], boxes[:, 1], boxes[:, 2] = x, y, size
    boxes[first : first + frames, 3] = 1
    return boxes


def has_boxes(boxes: np.ndarray) -> bool:
    """Whether every clip of a (N, T, 4) stack has ground truth."""
    return bool((boxes[..., 3] >= 0).all())


def cube_hits(starts: np.ndarray, cube_shape: tuple[int, int, int], boxes: np.ndarray) -> np.ndarray:
    """Whether each cube sees the object: in one of the cube's frames the object is visible and the overlap covers
    at least half of the object's box or, for an object larger than the cube, at least half of the cube.

    ``starts`` (N, K, 3) integer (x0, y0, t0); ``cube_shape`` (t, h, w); ``boxes`` (N, T, 4). Returns (N, K) bool.
    """
    t, h, w = cube_shape
    N, K, _ = starts.shape
    T = boxes.shape[1]
    hits = np.zeros((N, K), dtype=bool)
    rows = np.arange(N)[:, None]  # (N, 1)
    for dt in range(t):
        frame = np.clip(starts[..., 2] + dt, 0, T - 1)  # (N, K)
        box = boxes[rows, frame]  # (N, K, 4)
        bx, by, size, visible = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
        ox = np.clip(np.minimum(starts[..., 0] + w, bx + size) - np.maximum(starts[..., 0], bx), 0, None)
        oy = np.clip(np.minimum(starts[..., 1] + h, by + size) - np.maximum(starts[..., 1], by), 0, None)
        inside = starts[..., 2] + dt < T
        hits |= inside & (visible > 0) & (ox * oy * 2 >= np.minimum(size * size, h * w))
    return hits
