"""The PyTorch runner's variants (precision, memory format, CUDA graphs): chosen once, same answers as eager fp32.

CUDA-graph tests need a GPU and skip without one (``scripts/gpu-bench.sh`` runs them on a GPU host)."""

from __future__ import annotations

import copy

import pytest
import torch

from model.adafocus import FocusState
from service.engine.engine import run_offline
from service.engine.runners.cuda_graphs import GraphedRunner, bucket_for, graph_buckets
from service.engine.runners.selection import probe_inputs, torch_runner
from service.engine.runners.torch_runner import Runner, TorchOptions, TorchRunner
from tests.service.engine.tiny import World, build_world, check, make_engine, requests

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA (run on a GPU host: scripts/gpu-bench.sh)")


@pytest.fixture(scope="module")
def world() -> World:
    """Defined here too so that the GPU host runs this module alone (``--noconftest``: no FastAPI there)."""
    return build_world()


def stages(runner: Runner, world: World, batch: int) -> tuple[torch.Tensor, ...]:
    frames, cubes = probe_inputs(world.model, batch, runner.device)
    out = runner.glance(frames)
    steps = torch.arange(batch, device=runner.device) % world.config.num_cubes  # (B,) mixed steps
    logits, new = runner.focus(cubes, FocusState(out.state.global_feats, out.state.pooled, steps))
    return out.centres, out.logits, logits, new.pooled, new.step


def variant(world: World, options: TorchOptions, device: str = "cpu", max_batch: int = 4) -> Runner:
    return torch_runner(copy.deepcopy(world.model), device, options, max_batch)  # channels_last rewrites weights


@pytest.mark.parametrize(
    ("max_batch", "buckets"), [(1, (1,)), (2, (1, 2)), (10, (1, 2, 4, 8, 10)), (32, (1, 2, 4, 8, 16, 32))]
)
def test_graph_buckets_are_powers_of_two_then_max_batch(max_batch: int, buckets: tuple[int, ...]) -> None:
    assert graph_buckets(max_batch) == buckets


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (3, 4), (4, 4), (9, 10), (10, 10), (11, None)])
def test_a_batch_runs_in_the_smallest_bucket_that_holds_it(n: int, bucket: int | None) -> None:
    assert bucket_for(n, (1, 2, 4, 8, 10)) == bucket


def test_options_are_validated_and_named() -> None:
    assert TorchOptions().label == "fp32"
    every = TorchOptions(precision="bf16", channels_last=True, cuda_graphs=True)
    assert every.label == "bf16+channels_last+cuda_graphs"
    with pytest.raises(ValueError, match="precision"):
        TorchOptions(precision="fp16")  # type: ignore[arg-type]


def test_cuda_graphs_are_refused_on_the_cpu(world: World) -> None:
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        variant(world, TorchOptions(cuda_graphs=True))


def test_channels_last_gives_the_eager_answers(world: World) -> None:
    eager = stages(TorchRunner(world.model), world, 3)
    nhwc = stages(variant(world, TorchOptions(channels_last=True)), world, 3)
    for a, b in zip(eager, nhwc, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_outputs_are_float32_and_close_to_fp32(world: World) -> None:
    eager = stages(TorchRunner(world.model), world, 3)
    half = stages(variant(world, TorchOptions(precision="bf16")), world, 3)
    for a, b in zip(eager[:-1], half[:-1], strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)
    assert torch.equal(eager[-1], half[-1])  # step indices


def test_the_engine_over_a_channels_last_runner_answers_as_eager(world: World) -> None:
    engine, _ = make_engine(world, variant(world, TorchOptions(channels_last=True)), max_batch=4, max_active=8)
    engine.warmup()
    results = run_offline(engine, requests(world))
    engine.shutdown()
    check(world, results, world.budgets.get("fast").thresholds)


@gpu
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_cuda_graphs_give_the_eager_answers(world: World, batch: int) -> None:
    eager = stages(TorchRunner(copy.deepcopy(world.model), "cuda"), world, batch)
    graphed = variant(world, TorchOptions(cuda_graphs=True), "cuda", max_batch=4)
    assert isinstance(graphed, GraphedRunner) and graphed.buckets == (1, 2, 4)
    for a, b in zip(eager, stages(graphed, world, batch), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@gpu
def test_a_replay_never_overwrites_an_earlier_answer(world: World) -> None:
    graphed = variant(world, TorchOptions(cuda_graphs=True), "cuda", max_batch=4)
    first = stages(graphed, world, 4)
    kept = tuple(t.clone() for t in first)
    stages(graphed, world, 3)  # same bucket, other inputs
    for a, b in zip(first, kept, strict=True):
        assert torch.equal(a, b)


@gpu
def test_the_engine_over_cuda_graphs_answers_as_eager(world: World) -> None:
    runner = variant(world, TorchOptions(cuda_graphs=True), "cuda", max_batch=4)
    engine, _ = make_engine(world, runner, max_batch=4, max_active=8)
    engine.warmup()
    results = run_offline(engine, requests(world))
    engine.shutdown()
    check(world, results, world.budgets.get("fast").thresholds)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_on_a_device_other_than_the_current_one(world: World) -> None:
    eager = stages(TorchRunner(copy.deepcopy(world.model), "cuda:1"), world, 3)
    graphed = variant(world, TorchOptions(cuda_graphs=True), "cuda:1", max_batch=4)
    for a, b in zip(eager, stages(graphed, world, 3), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
