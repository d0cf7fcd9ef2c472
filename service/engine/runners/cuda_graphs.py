"""CUDA graphs for the PyTorch runner: each stage captured once per batch bucket at start-up, then replayed.

A step's batch size varies from 1 to ``max_batch``; a graph has fixed shapes. So each stage is captured at a few
bucket sizes (powers of two up to ``max_batch``, and ``max_batch`` itself), and a batch of ``n`` runs in the
smallest bucket that holds it: its rows are copied into the bucket's static input, the graph is replayed, and the
first ``n`` rows of the static outputs are cloned out (the next replay overwrites them). The rows past ``n`` hold
the previous batch's values: every op of both stages is per sample in inference (BatchNorm uses running
statistics), so they change nothing in the real rows. All graphs share one memory pool and one stream; the engine's
single runner thread replays them one at a time, so their scratch memory never overlaps in time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from model.adafocus import FocusState, GlanceOutput
from service.engine.runners.torch_runner import TorchRunner

log = logging.getLogger(__name__)

WARMUP_ITERS = 3  # eager runs on a side stream before each capture (cuDNN autotuning, lazy allocations)


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch``: (1, 2, 4, 8, 16, 32) for 32; (1, 2, 4, 8, 10) for 10."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return (*sizes, max_batch)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket holding ``n`` rows; None when ``n`` exceeds every bucket."""
    return next((b for b in buckets if b >= n), None)


@dataclass
class _Captured:
    """One stage's graph at one bucket size: its static inputs and outputs."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]

    def run(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = args[0].shape[0]
        for static, value in zip(self.inputs, args, strict=True):
            static[:n].copy_(value)
        self.graph.replay()
        return tuple(out[:n].clone() for out in self.outputs)


def _capture(
    fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...], pool: Any
) -> _Captured:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_ITERS):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn(*inputs)
    return _Captured(graph, inputs, outputs)


class GraphedRunner:
    """A ``TorchRunner`` (any precision and memory format) whose stages replay CUDA graphs per batch bucket.

    Batches larger than every bucket (never, when the engine's ``max_batch`` is the largest) run eagerly."""

    name = "torch"

    def __init__(self, base: TorchRunner, max_batch: int, buckets: tuple[int, ...] | None = None) -> None:
        if base.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {base.device}")
        self.base = base
        self.device = base.device
        self.options = base.options
        self.buckets = tuple(sorted(buckets or graph_buckets(max_batch)))
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        # on the runner's device (cuda:N): capture streams and replays use the current device's streams;
        # static inputs and outputs are inference tensors, written in inference mode
        with torch.cuda.device(self.device), torch.inference_mode():
            self._glance = {b: _capture(self._glance_fn, self._glance_inputs(b), pool) for b in self.buckets}
            self._focus = {b: _capture(self._focus_fn, self._focus_inputs(b), pool) for b in self.buckets}
        torch.cuda.synchronize(self.device)
        log.info(
            "CUDA graphs captured for batch buckets %s in %.1f s (%s)",
            self.buckets, time.perf_counter() - started, self.options.label,
        )

    # ------------------------------------------------------------------------------------------ capture
    def _glance_fn(self, frames_small: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.base.glance(frames_small)
        return (out.global_feats, out.centres, out.logits, out.state.pooled, out.state.step, out.policy_logits)

    def _focus_fn(self, cubes: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.base.focus(cubes, FocusState(*state))
        return (logits, new.global_feats, new.pooled, new.step)

    def _glance_inputs(self, b: int) -> tuple[torch.Tensor, ...]:
        c = self.base.model.config
        return (torch.zeros(b, 3, c.num_frames, c.glance_size, c.glance_size, device=self.device),)  # (B, 3, T, g, g)

    def _focus_inputs(self, b: int) -> tuple[torch.Tensor, ...]:
        model = self.base.model
        cubes = torch.zeros(b, 3, *model.cube_shape, dtype=torch.uint8, device=self.device)  # (B, 3, t, h, w)
        state = self.base.glance(self._glance_inputs(b)[0]).state  # shapes of the real state; zeros below
        return (
            cubes,
            torch.zeros_like(state.global_feats),  # (B, Cg)
            torch.zeros_like(state.pooled),  # (B, D)
            torch.zeros_like(state.step),  # (B,) step 0: a valid head index in the stale rows
        )

    # ------------------------------------------------------------------------------------------ stages
    @torch.inference_mode()
    def glance(self, frames_small: torch.Tensor) -> GlanceOutput:
        bucket = bucket_for(frames_small.shape[0], self.buckets)
        if bucket is None:
            return self.base.glance(frames_small)
        with torch.cuda.device(self.device):
            feats, centres, logits, pooled, step, policy = self._glance[bucket].run(frames_small)
        return GlanceOutput(feats, centres, logits, FocusState(feats, pooled, step), policy)

    @torch.inference_mode()
    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        bucket = bucket_for(cubes.shape[0], self.buckets)
        if bucket is None:
            return self.base.focus(cubes, state)
        with torch.cuda.device(self.device):
            logits, feats, pooled, step = self._focus[bucket].run(cubes, *state)
        return logits, FocusState(feats, pooled, step)
