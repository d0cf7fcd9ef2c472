"""Still images for encoder pretraining: single frames of the moving Fashion-MNIST benchmark (our stand-in for the
ImageNet pretraining of the paper's backbones, far cheaper per sample than a clip).

A still is a one-frame clip of the benchmark (``fashion.make_clip`` with ``num_frames = 1``): one product over the
benchmark's panning colour background, grey clutter and scrambled-product distractors, with the benchmark's kinds and
degradations (size, occluder strip, extra noise, blur); only the partial visibility of ``degraded`` clips has no
meaning on one frame, so the product is always on it. Stills come from the *train* images only (the split is the
training data's). The glance encoder pretrains on the whole still at its low resolution, the local encoder on a
cube-sized crop centred on the product's box (``objectives.step_pretrain_local``, the box comes with the still).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import Dataset

from model.data import fashion
from model.data.fashion import FashionConfig

Sample = tuple[torch.Tensor, int, torch.Tensor]


def still_config(cfg: FashionConfig) -> FashionConfig:
    """The benchmark's settings for one frame: the product always on it."""
    return dataclasses.replace(cfg, num_frames=1, degraded_visible=(1, 1))


class StillDataset(Dataset[Sample]):
    """Stills ``0 .. length - 1`` of the stream ``(split, seed)``: (frames (3, 1, S, S) uint8, label, boxes (1, 4))."""

    def __init__(self, cfg: FashionConfig, split: str, seed: int, length: int) -> None:
        self.cfg, self.split, self.seed, self.length = still_config(cfg), split, seed, length
        self.class_names = cfg.class_names
        fashion.load_split_images(split)  # fail here, with the install hint, not in a worker

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        clip = fashion.make_clip(self.cfg, self.split, self.seed, index)
        frames = torch.from_numpy(clip.frames).permute(3, 0, 1, 2).contiguous()  # (3, 1, S, S)
        return frames, clip.label, torch.from_numpy(clip.boxes)
