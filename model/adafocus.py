"""The AdaFocusV3 network: global encoder f_G, cube policy pi, local encoder f_L and pooling classifier f_C.

Two ways in:
- the staged API the engine, the exporters and the tests call: ``glance`` once per video, then ``focus`` once per
  cube. f_L and f_C's MLP are shared by every step and the per-step head is gathered by each sample's step
  index, so samples at different steps share one ``focus`` batch (what makes continuous batching work);
- ``forward``: all K steps at once for training, returning the logits of every exit. In eval mode it crops
  exactly as inference does, so it reproduces the staged path.
The exit loop (thresholds, early termination) lives in the engine, not here.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import MobileNetV2, ResNet, build_backbone
from model.config import AdaFocusConfig
from model.cubes import (
    covered_cube_mask,
    cube_starts,
    glance_frames,
    integer_crop,
    integer_starts,
    interpolate_features,
    pixel_crop,
)

CropMode = Literal["deep_feature", "pixel", "random"]
CROP_MODES: tuple[CropMode, ...] = ("deep_feature", "pixel", "random")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FocusState(NamedTuple):
    """What f_C carries between steps; all tensors, so it crosses ONNX graph boundaries as is."""

    global_feats: torch.Tensor  # (B, Cg) glance feature, reused at every step
    pooled: torch.Tensor  # (B, D) running element-wise max of the per-step MLP features
    step: torch.Tensor  # (B,) int64, cubes processed so far (0 right after the glance)


class GlanceOutput(NamedTuple):
    global_feats: torch.Tensor  # (B, Cg)
    centres: torch.Tensor  # (B, K, 3) cube centres (x, y, t) in [0, 1]
    logits: torch.Tensor  # (B, classes) exit-0 logits
    state: FocusState
    policy_logits: torch.Tensor  # (B, K, T, hg, wg) heatmap logits (for policy-gradient training)


class TrainOutput(NamedTuple):
    exit_logits: torch.Tensor  # (B, K + 1, classes): exit 0 (glance only) .. exit K
    centres: torch.Tensor  # (B, K, 3) the centres the cubes were cropped at
    global_aux_logits: torch.Tensor  # (B, classes)
    local_aux_logits: torch.Tensor  # (B, K, classes)
    policy_logits: torch.Tensor  # (B, K, T, hg, wg)


class HeatmapPolicy(nn.Module):
    """pi: all K cube centres at once from the whole clip's (detached) glance maps.

    3D convolutions over the glance maps and their temporal differences give one heatmap per cube over the
    (T, hg, wg) cells; a centre is the heatmap's soft-argmax, each cell standing for the cube centred on it.
    """

    def __init__(self, in_channels: int, hidden: int, num_cubes: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv3d(2 * in_channels, hidden, 1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True)
        )
        self.mix = nn.Sequential(
            nn.Conv3d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True)
        )
        self.head = nn.Conv3d(hidden, num_cubes, 1)
        nn.init.normal_(self.head.weight, std=1e-2)  # start near uniform: every cell about equally likely
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        diff = torch.cat([torch.zeros_like(maps[:, :, :1]), maps[:, :, 1:] - maps[:, :, :-1]], dim=2)
        x = self.reduce(torch.cat([maps, diff], dim=1))  # (B, hidden, T, hg, wg)
        return self.head(self.mix(x))  # (B, K, T, hg, wg)


class PoolingClassifier(nn.Module):
    """f_C as in the authors' code: per-step MLP on concat(glance, cube), running max, one head per exit."""

    def __init__(
        self, global_dim: int, local_dim: int, hidden: int, num_classes: int, num_exits: int, dropout: float
    ) -> None:
        super().__init__()
        self.local_dim = local_dim
        self.mlp = nn.Sequential(nn.Linear(global_dim + local_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        # Heads stacked so that each sample gathers its own exit's head: mixed step indices in one batch.
        self.head_weight = nn.Parameter(torch.randn(num_exits, num_classes, hidden) * 0.01)
        self.head_bias = nn.Parameter(torch.zeros(num_exits, num_classes))

    def forward(
        self,
        global_feats: torch.Tensor,
        local_feats: torch.Tensor | None,
        pooled: torch.Tensor | None,
        step: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; ``local_feats=None`` is the glance-only exit 0. Returns (logits, new pooled)."""
        if local_feats is None:
            local_feats = global_feats.new_zeros(global_feats.shape[0], self.local_dim)  # (B, Cl)
        h = self.mlp(torch.cat([global_feats, local_feats], dim=1))  # (B, D)
        pooled = h if pooled is None else torch.maximum(pooled, h)  # (B, D)
        weight = self.head_weight[step]  # (B, classes, D)
        logits = torch.einsum("bd,bcd->bc", self.dropout(pooled), weight) + self.head_bias[step]  # (B, classes)
        return logits, pooled


class AdaFocusV3(nn.Module):
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: AdaFocusConfig) -> None:
        super().__init__()
        self.config = config
        self.global_encoder = build_backbone(config.glance)  # f_G
        local = build_backbone(config.local)
        if not isinstance(local, ResNet):
            raise TypeError("the local encoder must be a ResNet")
        self.local_encoder: ResNet = local  # f_L
        if config.cube_size % self.local_encoder.total_stride:
            raise ValueError(
                f"cube_size {config.cube_size} must be a multiple of f_L's stride {self.local_encoder.total_stride}"
            )
        map_dim, l_dim = self.global_encoder.out_channels, self.local_encoder.out_channels
        g_dim = map_dim * (2 if config.glance_pool == "mean_max" else 1)
        self.global_dim = g_dim  # width of the clip feature global_feats (FocusState.global_feats)
        self.policy = HeatmapPolicy(map_dim, config.policy_hidden, config.num_cubes)
        self.classifier = PoolingClassifier(
            g_dim, l_dim, config.classifier_hidden, config.num_classes, config.num_cubes + 1, config.dropout
        )
        self.global_aux = nn.Linear(g_dim, config.num_classes)
        self.local_aux = nn.Linear(l_dim, config.num_classes)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # ----------------------------------------------------------------------------------------- geometry
    @property
    def video_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.num_frames, c.frame_size, c.frame_size)

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.cube_frames, c.cube_size, c.cube_size)

    def cube_starts(self, centres: torch.Tensor) -> torch.Tensor:
        """Integer (x0, y0, t0) of each cube in full-resolution pixels and frames; (..., 3) int64."""
        return integer_starts(centres, self.video_shape, self.cube_shape)

    def crop_cubes(self, frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """The inference crop: frames (B, C, T, H, W) uint8, centres (B, 3) -> (B, C, t, h, w) uint8."""
        return integer_crop(frames, self.cube_starts(centres), self.cube_shape)

    def skip_mask(self, centres: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: cubes to skip at inference because earlier cubes covered their frames."""
        if not self.config.skip_covered_frames:
            return torch.zeros(centres.shape[:2], dtype=torch.bool, device=centres.device)
        return covered_cube_mask(self.cube_starts(centres)[..., 2], self.config.cube_frames)

    def glance_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Full-resolution frames (B, C, T, H, W) -> the glance's low-resolution float frames."""
        return glance_frames(frames, self.config.glance_size)  # (B, C, T, g, g)

    # ----------------------------------------------------------------------------------------- stages
    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or float pixels in [0, 255], (B, C, T, H, W) -> ImageNet-normalised float."""
        return (pixels.float() - self.pixel_mean) / self.pixel_std

    def encode_frames(self, encoder: MobileNetV2 | ResNet, video: torch.Tensor) -> torch.Tensor:
        """Run a 2D encoder on every frame: (B, C, T, H, W) normalised -> (B, C', T, h, w)."""
        B, C, T, H, W = video.shape
        x = video.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        maps = encoder.forward_features(x)  # (B*T, C', h, w)
        return maps.view(B, T, *maps.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C', T, h, w)

    def glance(self, frames_small: torch.Tensor, policy_trains_glance: bool = False) -> GlanceOutput:
        """f_G on the whole clip, all K centres, and the exit-0 prediction. (B, C, T, g, g) pixels in.

        The policy reads detached glance maps (the paper's setting); ``policy_trains_glance`` lets the policy's
        gradient reach f_G (the policy-discovery training stage)."""
        maps = self.encode_frames(self.global_encoder, self.normalize(frames_small))  # (B, Cg, T, hg, wg)
        global_feats = self.pool_glance(maps)  # (B, Cg) or (B, 2 Cg)
        policy_logits = self.policy(maps if policy_trains_glance else maps.detach())  # (B, K, T, hg, wg)
        centres = self.heatmap_centres(policy_logits)  # (B, K, 3)
        step = torch.zeros(global_feats.shape[0], dtype=torch.long, device=global_feats.device)  # (B,)
        logits, pooled = self.classifier(global_feats, None, None, step)  # (B, classes), (B, D)
        return GlanceOutput(global_feats, centres, logits, FocusState(global_feats, pooled, step), policy_logits)

    def pool_glance(self, maps: torch.Tensor) -> torch.Tensor:
        """The clip feature from f_G's maps (B, Cg, T, hg, wg): mean, or mean and max concatenated."""
        mean = maps.mean(dim=(2, 3, 4))  # (B, Cg)
        if self.config.glance_pool == "mean":
            return mean
        return torch.cat([mean, maps.amax(dim=(2, 3, 4))], dim=1)  # (B, 2 Cg)

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        """f_L on one cube per sample (B, C, t, h, w) pixels, then f_C's next step for each sample."""
        local_feats = self.encode_frames(self.local_encoder, self.normalize(cubes)).mean(dim=(2, 3, 4))  # (B, Cl)
        step = state.step + 1  # (B,)
        logits, pooled = self.classifier(state.global_feats, local_feats, state.pooled, step)  # (B, classes)
        return logits, FocusState(state.global_feats, pooled, step)

    def heatmap_centres(self, policy_logits: torch.Tensor) -> torch.Tensor:
        """Centres (B, K, 3) as (x, y, t) from the K heatmaps (B, K, T, hg, wg), all placed at once.

        ``soft_argmax``: each heatmap's expectation over its cells. ``distinct_frames``: cube k takes the frame of
        heatmap k with the highest mass among the frames cubes 1..k-1 left free, then the soft-argmax of that frame's
        spatial map (differentiable in x and y, for the deep-feature gradient)."""
        B, K, Tg, hg, wg = policy_logits.shape
        gx, gy, gt = self.cell_centres((Tg, hg, wg), policy_logits)
        if self.config.placement == "soft_argmax":
            probs = policy_logits.flatten(2).softmax(-1).view(B, K, Tg, hg, wg)  # (B, K, T, hg, wg)
            x = (probs.sum(dim=(2, 3)) * gx).sum(-1)  # (B, K)
            y = (probs.sum(dim=(2, 4)) * gy).sum(-1)  # (B, K)
            t = (probs.sum(dim=(3, 4)) * gt).sum(-1)  # (B, K)
            return torch.stack([x, y, t], dim=-1)  # (B, K, 3)
        frames, _ = self.distinct_frames(policy_logits)  # (B, K)
        centres = []
        for k in range(K):
            heat = policy_logits[:, k]  # (B, T, hg, wg)
            frame = frames[:, k]  # (B,)
            spatial = heat.gather(1, frame.view(B, 1, 1, 1).expand(B, 1, hg, wg)).squeeze(1)  # (B, hg, wg)
            probs = spatial.flatten(1).softmax(-1).view(B, hg, wg)  # (B, hg, wg)
            x = (probs.sum(dim=1) * gx).sum(-1)  # (B,)
            y = (probs.sum(dim=2) * gy).sum(-1)  # (B,)
            centres.append(torch.stack([x, y, gt[frame]], dim=-1))  # (B, 3)
        return torch.stack(centres, dim=1)  # (B, K, 3)

    @staticmethod
    def distinct_frames(policy_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``distinct_frames`` placement's frame choice: cube k takes the frame with the most mass of heatmap k
        among the frames cubes 1..k-1 left free. Returns the frames (B, K) and each choice's margin (B, K): its
        log-mass minus the runner-up's (a margin near 0 is a near tie that fp32 rounding may flip)."""
        B, K, Tg = policy_logits.shape[:3]
        frame_ids = torch.arange(Tg, device=policy_logits.device)  # (T,)
        taken = torch.zeros(B, Tg, dtype=torch.bool, device=policy_logits.device)  # (B, T)
        frames, margins = [], []
        for k in range(K):
            mass = policy_logits[:, k].flatten(2).logsumexp(-1).masked_fill(taken, float("-inf"))  # (B, T)
            top2 = mass.topk(min(2, Tg), dim=-1)  # (B, 2)
            frame = top2.indices[:, 0]  # (B,)
            gap = top2.values[:, 0] - top2.values[:, -1] if Tg > 1 else torch.full_like(top2.values[:, 0], 1e9)
            frames.append(frame)
            margins.append(torch.nan_to_num(gap, posinf=1e9))
            taken = taken | (frame_ids.unsqueeze(0) == frame.unsqueeze(1))
        return torch.stack(frames, dim=1), torch.stack(margins, dim=1)

    def cell_centres(self, grid: tuple[int, int, int], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per axis, the centre value that puts a cube's middle on the middle of each heatmap cell."""
        out = []
        for cells, extent, cube in zip(
            (grid[2], grid[1], grid[0]), self.video_shape[::-1], self.cube_shape[::-1], strict=True
        ):
            mid = (torch.arange(cells, device=like.device, dtype=like.dtype) + 0.5) * extent / cells  # (cells,)
            room = max(extent - cube, 1)
            out.append(((mid - cube / 2) / room).clamp(0, 1))
        return tuple(out)  # gx (wg,), gy (hg,), gt (T,)

    # ----------------------------------------------------------------------------------------- training
    def forward(
        self, frames: torch.Tensor, crop_mode: CropMode = "deep_feature", centres: torch.Tensor | None = None
    ) -> TrainOutput:
        """All K steps on full-resolution frames (B, C, T, H, W) in [0, 255].

        ``centres`` (B, K, 3) overrides the policy (e.g. sampled centres for policy-gradient training).
        In eval mode cubes are integer crops, as at inference, whatever ``crop_mode`` says.
        """
        out = self.glance(self.glance_input(frames))
        if centres is None:
            centres = torch.rand_like(out.centres) if crop_mode == "random" else out.centres
        elif crop_mode == "random":
            centres = centres.detach()
        features = self.cube_features(frames, centres, crop_mode)  # (B, K, Cl)
        skip = self.skip_mask(centres) if not self.training else None
        logits, pooled, state = [out.logits], out.state.pooled, out.state
        for k in range(self.config.num_cubes):
            step = state.step + 1
            step_logits, new_pooled = self.classifier(out.global_feats, features[:, k], pooled, step)
            if skip is not None:  # a skipped cube leaves f_C untouched: its exit repeats the previous one
                keep = skip[:, k : k + 1]
                step_logits = torch.where(keep, logits[-1], step_logits)
                new_pooled = torch.where(keep, pooled, new_pooled)
            logits.append(step_logits)
            pooled, state = new_pooled, FocusState(out.global_feats, new_pooled, step)
        return TrainOutput(
            exit_logits=torch.stack(logits, dim=1),  # (B, K+1, classes)
            centres=centres,
            global_aux_logits=self.global_aux(out.global_feats),
            local_aux_logits=self.local_aux(features),  # (B, K, classes)
            policy_logits=out.policy_logits,
        )

    def cube_features(self, frames: torch.Tensor, centres: torch.Tensor, crop_mode: CropMode) -> torch.Tensor:
        """f_L features of every cube, (B, K, Cl), cropped the way ``crop_mode`` and the mode say."""
        feats = []
        for k in range(self.config.num_cubes):
            c = centres[:, k]  # (B, 3)
            if not self.training or crop_mode == "random":
                cube = self.normalize(self.crop_cubes(frames, c.detach()))  # (B, C, t, h, w)
                feats.append(self.encode_frames(self.local_encoder, cube).mean(dim=(2, 3, 4)))
            elif crop_mode == "pixel":
                starts = cube_starts(c, self.video_shape, self.cube_shape)  # (B, 3), differentiable
                cube = pixel_crop(self.normalize(frames), starts, self.cube_shape)  # (B, C, t, h, w)
                feats.append(self.encode_frames(self.local_encoder, cube).mean(dim=(2, 3, 4)))
            elif crop_mode == "deep_feature":
                feats.append(self.deep_feature_cube(frames, c))
            else:
                raise ValueError(f"unknown crop mode {crop_mode!r}")
        return torch.stack(feats, dim=1)  # (B, K, Cl)

    def deep_feature_cube(self, frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Paper Eq. 5-6: f_L on a cube one feature cell larger (integer crop, no gradient to the crop),
        then trilinear reading of its feature map at (c - stopgrad(c) + o). Returns (B, Cl)."""
        s = self.local_encoder.total_stride
        t, h, w = self.cube_shape
        starts = cube_starts(centres, self.video_shape, self.cube_shape)  # (B, 3) continuous, with grad
        base = torch.floor(starts.detach())  # (B, 3)
        padded = (
            F.pad(frames, (0, s, 0, s, 0, 1), mode="replicate")
            if frames.is_floating_point()
            else F.pad(frames.float(), (0, s, 0, s, 0, 1), mode="replicate")
        )  # (B, C, T+1, H+s, W+s)
        big = integer_crop(padded, base.long(), (t + 1, h + s, w + s))  # (B, C, t+1, h+s, w+s)
        big_feats = self.encode_frames(self.local_encoder, self.normalize(big))  # (B, Cl, t+1, hf+1, wf+1)
        cell = starts.new_tensor([s, s, 1])  # pixels (frames) per feature cell on x, y, t
        offsets = (starts - base) / cell  # (B, 3) in [0, 1) cells; gradient flows only through here
        hf, wf = big_feats.shape[3] - 1, big_feats.shape[4] - 1
        feats = interpolate_features(big_feats, offsets, (t, hf, wf))  # (B, Cl, t, hf, wf)
        return feats.mean(dim=(2, 3, 4))  # (B, Cl)

