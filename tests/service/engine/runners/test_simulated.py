"""The simulated accelerator: its cost curves, their parsing, and the padding of every call (fake clock and sleep)."""

import pytest
import torch

from model.adafocus import AdaFocusV3, FocusState
from model.config import get_config
from model.exits import GlanceResult
from service.engine.runners.simulated import (
    PAPER_V100,
    SimulatedRunner,
    StageTime,
    StepProfile,
    parse_profile,
    tiny_layers,
)
from service.engine.runners.torch_runner import TorchRunner


def test_the_paper_profile_is_the_cited_curve() -> None:
    assert PAPER_V100.glance == StageTime(12.5e-3, 2.23e-3) and PAPER_V100.focus == StageTime(12.5e-3, 0.104e-3)
    assert PAPER_V100.label == "glance 12.5+2.23b ms, focus 12.5+0.104b ms"
    assert PAPER_V100.focus.seconds(32) == pytest.approx(12.5e-3 + 32 * 0.104e-3)
    assert StepProfile.fixed(0.05).label == "glance 50+0b ms, focus 50+0b ms"


def test_profiles_parse_from_milliseconds_over_the_paper_curve() -> None:
    assert parse_profile("") is PAPER_V100
    both = parse_profile("a=2,c=0.5")
    assert (both.glance, both.focus) == (StageTime(2e-3, 0.5e-3), StageTime(2e-3, 0.5e-3))
    one = parse_profile("focus_a=1")
    assert (one.glance, one.focus) == (PAPER_V100.glance, StageTime(1e-3, PAPER_V100.focus.c))
    assert one.source == "stated: focus_a=1"
    for bad in ("b=1", "a", "a=x", "a=-1", "glance=1"):
        with pytest.raises(ValueError, match="simulated runner"):
            parse_profile(bad)


class FakeTime:
    """A clock that the inner runner advances by ``compute`` seconds per call, and a sleep that records."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 9))
        self.now += seconds


class ComputingRunner:
    """The tiny model's runner, each call taking ``compute`` seconds on ``FakeTime``."""

    def __init__(self, fake: FakeTime, compute: float) -> None:
        self.inner = TorchRunner(AdaFocusV3(get_config("tiny")).eval())
        self.name, self.device, self.fake, self.compute = "torch", self.inner.device, fake, compute

    def glance(self, frames_small: torch.Tensor) -> GlanceResult:
        self.fake.now += self.compute
        return self.inner.glance(frames_small)

    def focus(self, cubes: torch.Tensor, state: FocusState) -> tuple[torch.Tensor, FocusState]:
        self.fake.now += self.compute
        return self.inner.focus(cubes, state)


def test_every_call_is_padded_to_the_curve_and_overruns_are_counted() -> None:
    fake = FakeTime()
    inner = ComputingRunner(fake, compute=0.002)
    runner = SimulatedRunner(inner, parse_profile("a=5,c=1"), clock=fake.clock, sleep=fake.sleep)
    cfg = inner.inner.model.config
    frames = torch.zeros(3, 3, cfg.num_frames, cfg.glance_size, cfg.glance_size)  # (B, 3, T, g, g)
    out = runner.glance(frames)
    assert out.logits.shape == (3, cfg.num_classes) and fake.slept == [0.006]  # 5 + 3 x 1 ms, 2 of them computing
    cubes = torch.zeros(3, 3, cfg.cube_frames, cfg.cube_size, cfg.cube_size, dtype=torch.uint8)  # (B, 3, t, h, w)
    logits, _ = runner.focus(cubes, out.state)
    assert logits.shape == (3, cfg.num_classes) and fake.slept == [0.006, 0.006] and runner.overruns == 0
    inner.compute = 0.010  # longer than the curve's 8 ms: no sleep, one overrun
    runner.focus(cubes, out.state)
    assert fake.slept == [0.006, 0.006] and runner.overruns == 1
    assert runner.name == "simulated(torch)" and runner.device == inner.device


def test_tiny_layers_keep_the_exit_structure() -> None:
    paper = get_config("paper-mn2-r50")
    small = tiny_layers(paper)
    assert (small.num_frames, small.num_cubes, small.cube_frames, small.num_classes) == (18, 18, 1, 200)
    assert small.skip_covered_frames and small.frame_size == get_config("tiny").frame_size
    assert small.name == "paper-mn2-r50@tiny-layers" and tiny_layers(get_config("tiny")) == get_config("tiny")
