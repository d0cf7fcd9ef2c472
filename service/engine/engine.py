"""The serving engine thread: admission, cancellation and the loop that drives the scheduler step by step.

Each step, under the lock: expire deadlines, ``plan()``, snapshot the active budget. Outside the lock: the step's
tensor work (``service.engine.step``: one glance batch, one focus batch, the exit decisions). Under the lock
again: ``apply()``; requests that left are answered at once and their slots refill at the next step. The engine's
own bookkeeping (one entry per unfinished request) is asserted equal to the scheduler's after every transition.

Budgets: ``budget`` (``service.engine.active_budget.ActiveBudget``) holds the active ``BudgetState``; operators
change it through ``service.budget.control.BudgetControl``, under this engine's lock. The runner thread snapshots it
once per step and binds it to the requests whose glance runs in that step, so a swap applies atomically at a step
boundary, a request that is already in flight finishes under the version it started with, and every result reports
the version whose thresholds decided its exit.

Automatic budget (``mode: auto``): at every step boundary, before ``plan()``, the controller of
``service.engine.autobudget`` gets the arrivals (every submit, refused ones too), the backlog, the measured step costs
and the cubes answered videos ran, and may pick another level (``ActiveBudget.steer_locked``: a new version), so
answers report the level and version that decided them. While it is pinned at its floor, submits beyond the queue the
floor serves within the objective are refused (QueueFull). A manual swap turns it off.

Deadlines: a request whose deadline comes within about one step (the measured step wall time) and that had its
glance leaves with its prediction so far (exit reason ``deadline``), unless ``deadline_answers`` is off; one that
never got its glance fails with DeadlineExceeded once its deadline passed. Requests with ``on_progress`` get their
prediction after every step that computed something for them (anytime predictions), on this thread.

Failures: a model call that raises is retried one sample at a time (in the step), so only the samples that fail
on their own get the error on their future; the runner thread never dies of a step.

Log lines about one request carry its client-facing ID (``EngineRequest.client_id``, the ``X-Request-ID``) as their
``request_id``, like every other line of that request; the integer key stays the engine's own ("engine key").
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError

import numpy as np

from model.budgets import BudgetTable
from model.config import AdaFocusConfig
from model.macs import CostReport
from service.engine.active_budget import ActiveBudget
from service.engine.batch_costs import StepCostTable
from service.engine.config import EngineConfig
from service.engine.errors import DeadlineExceeded, EngineDraining, EngineError, QueueFull, RequestCancelled
from service.engine.observer import EngineObserver, NullObserver
from service.engine.runners.torch_runner import Runner
from service.engine.scheduler import Finished, RequestOutput, RequestStatus, Scheduler, StepPlan
from service.engine.step import Entry, StepExecutor
from service.engine.step_timing import Pilot
from service.engine.types import EngineRequest, EngineResult, Progress

log = logging.getLogger(__name__)


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
        self.video_shape = (model_config.num_frames, model_config.frame_size, model_config.frame_size)
        self._cost_table = StepCostTable(config.batch_cap)
        self._step_executor = StepExecutor(runner, model_config, costs, self.observer, clock, self._cost_table)
        self._scheduler = Scheduler(config, model_config.num_cubes)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # runner thread waits here when there is nothing to do
        self._space = threading.Condition(self._lock)  # blocking submitters wait here for queue space
        self._entries: dict[int, Entry] = {}  # one per unfinished request: the scheduler's keys
        self._by_future: dict[Future[EngineResult], int] = {}
        self._jobs: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self._ids = itertools.count()
        self._draining = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        # step timing and the automatic budget's inputs (public for monitoring: ``video_costs``, ``step_seconds``)
        self.pilot = Pilot(config, self._cost_table, costs.glance_gmacs, costs.focus_step_gmacs)
        self.budget = ActiveBudget(budgets, self.num_exits, self.pilot, self._lock, self.observer, clock)

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
        cap = self.config.batch_cap
        sizes = sorted({1, cap})
        if self.config.uses_costs:  # the admission rule reads the cost curve: measure it
            sizes = sorted({*(2**i for i in range(cap.bit_length()) if 2**i <= cap), cap})
        self.call_on_runner(lambda: self._step_executor.warmup(sizes))

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
            if rid is None:  # already answered (or never submitted here)
                return
            done = self._scheduler.cancel(rid)
            assert done is not None, f"request {rid} has an entry but the scheduler does not know it"
            (entry,) = self._pop([done])
        if _resolve(entry.future, error=RequestCancelled("the request was cancelled")) or future.cancelled():
            self.observer.on_reject("cancelled")

    # ------------------------------------------------------------------------------------------ submit path
    def _submit(self, request: EngineRequest, block: bool, timeout: float | None) -> Future[EngineResult]:
        self._check_frames(request.frames)
        level = None if request.budget is None else self.budget.levels.get(request.budget)
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
                self.pilot.on_arrival(now, self._scheduler.num_waiting)
                self._scheduler.add(rid, request.deadline, request.group)
            except QueueFull:
                self.observer.on_reject("queue_full")
                raise
            self._entries[rid] = Entry(rid, request, future, now, level)
            self._by_future[future] = rid
            self._check_books()
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
                        if self._scheduler.in_flight is not None:
                            self._scheduler.abandon(self._scheduler.in_flight)
                        self._scheduler.abort_all()
                        # every request, whatever half-applied state the failed step left the two books in
                        aborted = list(self._entries.values())
                        self._entries.clear()
                        self._by_future.clear()
                    self._fail(aborted, EngineError("internal engine error"), "error")

    def _step(self) -> None:
        start = self.clock()
        with self._lock:
            expired = self._scheduler.expire(start, self.pilot.deadline_margin)
            late = list(zip(expired, self._pop(expired), strict=True))
            steer = self.budget.steer_locked(start, self._scheduler.num_waiting)
            plan = self._scheduler.plan(self._cost_table.snapshot() if self.config.uses_costs else None)
            snapshot = self.budget.current()
            glance = [self._entries[rid] for rid in plan.glance]
            focus = [(self._entries[rid], self._scheduler.exit_index(rid)) for rid in plan.focus]
        if steer is not None:
            self.observer.on_budget(steer.name, steer.version)
        failed = [entry for fin, entry in late if fin.status == RequestStatus.FINISHED_DEADLINE]
        self._fail(failed, DeadlineExceeded("the request's deadline passed before its glance"), "deadline")
        self._answer([(fin, entry) for fin, entry in late if fin.status != RequestStatus.FINISHED_DEADLINE])
        outputs = self._step_executor.run(glance, focus, snapshot)
        self._finish_step(plan, outputs, [*glance, *(e for e, _ in focus)])
        with self._lock:
            self.pilot.on_step(self.clock() - start, self._step_executor.model_seconds)

    def _finish_step(self, plan: StepPlan, outputs: dict[int, RequestOutput], planned: list[Entry]) -> None:
        with self._lock:
            finished = self._scheduler.apply(plan, outputs)
            done = list(zip(finished, self._pop(finished), strict=True))
            depth, active = self._scheduler.num_waiting, self._scheduler.num_running
            self._space.notify_all()
        leaving = {entry.request_id for _, entry in done}
        for entry in planned:  # not for a request that failed, or was cancelled or expired while the step ran
            out = outputs.get(entry.request_id)
            if entry.request.on_progress is None or out is None or out.failed:
                continue
            if entry.request_id in leaving or self._scheduler.status(entry.request_id) is not None:
                self._progress(entry, out, entry.request_id in leaving)
        self._answer(done)
        self.observer.on_queue(depth, active)

    def _progress(self, entry: Entry, out: RequestOutput, final: bool) -> None:
        try:
            event: Progress = self._step_executor.progress(entry, out, final)
            assert entry.request.on_progress is not None
            entry.request.on_progress(event)
        except Exception:
            log.exception("the progress callback failed (engine key %d)", entry.request_id, extra=_about(entry))

    def _answer(self, done: list[tuple[Finished, Entry]]) -> None:
        """Resolve the futures of requests that left: a result, or the error of a failed step."""
        now = self.clock()
        for fin, entry in done:
            if fin.status == RequestStatus.FINISHED_FAILED:
                error = EngineError(f"the model step failed for this request: {entry.error!r}")
                error.__cause__ = entry.error
                self._fail([entry], error, "error")
                continue
            try:
                result = self._step_executor.result(entry, fin, now)
            except Exception as exc:
                log.exception("building the result failed (engine key %d)", entry.request_id, extra=_about(entry))
                self._fail([entry], EngineError(f"could not build the result: {exc!r}"), "error")
                continue
            with self._lock:
                self.pilot.on_result(result.budget, result.cubes_used)
            log.debug(
                "answered at exit %d (%s) under budget %s version %d (engine key %d)", result.exit_step,
                result.exit_reason, result.budget, result.budget_version, entry.request_id, extra=_about(entry),
            )
            if _resolve(entry.future, result=result) and entry.request.observed:
                self.observer.on_result(result)

    # ------------------------------------------------------------------------------------------ bookkeeping
    def _pop(self, finished: list[Finished]) -> list[Entry]:
        """The entries of requests the scheduler just finished (under the lock), in the same order."""
        entries = [self._entries.pop(f.request_id) for f in finished]
        for entry in entries:
            del self._by_future[entry.future]
        self._check_books()
        return entries

    def _check_books(self) -> None:
        assert self._entries.keys() == self._scheduler.requests.keys(), "engine entries differ from the scheduler's"
        assert len(self._by_future) == len(self._entries), "a future without an entry, or an entry without one"

    def _abort_locked(self) -> list[Entry]:
        return self._pop(self._scheduler.abort_all())

    def _fail(self, entries: list[Entry], error: EngineError, reason: str) -> None:
        for entry in entries:
            if _resolve(entry.future, error=error):
                self.observer.on_reject(reason)


def _about(entry: Entry) -> dict[str, str]:
    """The ``extra`` of a log line about one request: its client-facing ID (``X-Request-ID``) as the line's
    ``request_id``, as every other log line of that request has it (the engine thread has no request context)."""
    return {"request_id": entry.request.client_id}


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
