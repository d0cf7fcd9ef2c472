"""The tiny engine world the engine tests share: a spread-exit tiny model, clips, their reference exits, budgets;
and the engine fakes (a fake clock, a runner that ticks it)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model.adafocus import AdaFocusV3, FocusState
from model.budgets import BudgetTable
from model.config import AdaFocusConfig, get_config
from model.exits import GlanceResult, first_exit
from model.macs import CostReport, cost_report
from model.testing import reference_exits, spread_budgets, spread_exit_model
from service.budget.control import BudgetControl
from service.engine.config import EngineConfig
from service.engine.engine import Engine
from service.engine.observer import StatsObserver
from service.engine.runners.torch_runner import Runner, TorchRunner
from service.engine.types import EngineRequest, EngineResult
from service.schemas import BudgetUpdate

NUM_CLIPS = 12
GAP = 1e-5  # no exit score may sit closer than this to a threshold: float noise must not flip an exit


@dataclass
class World:
    config: AdaFocusConfig
    model: AdaFocusV3
    costs: CostReport
    clips: np.ndarray  # (N, T, H, W, 3) uint8
    scores: torch.Tensor  # (N, K + 1) entropy at every exit, from the reference full forward pass
    labels: torch.Tensor  # (N, K + 1) argmax at every exit
    probs: torch.Tensor  # (N, K + 1) max probability at every exit
    skip: torch.Tensor  # (N, K) cubes skipped because earlier cubes covered their frames
    budgets: BudgetTable

    def expected(self, i: int, thresholds: tuple[float, ...]) -> tuple[int, int, int]:
        """(class id, exit step, cubes used) of clip ``i`` under ``thresholds``, from the full forward pass."""
        step = int(first_exit(self.scores[i : i + 1], thresholds, "entropy")[0])
        used = step - int(self.skip[i, :step].sum())
        return int(self.labels[i, step]), step, used


def build_world() -> World:
    cfg = get_config("tiny").replace(skip_covered_frames=True)
    model = spread_exit_model(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    shape = (NUM_CLIPS, cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
    clips = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    ref = reference_exits(model, clips.permute(0, 4, 1, 2, 3))  # eval forward: integer crops and skips
    probs = ref.logits.softmax(-1)  # (N, K + 1, classes)
    budgets = spread_budgets(ref.scores, default="fast")
    for name in ("fast", "mid"):
        eta = budgets.get(name).thresholds
        assert float((ref.scores[:, :-1] - torch.tensor(eta[:-1])).abs().min()) > GAP
    return World(
        config=cfg,
        model=model,
        costs=cost_report(model),
        clips=clips.numpy(),
        scores=ref.scores,
        labels=probs.argmax(-1),
        probs=probs.max(-1).values,
        skip=model.skip_mask(ref.centres),
        budgets=budgets,
    )


def make_engine(world: World, runner: Runner | None = None, **kwargs: object) -> tuple[Engine, StatsObserver]:
    clock = kwargs.pop("clock", None)
    obs = StatsObserver()
    config = EngineConfig(**kwargs)  # type: ignore[arg-type]
    runner = runner or TorchRunner(world.model)
    if clock is None:
        return Engine(runner, world.config, world.budgets, world.costs, config, obs), obs
    return Engine(runner, world.config, world.budgets, world.costs, config, obs, clock=clock), obs  # type: ignore[arg-type]


def requests(world: World, **kwargs: object) -> list[EngineRequest]:
    return [EngineRequest(frames=clip, **kwargs) for clip in world.clips]  # type: ignore[arg-type]


def check(world: World, results: list[EngineResult], thresholds: tuple[float, ...]) -> None:
    for i, r in enumerate(results):
        label, step, used = world.expected(i, thresholds)
        assert (r.class_id, r.exit_step, r.cubes_used) == (label, step, used), f"clip {i}"
        assert r.confidence == pytest.approx(float(world.probs[i, step]), abs=1e-5)
        assert r.exit_reason == ("confident" if world.scores[i, step] <= thresholds[step] else "max_cubes")
        assert r.gmacs == pytest.approx(world.costs.glance_gmacs + used * world.costs.focus_step_gmacs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TickingRunner:
    """A real TorchRunner whose every model call moves a fake clock forward by one second."""

    name = "torch"

    def __init__(self, inner: TorchRunner, clock: FakeClock) -> None:
        self.inner, self.clock, self.device = inner, clock, inner.device

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        self.clock.now += 1.0
        return self.inner.glance(frames_small)

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        self.clock.now += 1.0
        return self.inner.focus(cubes, state)


@dataclass
class DeadlineScenario:
    """``max_batch=1``, level ``full``, a clock that each model call moves by 1 s (from 100.0): clip 0 is already
    past its deadline, clip 1 has 2.5 s (its glance and first cube fit, not more), clip 2 has none."""

    engine: Engine
    observer: StatsObserver
    late: Future[EngineResult]
    near: Future[EngineResult]
    free: Future[EngineResult]


def deadline_scenario(world: World, deadline_answers: bool) -> DeadlineScenario:
    clock = FakeClock()
    runner = TickingRunner(TorchRunner(world.model), clock)
    engine, obs = make_engine(
        world, runner=runner, clock=clock, max_batch=1, max_active=2, deadline_answers=deadline_answers
    )
    BudgetControl(engine.budget).apply(BudgetUpdate(level="full"))  # every clip runs all K cubes
    late = engine.submit(EngineRequest(frames=world.clips[0], deadline=clock.now - 1))
    near = engine.submit(EngineRequest(frames=world.clips[1], deadline=clock.now + 2.5))
    free = engine.submit(EngineRequest(frames=world.clips[2]))
    engine.start()
    return DeadlineScenario(engine, obs, late, near, free)
