"""The ONNX Runtime runner against the PyTorch runner, runner selection, and the engine on either runner."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.manifest import model_specs
from exporters.onnx_export import export_bundle
from exporters.onnx_runner import CPU_PROVIDER, OnnxRunner, OrtOptions, create_session
from exporters.validate import load_clips
from model.adafocus import FocusState
from model.bundle import Bundle
from model.macs import cost_report
from service.engine.config import ENGINE_MODES, EngineConfig
from service.engine.engine import Engine, run_offline
from service.engine.runners.selection import create_runner, load_model_source, pick_faster
from service.engine.runners.torch_runner import TorchRunner
from service.engine.types import EngineRequest
from tests.exporters.tiny import make_tiny_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runner")
    bundle = make_tiny_bundle(root / "bundle")
    export_bundle(bundle, root / "onnx", parity_clips=4)
    return bundle, root / "onnx"


@pytest.fixture(scope="module")
def onnx_runner(tiny: tuple[Bundle, Path]) -> OnnxRunner:
    bundle, export = tiny
    return OnnxRunner(export, "cpu", OrtOptions(intra_op_threads=1), bundle.sha256, model_specs(bundle.model))


@pytest.fixture(scope="module")
def bound_runner(tiny: tuple[Bundle, Path]) -> OnnxRunner:
    """The IOBinding path (what CUDA uses), exercised on the CPU."""
    bundle, export = tiny
    options = OrtOptions(intra_op_threads=1, io_binding_on_cpu=True)
    return OnnxRunner(export, "cpu", options, bundle.sha256, model_specs(bundle.model))


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("bound", [False, True], ids=["numpy", "iobinding"])
def test_onnx_runner_matches_torch_runner_with_mixed_steps(
    tiny: tuple[Bundle, Path], onnx_runner: OnnxRunner, bound_runner: OnnxRunner, batch: int, bound: bool
) -> None:
    bundle, _ = tiny
    model, c = bundle.model, bundle.config
    ref = TorchRunner(model)
    onnx_runner = bound_runner if bound else onnx_runner
    assert onnx_runner.io_binding is bound
    gen = torch.Generator().manual_seed(batch)
    frames_small = torch.rand(batch, 3, c.num_frames, c.glance_size, c.glance_size, generator=gen) * 255
    want, got = ref.glance(frames_small), onnx_runner.glance(frames_small)
    assert got.centres.shape == (batch, c.num_cubes, 3) and got.centres.dtype == torch.float32
    assert got.state.step.dtype == torch.int64 and got.state.step.tolist() == [0] * batch
    torch.testing.assert_close(got.centres, want.centres, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-4)
    steps = torch.arange(batch) % c.num_cubes  # (B,) samples at different steps share one batch
    state = FocusState(want.state.global_feats, want.state.pooled, steps)
    cubes = torch.randint(0, 256, (batch, 3, *model.cube_shape), generator=gen).to(torch.uint8)
    want_logits, want_state = ref.focus(cubes, state)
    got_logits, got_state = onnx_runner.focus(cubes, state)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got_state.pooled, want_state.pooled, rtol=0, atol=1e-4)
    assert got_state.step.tolist() == (steps + 1).tolist()
    assert got_state.global_feats is state.global_feats


def test_sessions_have_spinning_off_and_pinned_threads(onnx_runner: OnnxRunner) -> None:
    assert onnx_runner.device == torch.device("cpu")
    assert onnx_runner.providers == [CPU_PROVIDER]
    for session in onnx_runner.sessions.values():
        so = session.get_session_options()
        assert so.intra_op_num_threads == 1
        assert so.inter_op_num_threads == 1
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_cuda_request_without_a_gpu_falls_back_to_cpu_with_a_log_line(
    tiny: tuple[Bundle, Path], caplog: pytest.LogCaptureFixture
) -> None:
    bundle, export = tiny
    caplog.set_level(logging.WARNING, logger="exporters.onnx_runner")
    session = create_session(export / "glance.onnx", OrtOptions(intra_op_threads=1, log_severity=4), want_cuda=True)
    assert session.get_providers() == [CPU_PROVIDER]
    assert "ONNX Runtime CUDA provider does not work here" in caplog.text
    runner = OnnxRunner(export, "cuda", OrtOptions(intra_op_threads=1), bundle.sha256)
    assert runner.device == torch.device("cpu")
    assert "torch sees no CUDA device" in caplog.text


def test_create_runner_backends(tiny: tuple[Bundle, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle, export = tiny
    caplog.set_level(logging.INFO)
    assert create_runner(bundle.model, "torch").name == "torch"
    served = create_runner(bundle.model, "onnx", bundle=bundle, export_dir=export)
    assert served.name == "onnx" and isinstance(served, OnnxRunner) and served.export_dir == export
    # no export given: exported on the fly into the cache, then reused on the next start
    fresh = create_runner(bundle.model, "onnx", bundle=bundle, cache_dir=tmp_path)
    assert isinstance(fresh, OnnxRunner) and fresh.export_dir == tmp_path / bundle.sha256[:16]
    assert fresh.manifest.bundle_sha256 == bundle.sha256
    again = create_runner(bundle.model, "onnx", bundle=bundle, cache_dir=tmp_path)
    assert isinstance(again, OnnxRunner) and again.export_dir == fresh.export_dir
    assert "reusing the cached ONNX export" in caplog.text
    (fresh.export_dir / "focus.onnx").write_bytes(b"corrupt")  # a damaged cache is exported again, not served
    repaired = create_runner(bundle.model, "onnx", bundle=bundle, cache_dir=tmp_path)
    assert isinstance(repaired, OnnxRunner) and repaired.export_dir == fresh.export_dir
    assert "is unusable (hash mismatch for focus.onnx" in caplog.text
    bare = create_runner(bundle.model, "onnx", cache_dir=tmp_path)  # a model with no bundle: keyed by fingerprint
    assert isinstance(bare, OnnxRunner) and bare.export_dir != fresh.export_dir
    with pytest.raises(ValueError, match="unknown backend"):
        create_runner(bundle.model, "tensorrt")  # type: ignore[arg-type]


def test_auto_times_both_runners_and_keeps_the_faster(
    tiny: tuple[Bundle, Path], onnx_runner: OnnxRunner, caplog: pytest.LogCaptureFixture
) -> None:
    bundle, _ = tiny
    caplog.set_level(logging.INFO, logger="service.engine.runners.selection")
    runners = [TorchRunner(bundle.model), onnx_runner]
    best, figures = pick_faster(runners, bundle.model, max_batch=4, repeats=2)  # type: ignore[list-item]
    assert set(figures) == {"torch", "onnx"}
    assert set(figures["onnx"]) == {"glance_b1_ms", "glance_b4_ms", "focus_b4_ms", "total_ms"}
    assert best.name == min(figures, key=lambda name: figures[name]["total_ms"])
    assert "auto backend: torch runner on cpu: glance_b1_ms" in caplog.text
    assert "auto backend: onnx runner on cpu: glance_b1_ms" in caplog.text
    assert f"auto backend: picked the {best.name} runner" in caplog.text
    auto = create_runner(bundle.model, "auto", bundle=bundle, export_dir=onnx_runner.export_dir, max_batch=2)
    assert auto.name in ("torch", "onnx")


def test_model_source_serves_straight_from_an_export_directory(tiny: tuple[Bundle, Path]) -> None:
    bundle, export = tiny
    source = load_model_source(export)
    assert source.export_dir == export
    assert source.bundle.sha256 == bundle.sha256
    assert source.bundle.path == export / "bundle"
    plain = load_model_source(bundle.path)
    assert plain.export_dir is None and plain.bundle.sha256 == bundle.sha256


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_engine_gives_the_same_results_with_either_runner(
    tiny: tuple[Bundle, Path], onnx_runner: OnnxRunner, mode: str
) -> None:
    bundle, _ = tiny
    clips, _ = load_clips(bundle.config, 12, seed=0)  # the clips the bundle's thresholds were spread on
    frames = [np.ascontiguousarray(c.permute(1, 2, 3, 0).numpy()) for c in clips]  # each (T, H, W, 3)
    outcomes = {}
    for runner in (TorchRunner(bundle.model), onnx_runner):
        config = EngineConfig(mode=mode, max_batch=4)  # type: ignore[arg-type]
        engine = Engine(runner, bundle.config, bundle.budgets, cost_report(bundle.model), config)
        try:
            results = run_offline(
                engine, [EngineRequest(f, budget=("fast", "mid")[i % 2]) for i, f in enumerate(frames)]
            )
        finally:
            engine.shutdown()
        outcomes[runner.name] = [(r.class_id, r.exit_step, r.cubes_used, r.budget) for r in results]
    assert outcomes["onnx"] == outcomes["torch"]
    assert len({step for _, step, _, _ in outcomes["torch"]}) >= 2  # exits vary, so the comparison has teeth
