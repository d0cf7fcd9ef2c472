"""Cube geometry: where a centre puts a cube, and the three ways of cropping it.

A centre is (x, y, t) in [0, 1]^3. It maps to the cube's start (top-left-first corner) by
``start = centre * (extent - cube_extent)`` on each axis, so every centre gives a cube fully inside the video.
Inference crops with integer starts from the full-resolution uint8 frames; training uses either trilinear
pixel interpolation (AdaFocusV2, Eq. 2-4) or the deep-feature estimate (Eq. 5-6, see ``adafocus.py``).
Video tensors are laid out (B, C, T, H, W) throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cube_starts(
    centres: torch.Tensor, video_shape: tuple[int, int, int], cube_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Continuous starts (x0, y0, t0) of cubes; ``video_shape``/``cube_shape`` are (T, H, W) / (t, h, w)."""
    T, H, W = video_shape
    t, h, w = cube_shape
    room = centres.new_tensor([W - w, H - h, T - t])  # (3,) slack on x, y, t
    return centres * room  # (..., 3)


def integer_starts(
    centres: torch.Tensor, video_shape: tuple[int, int, int], cube_shape: tuple[int, int, int]
) -> torch.Tensor:
    """Rounded starts (x0, y0, t0) as int64: the inference crop position."""
    return torch.round(cube_starts(centres, video_shape, cube_shape)).long()  # (..., 3)


def integer_crop(frames: torch.Tensor, starts: torch.Tensor, cube_shape: tuple[int, int, int]) -> torch.Tensor:
    """Batched integer crop: ``frames`` (B, C, T, H, W), ``starts`` (B, 3) int as (x0, y0, t0).

    Works on any dtype (uint8 frames at inference) and on any device; one gather, no Python loop.
    """
    t, h, w = cube_shape
    B = frames.shape[0]
    dev = frames.device
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    tt = (starts[:, 2:3] + torch.arange(t, device=dev)).view(B, t, 1, 1)  # (B, t, 1, 1)
    yy = (starts[:, 1:2] + torch.arange(h, device=dev)).view(B, 1, h, 1)  # (B, 1, h, 1)
    xx = (starts[:, 0:1] + torch.arange(w, device=dev)).view(B, 1, 1, w)  # (B, 1, 1, w)
    cube = frames.permute(0, 2, 3, 4, 1)[b, tt, yy, xx]  # (B, t, h, w, C)
    return cube.permute(0, 4, 1, 2, 3).contiguous()  # (B, C, t, h, w)


def pixel_crop(frames: torch.Tensor, starts: torch.Tensor, cube_shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear crop at continuous starts (B, 3); differentiable w.r.t. ``starts`` (paper Eq. 2-4)."""
    B, _, T, H, W = frames.shape
    t, h, w = cube_shape
    dev, dt = frames.device, frames.dtype
    offs_x = torch.arange(w, device=dev, dtype=dt)
    offs_y = torch.arange(h, device=dev, dtype=dt)
    offs_t = torch.arange(t, device=dev, dtype=dt)
    # absolute sample positions, normalised to [-1, 1] with align_corners=True
    px = (starts[:, 0:1] + offs_x) / max(W - 1, 1) * 2 - 1  # (B, w)
    py = (starts[:, 1:2] + offs_y) / max(H - 1, 1) * 2 - 1  # (B, h)
    pt = (starts[:, 2:3] + offs_t) / max(T - 1, 1) * 2 - 1  # (B, t)
    grid = torch.stack(
        torch.broadcast_tensors(px.view(B, 1, 1, w), py.view(B, 1, h, 1), pt.view(B, t, 1, 1)),
        dim=-1,
    )  # (B, t, h, w, 3) as (x, y, z)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B, C, t, h, w)


def interpolate_features(feats: torch.Tensor, offsets: torch.Tensor, out_shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of an enlarged feature map at fractional cell offsets (paper Eq. 5).

    ``feats`` (B, C, tf+1, hf+1, wf+1) from the enlarged cube; ``offsets`` (B, 3) in feature cells as
    (x, y, t), each in [0, 1). Returns (B, C, tf, hf, wf): cell (k, i, j) is read at (k, i, j) + offset, so the
    gradient of the output w.r.t. ``offsets`` is the deep-feature gradient w.r.t. the cube position.
    """
    B = feats.shape[0]
    tf, hf, wf = out_shape
    Tp, Hp, Wp = feats.shape[2:]
    dev, dt = feats.device, feats.dtype
    px = (torch.arange(wf, device=dev, dtype=dt) + offsets[:, 0:1]) / max(Wp - 1, 1) * 2 - 1  # (B, wf)
    py = (torch.arange(hf, device=dev, dtype=dt) + offsets[:, 1:2]) / max(Hp - 1, 1) * 2 - 1  # (B, hf)
    pt = (torch.arange(tf, device=dev, dtype=dt) + offsets[:, 2:3]) / max(Tp - 1, 1) * 2 - 1  # (B, tf)
    grid = torch.stack(
        torch.broadcast_tensors(px.view(B, 1, 1, wf), py.view(B, 1, hf, 1), pt.view(B, tf, 1, 1)), dim=-1
    )  # (B, tf, hf, wf, 3)
    return F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=True)


def glance_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample full-resolution frames (B, C, T, H, W), any dtype, to float (B, C, T, size, size).

    Area interpolation (box filter) for downscaling: the same function feeds training and serving.
    """
    B, C, T, H, W = frames.shape
    x = frames.float().permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # (B*T, C, H, W)
    if (size, size) != (H, W):
        mode = "area" if size <= H and size <= W else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode)  # (B*T, C, s, s)
    return x.view(B, T, C, size, size).permute(0, 2, 1, 3, 4).contiguous()  # (B, C, T, s, s)


def covered_cube_mask(starts_t: torch.Tensor, cube_frames: int) -> torch.Tensor:
    """(B, K) bool: cube k's frames [t0, t0 + t) were all covered by cubes 0..k-1 (paper 4.1).

    ``starts_t`` (B, K) integer temporal starts. Such a cube is skipped at inference.
    """
    B, K = starts_t.shape
    mask = torch.zeros(B, K, dtype=torch.bool, device=starts_t.device)
    if K < 2:
        return mask
    offs = torch.arange(cube_frames, device=starts_t.device)
    frames = starts_t.unsqueeze(-1) + offs  # (B, K, t) frame indices of each cube
    for k in range(1, K):
        earlier = frames[:, :k].reshape(B, -1)  # (B, k*t)
        covered = (frames[:, k].unsqueeze(-1) == earlier.unsqueeze(1)).any(-1)  # (B, t)
        mask[:, k] = covered.all(-1)
    return mask
