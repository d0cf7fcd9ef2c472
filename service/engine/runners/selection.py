"""Runner selection, once at start-up: ``torch``, ``onnx`` or ``auto``.

- ``torch``: PyTorch (``TorchRunner``), in the precision and memory format ``TorchOptions`` names, its stages
  replayed as CUDA graphs per batch bucket when asked (``GraphedRunner``, CUDA only).
- ``onnx``: ONNX Runtime (``OnnxRunner``) on an exported directory; without one, the bundle is exported on the fly
  into a cache directory keyed by the bundle hash (verified and reused on the next start).
- ``auto``: both are built and timed at warm-up on the batch sizes the engine will run (glance at 1 and at
  ``max_batch``, focus at ``max_batch``); the faster one is kept and both figures are logged.

``load_model_source`` lets the server start straight from an ONNX export directory: the bundle it was made from
travels inside it (``bundle/``), so the directory alone is enough to serve.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from exporters.manifest import BUNDLE_SUBDIR, is_export_dir, model_specs, verify_export
from exporters.onnx_export import export_to_cache
from exporters.onnx_runner import OnnxRunner, OrtOptions
from model.adafocus import AdaFocusV3, FocusState
from model.bundle import Bundle, load_bundle
from service.engine.config import BACKENDS, Backend, EngineConfig
from service.engine.runners.cuda_graphs import GraphedRunner
from service.engine.runners.torch_runner import Runner, TorchOptions, TorchRunner

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "adafocus-onnx-cache"


@dataclass(frozen=True)
class ModelSource:
    bundle: Bundle
    export_dir: Path | None  # set when the path given was an ONNX export directory


def load_model_source(path: str | Path | None = None, device: str | torch.device = "cpu") -> ModelSource:
    """A bundle directory, or an ONNX export directory (its ``bundle/`` copy is loaded and must match)."""
    if path is not None and is_export_dir(path):
        root = Path(path)
        bundle = load_bundle(root / BUNDLE_SUBDIR, device)
        verify_export(root, bundle.sha256, model_specs(bundle.model))
        return ModelSource(bundle, root)
    return ModelSource(load_bundle(path, device), None)


def create_runner(
    model: AdaFocusV3,
    backend: Backend = "torch",
    device: str | torch.device = "cpu",
    *,
    bundle: Bundle | None = None,
    export_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    ort_options: OrtOptions | None = None,
    torch_options: TorchOptions = TorchOptions(),
    max_batch: int = EngineConfig().max_batch,  # the largest batch a CUDA-graph bucket must hold
) -> Runner:
    """Build the runner the engine will drive for the whole life of the process.

    ``onnx``/``auto`` serve ``export_dir`` (checked against ``bundle``, the bundle ``model`` came from, when
    given); without one the model is exported on the fly into ``cache_dir`` (with its bundle, when given).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return torch_runner(model, device, torch_options, max_batch)
    onnx_runner = _onnx_runner(model, device, bundle, export_dir, cache_dir, ort_options)
    if backend == "onnx":
        return onnx_runner
    runner, _ = pick_faster([torch_runner(model, device, torch_options, max_batch), onnx_runner], model, max_batch)
    return runner


def torch_runner(
    model: AdaFocusV3, device: str | torch.device, options: TorchOptions = TorchOptions(), max_batch: int = 32
) -> Runner:
    """The PyTorch runner ``options`` describes; with CUDA graphs, captured here for batches up to ``max_batch``."""
    base = TorchRunner(model, device, options)
    log.info("torch runner on %s: %s", base.device, options.label)
    if not options.cuda_graphs:
        return base
    if base.device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the runner is on {base.device}")
    return GraphedRunner(base, max_batch)


def _onnx_runner(
    model: AdaFocusV3,
    device: str | torch.device,
    bundle: Bundle | None,
    export_dir: str | Path | None,
    cache_dir: str | Path | None,
    ort_options: OrtOptions | None,
) -> Runner:
    options = ort_options or OrtOptions()
    sha = bundle.sha256 if bundle is not None else None
    if export_dir is None:
        started = time.perf_counter()
        export_dir, sha = export_to_cache(model, Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, bundle)
        log.info("ONNX export ready in %.1f s: %s", time.perf_counter() - started, export_dir)
    return OnnxRunner(export_dir, device, options, bundle_sha256=sha, expected=model_specs(model))


# ------------------------------------------------------------------------------------------------- auto
def probe_inputs(model: AdaFocusV3, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Dummy glance frames (B, 3, T, g, g) float and cubes (B, 3, t, h, w) uint8 on ``device``."""
    c = model.config
    gen = torch.Generator().manual_seed(batch)
    frames_small = torch.rand(batch, 3, c.num_frames, c.glance_size, c.glance_size, generator=gen) * 255
    cubes = torch.randint(0, 256, (batch, 3, *model.cube_shape), generator=gen).to(torch.uint8)
    return frames_small.to(device), cubes.to(device)


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall milliseconds of ``fn`` over ``repeats`` calls after one unmeasured call (CUDA synchronised)."""
    fn()  # warm-up: first-call allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def stage_ms(runner: Runner, model: AdaFocusV3, batch: int, repeats: int = 5) -> tuple[float, float]:
    """Median milliseconds of one glance and of one focus call (mixed step indices) at ``batch`` samples."""
    frames, cubes = probe_inputs(model, batch, runner.device)
    with torch.inference_mode():
        state = runner.glance(frames).state
        steps = torch.arange(batch, device=runner.device) % model.config.num_cubes  # (B,) mixed steps
        state = FocusState(state.global_feats, state.pooled, steps)
        glance = median_ms(lambda: runner.glance(frames), repeats, runner.device)
        focus = median_ms(lambda: runner.focus(cubes, state), repeats, runner.device)
    return glance, focus


def measure_runner(runner: Runner, model: AdaFocusV3, max_batch: int, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of the three calls the engine makes most: glance at 1 and at ``max_batch``, and one
    focus batch of ``max_batch`` samples at mixed steps."""
    glance_one, _ = stage_ms(runner, model, 1, repeats)
    glance, focus = stage_ms(runner, model, max_batch, repeats)
    figures = {"glance_b1_ms": glance_one, f"glance_b{max_batch}_ms": glance, f"focus_b{max_batch}_ms": focus}
    figures["total_ms"] = sum(figures.values())
    return figures


def pick_faster(
    runners: list[Runner], model: AdaFocusV3, max_batch: int, repeats: int = 5
) -> tuple[Runner, dict[str, dict[str, float]]]:
    """Time every candidate on the same inputs and keep the one with the smallest total."""
    figures = {runner.name: measure_runner(runner, model, max_batch, repeats) for runner in runners}
    best = min(runners, key=lambda r: figures[r.name]["total_ms"])
    for runner in runners:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in figures[runner.name].items())
        log.info("auto backend: %s runner on %s: %s", runner.name, runner.device, parts)
    log.info("auto backend: picked the %s runner", best.name)
    return best, figures
