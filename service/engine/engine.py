"""The serving engine: one runner thread owns the model and drives the pure scheduler, step by step.

Each step, under the lock: expire deadlines, ``plan()``, snapshot the active budget. Outside the lock: run ONE
glance batch for the requests admitted this step and ONE focus batch with the next cube of every planned active
request (mixed step indices: f_L is shared), then compare each sample's exit score with its threshold. Under the
lock again: ``apply()``; requests that left are answered at once and their slots refill at the next step.

Budgets: a swap replaces the active ``BudgetState`` (new version) under the lock. The runner thread snapshots it
once per step and binds it to the requests whose glance runs in that step, so a swap applies atomically at a
step boundary, a request that is already in flight finishes under the version it started with, and every result
reports the version whose thresholds decided its exit.

Failures: a model call that raises is retried one sample at a time, so only the samples that fail on their own
get the error on their future; the runner thread never dies of a step.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from model.adafocus import AdaFocusV3, FocusState
from model.budgets import BudgetLevel, BudgetTable, exit_scores, should_exit, validate_thresholds
from model.config import AdaFocusConfig
from model.cost import CostReport, cost_report
from model.cubes import covered_cube_mask, glance_frames, integer_starts
from service.engine.errors import DeadlineExceeded, EngineDraining, EngineError, QueueFull, RequestCancelled
from service.engine.observer import EngineObserver, NullObserver, Stage
from service.engine.runner import Runner
from service.engine.scheduler import Finished, RequestOutput, RequestStatus, Scheduler, SchedulerConfig, StepPlan
from service.engine.types import BudgetState, CubeBox, EngineConfig, EngineRequest, EngineResult

log = logging.getLogger(__name__)

TOP_K = 5
CUSTOM_BUDGET = "custom"


@dataclass(frozen=True)
class _Budget:
    """The thresholds one request runs under, bound at its glance."""

    name: str
    version: int
    thresholds: tuple[float, ...]  # eta_0 .. eta_K


@dataclass(eq=False)
class _Entry:
    """The engine's side of one request: its future, its device tensors and its progress."""

    request_id: int
    request: EngineRequest
    future: Future[EngineResult]
    submitted: float
    level: BudgetLevel | None  # the per-request level, if it named one
    budget: _Budget | None = None  # bound at the glance
    glance_start: float = 0.0
    frames: torch.Tensor | None = None  # (T, H, W, 3) uint8 on the runner's device, from admission to answer
    starts: list[tuple[int, int, int]] = field(default_factory=list)  # per cube: (x0, y0, t0)
    skip: list[bool] = field(default_factory=list)  # per cube: covered by earlier cubes
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows of FocusState: (Cg,), (D,), ()
    logits: torch.Tensor | None = None  # (classes,) at the last exit evaluated
    exit_index: int = -1  # last exit evaluated (mirrors the scheduler's; picks the next cube to crop)
    error: BaseException | None = None


class Engine:
    def __init__(
        self,
        runner: Runner,
        model_config: AdaFocusConfig,
        budgets: BudgetTable,
        costs: CostReport,
        config: EngineConfig = EngineConfig(),
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.model_config = model_config
        self.config = config
        self.costs = costs
        self.observer: EngineObserver = observer or NullObserver()
        self.clock = clock
        self.num_exits = model_config.num_cubes + 1
        for level in budgets.levels:
            validate_thresholds(list(level.thresholds), self.num_exits)
        self.video_shape = (model_config.num_frames, model_config.frame_size, model_config.frame_size)
        self.cube_shape = (model_config.cube_frames, model_config.cube_size, model_config.cube_size)
        self._scheduler = Scheduler(SchedulerConfig.from_engine(config, model_config.num_cubes))
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # runner thread waits here when there is nothing to do
        self._space = threading.Condition(self._lock)  # blocking submitters wait here for queue space
        self._entries: dict[int, _Entry] = {}
        self._by_future: dict[Future[EngineResult], int] = {}
        self._jobs: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self._ids = itertools.count()
        default = budgets.get(budgets.default)
        self._budget = BudgetState(default.name, default.thresholds, 1, budgets.criterion, budgets)
        self._draining = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.observer.on_budget(default.name, 1)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the runner thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            if self._stopping:
                raise EngineDraining("the engine was shut down")
            self._thread = threading.Thread(target=self._loop, name="adafocus-engine", daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting; with ``drain`` finish every queued and active request first; join the thread.

        Requests still unfinished when ``timeout`` runs out (or at once without ``drain``) fail with
        EngineDraining.
        """
        with self._lock:
            self._draining = True
            self._stopping = True
            aborted = [] if drain and self._thread is not None else self._abort_locked()
            self._work.notify_all()
            self._space.notify_all()
            thread = self._thread
        self._fail(aborted, EngineDraining("the engine is shutting down"), "draining")
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():  # ran out of time: drop what is left, then wait for the step in flight
            with self._lock:
                aborted = self._abort_locked()
            self._fail(aborted, EngineDraining("shutdown timed out before this request finished"), "draining")
            thread.join()

    def warmup(self) -> None:
        """Run glance and focus on dummy data at the batch sizes the engine uses (on the runner thread)."""
        cap = self._scheduler.config.batch_cap
        sizes = sorted({1, cap})
        self.call_on_runner(lambda: self._warmup(sizes))

    def call_on_runner(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the thread that owns the runner (inline if the engine is not started); wait for it."""
        if self._thread is None:
            fn()
            return
        done: Future[None] = Future()
        with self._lock:  # the runner thread only exits under the lock, once stopping with no jobs left
            if self._stopping:
                raise EngineDraining("the engine is shutting down")
            self._jobs.append((fn, done))
            self._work.notify()
        done.result()

    # ------------------------------------------------------------------------------------------ requests
    @property
    def queue_depth(self) -> int:
        return self._scheduler.num_waiting

    @property
    def active_count(self) -> int:
        return self._scheduler.num_running

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, request: EngineRequest) -> Future[EngineResult]:
        """Queue a request (thread-safe). Raises QueueFull, EngineDraining, BudgetError, or ValueError."""
        return self._submit(request, block=False, timeout=None)

    def submit_blocking(self, request: EngineRequest, timeout: float | None = None) -> Future[EngineResult]:
        """Like ``submit`` but waits for queue space instead of raising QueueFull (offline runs, benchmarks)."""
        return self._submit(request, block=True, timeout=timeout)

    def submit_many(self, requests: Iterable[EngineRequest]) -> list[Future[EngineResult]]:
        """Submit in order, waiting for queue space as needed."""
        return [self.submit_blocking(r) for r in requests]

    def cancel(self, future: Future[EngineResult]) -> None:
        """The client went away: drop its request from the queue or the active set (no-op once answered)."""
        with self._lock:
            rid = self._by_future.get(future)
            done = None if rid is None else self._scheduler.cancel(rid)
            entry = None if rid is None else self._pop_entry(rid)
        if done is None or entry is None:
            return
        if _resolve(entry.future, error=RequestCancelled("the request was cancelled")) or future.cancelled():
            self.observer.on_reject("cancelled")

    # ------------------------------------------------------------------------------------------ budgets
    def budget_state(self) -> BudgetState:
        return self._budget

    def set_budget_level(self, name: str) -> BudgetState:
        level = self._budget.levels.get(name)
        return self._swap(level.name, level.thresholds)

    def set_budget_gmacs(self, gmacs: float) -> BudgetState:
        """Switch to the most accurate level expected to spend at most ``gmacs`` per video."""
        level = self._budget.levels.best_within(float(gmacs))
        return self._swap(level.name, level.thresholds)

    def set_budget_thresholds(self, thresholds: list[float]) -> BudgetState:
        """Explicit thresholds eta_0..eta_K (validated: count, finite, non-negative); named "custom"."""
        return self._swap(CUSTOM_BUDGET, validate_thresholds(thresholds, self.num_exits))

    def _swap(self, name: str, thresholds: tuple[float, ...]) -> BudgetState:
        with self._lock:
            old = self._budget
            self._budget = BudgetState(name, thresholds, old.version + 1, old.criterion, old.levels)
            state = self._budget
        self.observer.on_budget(state.name, state.version)
        return state

    # ------------------------------------------------------------------------------------------ submit path
    def _submit(self, request: EngineRequest, block: bool, timeout: float | None) -> Future[EngineResult]:
        self._check_frames(request.frames)
        level = None if request.budget is None else self._budget.levels.get(request.budget)
        future: Future[EngineResult] = Future()
        limit = None if timeout is None else self.clock() + timeout
        with self._lock:
            while True:
                if self._draining:
                    self.observer.on_reject("draining")
                    raise EngineDraining("the engine is draining and admits no new requests")
                if self._scheduler.num_waiting < self._scheduler.config.max_queue or not block:
                    break
                left = None if limit is None else limit - self.clock()
                if left is not None and left <= 0:
                    break
                self._space.wait(left)
            now = self.clock()
            rid = next(self._ids)
            try:
                self._scheduler.add(rid, request.deadline)
            except QueueFull:
                self.observer.on_reject("queue_full")
                raise
            self._entries[rid] = _Entry(rid, request, future, now, level)
            self._by_future[future] = rid
            self._work.notify()
            depth, active = self._scheduler.num_waiting, self._scheduler.num_running
        future.add_done_callback(self._on_done)
        self.observer.on_queue(depth, active)
        return future

    def _on_done(self, future: Future[EngineResult]) -> None:
        if future.cancelled():  # cancelled by its owner (e.g. an asyncio wrapper): free its slot
            self.cancel(future)

    def _check_frames(self, frames: np.ndarray) -> None:
        T, H, W = self.video_shape
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.shape != (T, H, W, 3):
            got = (getattr(frames, "shape", None), getattr(frames, "dtype", type(frames)))
            raise ValueError(f"frames must be a uint8 array of shape {(T, H, W, 3)}, got {got}")

    # ------------------------------------------------------------------------------------------ runner thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._scheduler.has_work or self._jobs or self._stopping):
                    self._work.wait()
                jobs = list(self._jobs)
                self._jobs.clear()
                if not (jobs or self._scheduler.has_work):
                    return  # stopping and nothing left
            for fn, done in jobs:
                try:
                    fn()
                    done.set_result(None)
                except BaseException as exc:
                    done.set_exception(exc)
            if self._scheduler.has_work:
                try:
                    self._step()
                except Exception:  # an engine bug (e.g. a broken invariant): fail what is in flight, keep serving
                    log.exception("engine step failed; failing every queued and active request")
                    with self._lock:
                        self._scheduler.in_flight = None
                        aborted = self._abort_locked()
                    self._fail(aborted, EngineError("internal engine error"), "error")

    def _step(self) -> None:
        with self._lock:
            expired = self._scheduler.expire(self.clock())
            late = [e for e in (self._pop_entry(f.request_id) for f in expired) if e is not None]
            plan = self._scheduler.plan()
            snapshot = self._budget
            glance = [self._entries[rid] for rid in plan.glance]
            focus = [self._entries[rid] for rid in plan.focus]
        self._fail(late, DeadlineExceeded("the request's deadline passed"), "deadline")
        outputs: dict[int, RequestOutput] = {}
        try:
            with torch.inference_mode():
                if glance:
                    outputs.update(self._run_stage("glance", glance, snapshot))
                if focus:
                    outputs.update(self._run_stage("focus", focus, snapshot))
        except Exception as exc:  # a bug outside the model calls: fail this step's requests, keep serving
            log.exception("engine step %d failed", plan.step)
            for entry in glance + focus:
                entry.error = exc
                outputs[entry.request_id] = RequestOutput(exit_index=0, failed=True)
        self._finish_step(plan, outputs)

    def _finish_step(self, plan: StepPlan, outputs: dict[int, RequestOutput]) -> None:
        with self._lock:
            finished = self._scheduler.apply(plan, outputs)
            done = [(f, e) for f, e in ((f, self._pop_entry(f.request_id)) for f in finished) if e is not None]
            depth, active = self._scheduler.num_waiting, self._scheduler.num_running
            self._space.notify_all()
        now = self.clock()
        for fin, entry in done:
            if fin.status == RequestStatus.FINISHED_FAILED:
                error = EngineError(f"the model step failed for this request: {entry.error!r}")
                error.__cause__ = entry.error
                self._fail([entry], error, "error")
                continue
            try:
                result = self._result(entry, fin, now)
            except Exception as exc:
                log.exception("building the result of request %d failed", entry.request_id)
                self._fail([entry], EngineError(f"could not build the result: {exc!r}"), "error")
                continue
            if _resolve(entry.future, result=result):
                self.observer.on_result(result)
        self.observer.on_queue(depth, active)

    def _run_stage(self, stage: Stage, entries: list[_Entry], snapshot: BudgetState) -> dict[int, RequestOutput]:
        """One batched model call; on failure, isolate the culprits by running the samples one at a time."""
        start = self.clock()
        try:
            outputs = self._glance(entries, snapshot, start) if stage == "glance" else self._focus(entries)
        except Exception as exc:
            if len(entries) == 1:
                entries[0].error = exc
                return {entries[0].request_id: RequestOutput(exit_index=0, failed=True)}
            log.warning("%s batch of %d failed (%r); retrying one sample at a time", stage, len(entries), exc)
            outputs = {}
            for entry in entries:
                outputs.update(self._run_stage(stage, [entry], snapshot))
            return outputs
        self.observer.on_step(stage, len(entries), self.clock() - start)
        return outputs

    def _glance(self, entries: list[_Entry], snapshot: BudgetState, start: float) -> dict[int, RequestOutput]:
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
            _Budget(snapshot.name, snapshot.version, snapshot.thresholds)
            if e.level is None
            else _Budget(e.level.name, snapshot.version, e.level.thresholds)
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

    def _focus(self, entries: list[_Entry]) -> dict[int, RequestOutput]:
        cubes = torch.stack([self._crop(e) for e in entries])  # (B, 3, t, h, w) uint8
        rows = [e.state for e in entries if e.state is not None]
        assert len(rows) == len(entries), "focus before glance"
        state = FocusState(*(torch.stack(parts) for parts in zip(*rows, strict=True)))  # (B, Cg), (B, D), (B,)
        logits, new = self.runner.focus(cubes, state)  # (B, classes)
        snapshot = self._budget  # only the criterion is read: it never changes
        thresholds = []
        for e in entries:
            assert e.budget is not None
            thresholds.append(e.budget.thresholds[e.exit_index + 1])
        exits = self._exits(logits, thresholds, snapshot)  # (B,)
        outputs = {}
        for i, e in enumerate(entries):
            e.state = (new.global_feats[i], new.pooled[i], new.step[i])
            e.logits = logits[i]
            outputs[e.request_id] = self._advance(e, e.exit_index + 1, exits[i], snapshot, cubes_run=1)
        return outputs

    def _crop(self, entry: _Entry) -> torch.Tensor:
        """The next cube of ``entry``, (3, t, h, w) uint8.

        NOTE(engine): the same integer crop as ``model.cubes.integer_crop`` (same ``integer_starts``), done as a
        slice of this request's own frames so a focus batch never gathers whole clips. The engine tests compare
        every exit with the model's own forward pass, which crops with ``integer_crop``.
        """
        assert entry.frames is not None
        x0, y0, t0 = entry.starts[entry.exit_index]  # cube c = exit_index gives exit c + 1
        t, h, w = self.cube_shape
        return entry.frames[t0 : t0 + t, y0 : y0 + h, x0 : x0 + w].permute(3, 0, 1, 2)  # (3, t, h, w)

    def _exits(self, logits: torch.Tensor, thresholds: list[float], snapshot: BudgetState) -> list[tuple[bool, float]]:
        """Per sample: (meets its threshold, exit score), from logits (B, classes) and one threshold each."""
        scores = exit_scores(logits, snapshot.criterion).cpu()  # (B,)
        meets = should_exit(scores, torch.tensor(thresholds, dtype=scores.dtype), snapshot.criterion)  # (B,)
        return list(zip(meets.tolist(), scores.tolist(), strict=True))

    def _advance(
        self, entry: _Entry, index: int, decision: tuple[bool, float], snapshot: BudgetState, cubes_run: int
    ) -> RequestOutput:
        """Exit decision at ``index``; cubes covered by earlier ones are skipped without compute (same logits)."""
        assert entry.budget is not None and entry.state is not None
        K = self.num_exits - 1
        exited, score = decision
        while not exited and index < K and entry.skip[index]:
            index += 1  # cube index-1 is skipped: f_C is untouched, but its step counter still advances
            gf, pooled, step = entry.state
            entry.state = (gf, pooled, step + 1)
            exited = self._meets(score, entry.budget.thresholds[index], snapshot)
        entry.exit_index = index
        return RequestOutput(exit_index=index, exited=exited, cubes_run=cubes_run)

    @staticmethod
    def _meets(score: float, threshold: float, snapshot: BudgetState) -> bool:
        return bool(should_exit(torch.tensor([score]), torch.tensor([threshold]), snapshot.criterion)[0])

    def _result(self, entry: _Entry, fin: Finished, now: float) -> EngineResult:
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
            exit_reason="confident" if fin.status == RequestStatus.FINISHED_CONFIDENT else "max_cubes",
            gmacs=self.costs.glance_gmacs + fin.cubes_run * self.costs.focus_step_gmacs,
            budget=entry.budget.name,
            budget_version=entry.budget.version,
            queue_seconds=entry.glance_start - entry.submitted,
            compute_seconds=now - entry.glance_start,
            cubes=cubes,
        )

    def _warmup(self, sizes: list[int]) -> None:
        T, H, W = self.video_shape
        dev = self.runner.device
        with torch.inference_mode():
            for b in sizes:
                clips = torch.zeros(b, 3, T, H, W, dtype=torch.uint8, device=dev)  # (B, 3, T, H, W)
                out = self.runner.glance(glance_frames(clips, self.model_config.glance_size))
                cubes = torch.zeros(b, 3, *self.cube_shape, dtype=torch.uint8, device=dev)  # (B, 3, t, h, w)
                self.runner.focus(cubes, out.state)

    # ------------------------------------------------------------------------------------------ bookkeeping
    def _pop_entry(self, rid: int) -> _Entry | None:
        entry = self._entries.pop(rid, None)
        if entry is not None:
            self._by_future.pop(entry.future, None)
        return entry

    def _abort_locked(self) -> list[_Entry]:
        return [e for e in (self._pop_entry(f.request_id) for f in self._scheduler.abort_all()) if e is not None]

    def _fail(self, entries: list[_Entry], error: EngineError, reason: str) -> None:
        for entry in entries:
            if _resolve(entry.future, error=error):
                self.observer.on_reject(reason)


def _resolve(
    future: Future[EngineResult], result: EngineResult | None = None, error: BaseException | None = None
) -> bool:
    """Set the outcome unless the future was cancelled meanwhile; True if it was set."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- helpers
def build_engine(
    model: AdaFocusV3,
    budgets: BudgetTable,
    config: EngineConfig = EngineConfig(),
    backend: Literal["torch", "onnx", "auto"] = "torch",
    device: str | torch.device = "cpu",
    observer: EngineObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
    **runner_options: Any,
) -> Engine:
    """An engine over ``model`` with the chosen backend (not started); ``runner_options`` go to
    ``service.engine.backends.create_runner`` (e.g. ``cache_dir`` for the on-the-fly ONNX export)."""
    from service.engine.backends import create_runner

    costs = cost_report(model)
    runner = create_runner(model.eval(), backend, device, max_batch=config.max_batch, **runner_options)
    return Engine(runner, model.config, budgets, costs, config, observer, clock)


def run_offline(engine: Engine, requests: Iterable[EngineRequest], timeout: float | None = None) -> list[EngineResult]:
    """Submit every request (waiting for queue space), wait for all, return results in request order.

    Starts the engine if needed, after queueing as many requests as the queue holds, so that the first step
    plans over a full queue whatever the thread timing (deterministic batches for tests and benchmarks).
    Raises the first request's error, if any.
    """
    pending = list(requests)
    futures: list[Future[EngineResult]] = []
    if not engine.started:
        room = max(engine.config.max_queue - engine.queue_depth, 0)
        futures = [engine.submit(r) for r in pending[:room]]
    engine.start()
    futures += engine.submit_many(pending[len(futures) :])
    return [f.result(timeout) for f in futures]
