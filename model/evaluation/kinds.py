"""Why a clip kind fails: policy placement vs the local encoder, per kind of the moving Fashion-MNIST benchmark.

``diagnose`` runs the staged path (glance, then integer cubes, ``focus`` once per cube, as the server does) and
records, per cube, where it landed against the generator's boxes of the product and of the distractors, and what
f_L alone makes of it (its auxiliary head ``local_aux``). A second pass keeps each cube's frame but moves it onto
the product's box in that frame (``oracle``): the accuracy a perfect spatial placement would give with the same
encoders and classifier. Per kind (``clear``, ``small``, ``degraded``), the report gives

- exit accuracy (glance, 1 cube, K cubes) at the policy's and at the oracle's centres;
- placement: cube-1 hit rate, any-of-K hit rate, mean IoU of cube 1 with the product's box, and the share of
  missing cubes that sit on a distractor;
- the local encoder: ``local_aux`` accuracy on cubes that hit, on cubes that miss, on cubes that sit on a
  distractor and on a cube centred on the product in its first visible frame; the glance encoder: ``global_aux``.

A kind whose oracle accuracy is far above its policy accuracy fails on placement; one whose box-centred local
accuracy is low fails on the encoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model.adafocus import AdaFocusV3, FocusState
from model.data.datasets import Sample, eval_batches
from model.data.targets import cube_hits


def box_centres(model: AdaFocusV3, boxes: torch.Tensor, frames: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Centres (B, 3) of cubes on frame ``frames`` (B,) centred on the product's box there; ``fallback`` (B, 3)
    where the product is not visible in that frame. ``boxes`` (B, T, 4)."""
    T, H, W = model.video_shape
    t, h, w = model.cube_shape
    B = boxes.shape[0]
    box = boxes[torch.arange(B), frames].float()  # (B, 4)
    x = (box[:, 0] + box[:, 2] / 2 - w / 2) / max(W - w, 1)
    y = (box[:, 1] + box[:, 2] / 2 - h / 2) / max(H - h, 1)
    tt = (frames.float() - (t - 1) / 2).clamp(min=0) / max(T - t, 1)
    centred = torch.stack([x, y, tt], dim=1).clamp(0, 1)  # (B, 3)
    return torch.where((box[:, 3] > 0).unsqueeze(1), centred, fallback)


def cube_iou(starts: np.ndarray, cube_shape: tuple[int, int, int], boxes: np.ndarray) -> np.ndarray:
    """(N, K) IoU of each cube's square with the object's box in the cube's first frame (0 where not visible).
    ``starts`` (N, K, 3) integer (x0, y0, t0), ``boxes`` (N, T, 4)."""
    _, h, w = cube_shape
    N, _, _ = starts.shape
    frame = np.clip(starts[..., 2], 0, boxes.shape[1] - 1)  # (N, K)
    box = boxes[np.arange(N)[:, None], frame]  # (N, K, 4)
    ox = np.clip(
        np.minimum(starts[..., 0] + w, box[..., 0] + box[..., 2]) - np.maximum(starts[..., 0], box[..., 0]), 0, None
    )
    oy = np.clip(
        np.minimum(starts[..., 1] + h, box[..., 1] + box[..., 2]) - np.maximum(starts[..., 1], box[..., 1]), 0, None
    )
    inter = ox * oy
    union = w * h + box[..., 2] ** 2 - inter
    return np.where(box[..., 3] > 0, inter / np.maximum(union, 1), 0.0)


def _staged(
    model: AdaFocusV3, frames: torch.Tensor, centres: torch.Tensor, glance: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits (B, K+1, C) and f_L's own predictions (B, K) for cubes at ``centres`` (B, K, 3)."""
    skip = model.skip_mask(centres)  # (B, K)
    logits, state, local = [glance.logits], glance.state, []
    for k in range(model.config.num_cubes):
        cube = model.normalize(model.crop_cubes(frames, centres[:, k]))  # (B, 3, t, h, w)
        feats = model.encode_frames(model.local_encoder, cube).mean(dim=(2, 3, 4))  # (B, Cl)
        local.append(model.local_aux(feats).argmax(-1))  # (B,)
        step = state.step + 1
        step_logits, pooled = model.classifier(state.global_feats, feats, state.pooled, step)  # (B, C), (B, D)
        keep = skip[:, k : k + 1]
        logits.append(torch.where(keep, logits[-1], step_logits))
        state = FocusState(state.global_feats, torch.where(keep, state.pooled, pooled), step)
    return torch.stack(logits, dim=1), torch.stack(local, dim=1)  # (B, K+1, C), (B, K)


def record_kinds(
    model: AdaFocusV3, dataset: Dataset[Sample], batch_size: int = 64, workers: int = 0
) -> dict[str, np.ndarray]:
    """Per clip: labels, targets, policy and oracle exit predictions, cube starts, f_L's predictions at the
    policy's cubes and at one cube centred on the product in its first visible frame, and f_G's own prediction
    (its auxiliary head ``global_aux``)."""
    model.eval()
    keys = ("labels", "targets", "pred", "oracle", "starts", "local", "centred", "glance_aux")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with torch.inference_mode():
        for frames, y, boxes in eval_batches(dataset, batch_size, workers):
            glance = model.glance(model.glance_input(frames))
            centres = glance.centres  # (B, K, 3)
            logits, local = _staged(model, frames, centres, glance)
            starts = model.cube_starts(centres)  # (B, K, 3)
            oracle_c = torch.stack(
                [box_centres(model, boxes, starts[:, k, 2], centres[:, k]) for k in range(centres.shape[1])], dim=1
            )  # (B, K, 3)
            oracle_logits, _ = _staged(model, frames, oracle_c, glance)
            first_visible = (boxes[..., 3] > 0).long().argmax(dim=1)  # (B,)
            centred = box_centres(model, boxes, first_visible, centres[:, 0])  # (B, 3)
            cube = model.normalize(model.crop_cubes(frames, centred))  # (B, 3, t, h, w)
            centred_pred = model.local_aux(model.encode_frames(model.local_encoder, cube).mean(dim=(2, 3, 4)))
            values = (y, boxes, logits.argmax(-1), oracle_logits.argmax(-1), starts, local,
                      centred_pred.argmax(-1), model.global_aux(glance.global_feats).argmax(-1))  # fmt: skip
            for key, value in zip(keys, values, strict=True):
                out[key].append(value.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def kind_report(
    rec: dict[str, np.ndarray],
    kinds: np.ndarray,
    cube_shape: tuple[int, int, int],
    distractors: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Per kind (and ``all``) the figures of the module docstring. ``distractors`` (N, D, T, 4): the distractors'
    boxes (rows of -1 where a clip has fewer), for the share of missing cubes that sit on one."""
    hits = cube_hits(rec["starts"], cube_shape, rec["targets"])  # (N, K)
    iou = cube_iou(rec["starts"], cube_shape, rec["targets"])  # (N, K)
    y = rec["labels"]
    local_ok = rec["local"] == y[:, None]  # (N, K)
    on_distractor = np.zeros_like(hits)
    if distractors is not None:
        for d in range(distractors.shape[1]):
            on_distractor |= cube_hits(rec["starts"], cube_shape, distractors[:, d])
    report: dict[str, dict[str, Any]] = {}
    for kind in ("all", *sorted(set(kinds.tolist()))):
        m = np.ones(len(y), bool) if kind == "all" else kinds == kind
        miss = ~hits[m]
        report[kind] = {
            "clips": int(m.sum()),
            "accuracy": {
                "glance": _mean(rec["pred"][m, 0] == y[m]),
                "1_cube": _mean(rec["pred"][m, 1] == y[m]),
                "k_cubes": _mean(rec["pred"][m, -1] == y[m]),
            },
            "oracle_accuracy": {
                "1_cube": _mean(rec["oracle"][m, 1] == y[m]),
                "k_cubes": _mean(rec["oracle"][m, -1] == y[m]),
            },
            "cube1_hit_rate": _mean(hits[m, 0]),
            "any_hit_rate": _mean(hits[m].any(axis=1)),
            "cube1_iou": _mean(iou[m, 0]),
            "misses_on_distractor": _mean(on_distractor[m][miss]) if distractors is not None else None,
            "local_acc_on_hits": _mean(local_ok[m][hits[m]]),
            "local_acc_on_misses": _mean(local_ok[m][miss]),
            "local_acc_on_distractors": _mean(local_ok[m][miss & on_distractor[m]])
            if distractors is not None
            else None,
            "local_acc_box_centred": _mean(rec["centred"][m] == y[m]),
            "glance_aux_acc": _mean(rec["glance_aux"][m] == y[m]),
        }
    return report


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


KIND_COLUMNS = (
    ("clips", None),
    ("glance", ("accuracy", "glance")),
    ("1 cube", ("accuracy", "1_cube")),
    ("K cubes", ("accuracy", "k_cubes")),
    ("oracle 1 cube", ("oracle_accuracy", "1_cube")),
    ("oracle K cubes", ("oracle_accuracy", "k_cubes")),
    ("cube-1 hits", ("cube1_hit_rate", None)),
    ("any hit", ("any_hit_rate", None)),
    ("cube-1 IoU", ("cube1_iou", None)),
    ("misses on a distractor", ("misses_on_distractor", None)),
    ("f_L on hits", ("local_acc_on_hits", None)),
    ("f_L on misses", ("local_acc_on_misses", None)),
    ("f_L on distractors", ("local_acc_on_distractors", None)),
    ("f_L box-centred", ("local_acc_box_centred", None)),
    ("f_G head", ("glance_aux_acc", None)),
)


def render_kinds(report: dict[str, dict[str, Any]]) -> str:
    """The per-kind report as a markdown table (percentages; oracle: each cube moved onto the product's box in
    its own frame; f_L: the local encoder's auxiliary head alone)."""
    head = "| kind | " + " | ".join(name for name, _ in KIND_COLUMNS) + " (%) |\n"
    head += "|---" * (len(KIND_COLUMNS) + 1) + "|\n"
    rows = []
    for kind, row in report.items():
        cells = []
        for name, path in KIND_COLUMNS:
            if path is None:
                cells.append(str(row[name]))
                continue
            value = row[path[0]] if path[1] is None else row[path[0]][path[1]]
            cells.append(_cell(value))
        rows.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
