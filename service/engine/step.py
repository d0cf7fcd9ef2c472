"""One engine step's tensor work, with no locks and no threads: the engine thread calls it between plan and apply.

Per step: ONE glance batch for the requests the scheduler admitted (frames to the device, glance, integer cube
starts, covered-cube mask, the exit-0 decision) and ONE focus batch with the next cube of every planned active
request (mixed step indices: f_L is shared), each followed by the exit rule of ``model.exits``. A model call that
raises is retried one sample at a time, so only the samples that fail on their own are marked failed. Also here:
building a finished request's result, and the warm-up calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from model.adafocus import FocusState
from model.budgets import BudgetLevel, exit_scores, should_exit
from model.config import AdaFocusConfig
from model.cubes import covered_cube_mask, glance_frames, integer_starts
from model.exits import skip_covered
from model.macs import CostReport
from service.engine.batch_costs import StepCostTable
from service.engine.config import Stage
from service.engine.observer import EngineObserver
from service.engine.runners.torch_runner import Runner
from service.engine.scheduler import Finished, RequestOutput, RequestStatus
from service.engine.types import (
    BudgetState,
    CubeBox,
    EngineRequest,
    EngineResult,
    ExitReason,
    Progress,
    StepRecord,
)

log = logging.getLogger(__name__)

TOP_K = 5
EXIT_REASONS: dict[RequestStatus, ExitReason] = {
    RequestStatus.FINISHED_CONFIDENT: "confident",
    RequestStatus.FINISHED_MAX_CUBES: "max_cubes",
    RequestStatus.FINISHED_AT_DEADLINE: "deadline",
}


@dataclass(frozen=True)
class BoundBudget:
    """The thresholds one request runs under, bound at its glance."""

    name: str
    version: int
    thresholds: tuple[float, ...]  # eta_0 .. eta_K


@dataclass(eq=False)
class Entry:
    """The engine's side of one request: its future, its device tensors and what its glance decided.

    Its progress (the exit index) is the scheduler's alone; the step is told it for every focus sample.
    """

    request_id: int
    request: EngineRequest
    future: Future[EngineResult]
    submitted: float
    level: BudgetLevel | None  # the per-request level, if it named one
    budget: BoundBudget | None = None  # bound at the glance
    glance_start: float = 0.0
    frames: torch.Tensor | None = None  # (T, H, W, 3) uint8 on the runner's device, from admission to answer
    starts: list[tuple[int, int, int]] = field(default_factory=list)  # per cube: (x0, y0, t0)
    skip: list[bool] = field(default_factory=list)  # per cube: covered by earlier cubes
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows of FocusState: (Cg,), (D,), ()
    logits: torch.Tensor | None = None  # (classes,) at the last exit evaluated
    score: float = 0.0  # the exit criterion's score at the last exit evaluated
    error: BaseException | None = None
    steps: list[StepRecord] = field(default_factory=list)  # with ``request.record_steps``: its model calls


class StepExecutor:
    """Runs the planned glance and focus batches through the runner and decides every sample's exit."""

    def __init__(
        self,
        runner: Runner,
        model_config: AdaFocusConfig,
        costs: CostReport,
        observer: EngineObserver,
        clock: Callable[[], float] = time.monotonic,
        cost_table: StepCostTable | None = None,
    ) -> None:
        self.runner = runner
        self.cost_table = cost_table  # step seconds by batch size, refined by every step (automatic glance batch)
        self.model_config = model_config
        self.costs = costs
        self.observer = observer
        self.clock = clock
        c = model_config
        self.video_shape = (c.num_frames, c.frame_size, c.frame_size)
        self.cube_shape = (c.cube_frames, c.cube_size, c.cube_size)
        self.model_seconds = 0.0  # seconds inside the last ``run``'s model calls (successful batches)

    def run(
        self, glance: list[Entry], focus: list[tuple[Entry, int]], snapshot: BudgetState
    ) -> dict[int, RequestOutput]:
        """The step's outputs per request id; ``focus`` pairs each entry with its last evaluated exit index."""
        outputs: dict[int, RequestOutput] = {}
        self.model_seconds = 0.0
        try:
            with torch.inference_mode():
                if glance:
                    outputs.update(self._run_stage("glance", [(e, -1) for e in glance], snapshot))
                if focus:
                    outputs.update(self._run_stage("focus", focus, snapshot))
        except Exception as exc:  # a bug outside the model calls: fail this step's requests, keep serving
            log.exception("engine step failed")
            for entry in [*glance, *(e for e, _ in focus)]:
                entry.error = exc
                outputs[entry.request_id] = RequestOutput(exit_index=0, failed=True)
        return outputs

    def _run_stage(
        self, stage: Stage, items: list[tuple[Entry, int]], snapshot: BudgetState
    ) -> dict[int, RequestOutput]:
        """One batched model call; on failure, isolate the culprits by running the samples one at a time."""
        start = self.clock()
        try:
            if stage == "glance":
                outputs = self._glance([e for e, _ in items], snapshot, start)
            else:
                outputs = self._focus(items, snapshot)
        except Exception as exc:
            if len(items) == 1:
                items[0][0].error = exc
                return {items[0][0].request_id: RequestOutput(exit_index=0, failed=True)}
            log.warning("%s batch of %d failed (%r); retrying one sample at a time", stage, len(items), exc)
            outputs = {}
            for item in items:
                outputs.update(self._run_stage(stage, [item], snapshot))
            return outputs
        elapsed = self.clock() - start
        self.model_seconds += elapsed
        self.observer.on_step(stage, len(items), elapsed)
        if self.cost_table is not None:
            self.cost_table.record(stage, len(items), elapsed)
        for entry, _ in items:  # a trace's record: a tuple appended, no export work on this thread
            if entry.request.record_steps:
                out = outputs[entry.request_id]
                entry.steps.append(StepRecord(stage, out.exit_index, len(items), start, start + elapsed, out.exited))
        return outputs

    def _glance(self, entries: list[Entry], snapshot: BudgetState, start: float) -> dict[int, RequestOutput]:
        dev = self.runner.device
        frames = [torch.from_numpy(np.ascontiguousarray(e.request.frames)).to(dev) for e in entries]  # (T, H, W, 3)
        clips = torch.stack([f.permute(3, 0, 1, 2) for f in frames])  # (B, 3, T, H, W)
        out = self.runner.glance(glance_frames(clips, self.model_config.glance_size))  # (B, 3, T, g, g) in
        starts = integer_starts(out.centres, self.video_shape, self.cube_shape)  # (B, K, 3) as (x0, y0, t0)
        if self.model_config.skip_covered_frames:
            skip = covered_cube_mask(starts[..., 2], self.model_config.cube_frames)  # (B, K)
        else:
            skip = torch.zeros(starts.shape[:2], dtype=torch.bool)  # (B, K)
        budgets = [
            BoundBudget(snapshot.name, snapshot.version, snapshot.thresholds)
            if e.level is None
            else BoundBudget(e.level.name, snapshot.version, e.level.thresholds)
            for e in entries
        ]
        exits = self._exits(out.logits, [b.thresholds[0] for b in budgets], snapshot)  # (B,)
        starts_l, skip_l = starts.cpu().tolist(), skip.cpu().tolist()
        outputs = {}
        for i, e in enumerate(entries):  # commit per sample only once the whole batch has succeeded
            e.budget = budgets[i]
            e.glance_start, e.frames = start, frames[i]
            e.starts = [(int(x), int(y), int(t)) for x, y, t in starts_l[i]]
            e.skip = [bool(s) for s in skip_l[i]]
            e.state = (out.state.global_feats[i], out.state.pooled[i], out.state.step[i])
            e.logits = out.logits[i]
            outputs[e.request_id] = self._advance(e, 0, exits[i], snapshot, cubes_run=0)
        return outputs

    def _focus(self, items: list[tuple[Entry, int]], snapshot: BudgetState) -> dict[int, RequestOutput]:
        cubes = torch.stack([self._crop(e, index) for e, index in items])  # (B, 3, t, h, w) uint8
        rows = [e.state for e, _ in items if e.state is not None]
        assert len(rows) == len(items), "focus before glance"
        state = FocusState(*(torch.stack(parts) for parts in zip(*rows, strict=True)))  # (B, Cg), (B, D), (B,)
        logits, new = self.runner.focus(cubes, state)  # (B, classes)
        thresholds = []
        for e, index in items:
            assert e.budget is not None
            thresholds.append(e.budget.thresholds[index + 1])
        exits = self._exits(logits, thresholds, snapshot)  # (B,); only the criterion is read: it never changes
        outputs = {}
        for i, (e, index) in enumerate(items):
            e.state = (new.global_feats[i], new.pooled[i], new.step[i])
            e.logits = logits[i]
            outputs[e.request_id] = self._advance(e, index + 1, exits[i], snapshot, cubes_run=1)
        return outputs

    def _crop(self, entry: Entry, exit_index: int) -> torch.Tensor:
        """The cube after exit ``exit_index`` of ``entry``, (3, t, h, w) uint8.

        NOTE(engine): the same integer crop as ``model.cubes.integer_crop`` (same ``integer_starts``), done as a
        slice of this request's own frames so a focus batch never gathers whole clips. The engine tests compare
        every exit with the model's own forward pass, which crops with ``integer_crop``.
        """
        assert entry.frames is not None
        x0, y0, t0 = entry.starts[exit_index]  # cube c = exit_index gives exit c + 1
        t, h, w = self.cube_shape
        return entry.frames[t0 : t0 + t, y0 : y0 + h, x0 : x0 + w].permute(3, 0, 1, 2)  # (3, t, h, w)

    @staticmethod
    def _exits(logits: torch.Tensor, thresholds: list[float], snapshot: BudgetState) -> list[tuple[bool, float]]:
        """Per sample: (passes its threshold, exit score), from logits (B, classes) and one threshold each."""
        scores = exit_scores(logits, snapshot.criterion).cpu()  # (B,)
        meets = should_exit(scores, torch.tensor(thresholds, dtype=scores.dtype), snapshot.criterion)  # (B,)
        return list(zip(meets.tolist(), scores.tolist(), strict=True))

    @staticmethod
    def _advance(
        entry: Entry, index: int, decision: tuple[bool, float], snapshot: BudgetState, cubes_run: int
    ) -> RequestOutput:
        """Exit decision at ``index``; cubes covered by earlier ones are skipped without compute (same logits)."""
        assert entry.budget is not None and entry.state is not None
        exited, score = decision
        entry.score = score
        reached, exited = skip_covered(index, exited, score, entry.skip, entry.budget.thresholds, snapshot.criterion)
        gf, pooled, step = entry.state
        entry.state = (gf, pooled, step + (reached - index))  # a skipped cube still advances f_C's step counter
        return RequestOutput(exit_index=reached, exited=exited, cubes_run=cubes_run)

    def result(self, entry: Entry, fin: Finished, now: float) -> EngineResult:
        """The answer of a request that finished confident or out of cubes."""
        assert entry.logits is not None and entry.budget is not None
        probs = torch.softmax(entry.logits.float(), dim=-1).cpu()  # (classes,)
        top = torch.topk(probs, min(TOP_K, probs.numel()))
        top_k = [(int(c), float(p)) for p, c in zip(top.values, top.indices, strict=True)]
        t, size = self.model_config.cube_frames, self.model_config.cube_size
        cubes = None
        if entry.request.explain:
            cubes = [CubeBox(t0, y0, x0, t, size, entry.skip[c]) for c, (x0, y0, t0) in enumerate(entry.starts)]
            cubes = cubes[: fin.exit_index]
        return EngineResult(
            request_id=entry.request_id,
            class_id=top_k[0][0],
            confidence=top_k[0][1],
            top_k=top_k,
            cubes_used=fin.cubes_run,
            exit_step=fin.exit_index,
            exit_reason=EXIT_REASONS[fin.status],
            gmacs=self.costs.glance_gmacs + fin.cubes_run * self.costs.focus_step_gmacs,
            budget=entry.budget.name,
            budget_version=entry.budget.version,
            queue_seconds=entry.glance_start - entry.submitted,
            compute_seconds=now - entry.glance_start,
            cubes=cubes,
            thresholds=entry.budget.thresholds,
            probabilities=tuple(probs.tolist()),
            steps=tuple(entry.steps),
        )

    def progress(self, entry: Entry, out: RequestOutput, final: bool) -> Progress:
        """The anytime prediction of ``entry`` after the step that produced ``out``."""
        assert entry.logits is not None
        probs = torch.softmax(entry.logits.float(), dim=-1)  # (classes,)
        confidence, class_id = (float(v) for v in probs.max(-1))
        cube = None
        if out.cubes_run:  # the cube this step ran: the last one not skipped before the exit it reached
            c = max(i for i in range(out.exit_index) if not entry.skip[i])
            x0, y0, t0 = entry.starts[c]
            cube = CubeBox(t0, y0, x0, self.model_config.cube_frames, self.model_config.cube_size, False)
        cubes_run = out.exit_index - sum(entry.skip[: out.exit_index])
        return Progress(
            request_id=entry.request_id,
            exit_index=out.exit_index,
            class_id=int(class_id),
            confidence=confidence,
            score=entry.score,
            cube=cube,
            gmacs=self.costs.glance_gmacs + cubes_run * self.costs.focus_step_gmacs,
            final=final,
        )

    def warmup(self, sizes: list[int]) -> None:
        """Glance and focus on dummy data at each batch size in ``sizes``; with a cost table, each size runs twice
        and the second run's seconds seed the table."""
        T, H, W = self.video_shape
        dev = self.runner.device
        with torch.inference_mode():
            for b in sizes:
                clips = torch.zeros(b, 3, T, H, W, dtype=torch.uint8, device=dev)  # (B, 3, T, H, W)
                cubes = torch.zeros(b, 3, *self.cube_shape, dtype=torch.uint8, device=dev)  # (B, 3, t, h, w)
                for _ in range(1 if self.cost_table is None else 2):
                    start = self.clock()
                    out = self.runner.glance(glance_frames(clips, self.model_config.glance_size))
                    mid = self.clock()
                    self.runner.focus(cubes, out.state)
                    end = self.clock()
                if self.cost_table is not None:
                    self.cost_table.record("glance", b, mid - start)
                    self.cost_table.record("focus", b, end - mid)
