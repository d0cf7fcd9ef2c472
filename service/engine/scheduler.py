"""The engine's scheduling policy: a pure, synchronous state machine (no I/O, no torch, no clock of its own).

Each step the engine calls ``plan()`` to learn which waiting requests get their glance and which active requests
get their next cube, runs the model, and hands the per-request outcomes to ``apply(plan, outputs)``, which
returns the requests that finished. As in vLLM's v1 scheduler there are no phases: a request's one progress
counter is its exit index (-1 before the glance, then 0..K), and requests at different exit indices share one
focus batch because f_L's weights are shared by every step.

Modes (same code, different admission rule):
- ``continuous``: a slot freed by an exit may be refilled by a waiting request at the very next step. With
  ``admission="cost"`` (the default) and the measured ``StepCosts`` passed to ``plan``, the waiting requests are held
  while admitting them would cost the requests in flight more than it gains them (expected finish times:
  ``service.engine.admission``); a hold ends at the latest when the requests in flight have left. The slot rule
  comes first: with ``min_glance_batch`` > 1, admit only once that many slots are free, or fewer if fewer wait, or
  at once when nothing is active; ``min_glance_batch=None``: that batch is the knee of the glance cost per video
  (``service.engine.batch_costs``), and the oldest waiting request waits at most ``max_glance_wait_steps`` for it;
- ``drain``: admit a batch only when nothing is active, then run it until every sample has left (batched exit);
- ``single``: one request at a time end to end (batch size 1).

Cancellation and deadlines are state transitions; they may happen between ``plan`` and ``apply`` (the outputs
of a request that left meanwhile are ignored).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.engine.admission import ARRIVAL_WEIGHT, Admission, ExitHazards, admit_now
from service.engine.batch_costs import StepCosts, knee_batch
from service.engine.config import EngineConfig
from service.engine.errors import QueueFull
from service.engine.fairness import active_per_group, check, pick


class RequestStatus(enum.IntEnum):
    """Ordered so that every terminal status sorts after RUNNING (``is_finished``)."""

    WAITING = 0  # in the admission queue
    RUNNING = 1  # admitted: holds an active slot (frames on the device) until it leaves
    FINISHED_CONFIDENT = 2  # met its exit threshold
    FINISHED_MAX_CUBES = 3  # used all K cubes
    FINISHED_AT_DEADLINE = 4  # its deadline came near after its glance: answered with its prediction so far
    FINISHED_CANCELLED = 5  # cancelled (client gone, or shutdown without drain)
    FINISHED_DEADLINE = 6  # deadline passed before it finished (and without an answer)
    FINISHED_FAILED = 7  # the model step failed for it

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.RUNNING


@dataclass
class SchedRequest:
    request_id: int
    arrival: int  # admission-queue order, for FIFO ties
    deadline: float | None
    queued_step: int = 0  # the scheduler step at which it was queued (bounds its wait for a glance batch)
    status: RequestStatus = RequestStatus.WAITING
    exit_index: int = -1  # last exit evaluated: -1 before the glance, then 0..K
    cubes_run: int = 0  # cubes computed through f_L (skipped cubes advance exit_index only)
    last_step: int = -1  # last step that scheduled it, for round-robin when more are active than fit a batch
    group: str | None = None  # requests of one group (a long video's segments) share its fairness cap


@dataclass(frozen=True)
class StepPlan:
    step: int  # step counter, from 0
    glance: tuple[int, ...]  # request ids admitted this step: run the glance (exit 0) for them
    focus: tuple[int, ...]  # active request ids that get their next cube this step


@dataclass(frozen=True)
class RequestOutput:
    """What the step did for one planned request (the engine builds it; tests build it by hand)."""

    exit_index: int  # exit reached this step: 0 after the glance; after a cube, its exit plus any skipped cubes
    exited: bool = False  # met its threshold at ``exit_index``
    cubes_run: int = 0  # cubes computed through f_L this step (0 for the glance, 1 for a focus step)
    failed: bool = False  # the model call failed for it; the rest of the fields are ignored


@dataclass(frozen=True)
class Finished:
    request_id: int
    status: RequestStatus
    exit_index: int  # -1 if it left before its glance
    cubes_run: int


@dataclass
class Scheduler:
    config: EngineConfig
    num_cubes: int  # K: exits 0..K
    step: int = 0
    waiting: deque[int] = field(default_factory=deque)
    running: dict[int, SchedRequest] = field(default_factory=dict)  # insertion order = admission order
    requests: dict[int, SchedRequest] = field(default_factory=dict)  # every unfinished request
    in_flight: StepPlan | None = None  # planned, not yet applied (or abandoned)
    hazards: ExitHazards = field(init=False)  # who left after how many cubes (the cost rule's expected lives)
    arrivals_per_step: float = 0.0  # moving average of requests added between two plans
    last_admission: Admission | None = None  # the cost rule's last decision, for tests and monitoring
    _arrivals: int = 0
    _added: int = 0  # requests added since the last plan

    def __post_init__(self) -> None:
        self.hazards = ExitHazards(self.num_cubes)

    # ------------------------------------------------------------------------------------------ queries
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def status(self, request_id: int) -> RequestStatus | None:
        req = self.requests.get(request_id)
        return None if req is None else req.status

    def exit_index(self, request_id: int) -> int:
        """The last exit evaluated for an unfinished request: -1 before its glance, then 0..K-1."""
        return self.requests[request_id].exit_index

    # ------------------------------------------------------------------------------------------ transitions
    def add(self, request_id: int, deadline: float | None = None, group: str | None = None) -> None:
        """Queue a request (of ``group``, if any); raises QueueFull when ``max_queue`` are already waiting."""
        if request_id in self.requests:
            raise ValueError(f"request {request_id} is already scheduled")
        if len(self.waiting) >= self.config.max_queue:
            raise QueueFull(f"admission queue is full ({self.config.max_queue} waiting)")
        self.requests[request_id] = SchedRequest(
            request_id, self._arrivals, deadline, queued_step=self.step, group=group
        )
        self._arrivals += 1
        self._added += 1
        self.waiting.append(request_id)
        # NOTE(engine): O(1) here (called per submit, from request threads); the full O(n) check runs per step
        assert len(self.waiting) + len(self.running) == len(self.requests), "request sets out of sync"

    def plan(self, costs: StepCosts | None = None) -> StepPlan:
        """Admit waiting requests (glance) and pick active ones for their next cube (focus). ``costs`` (measured
        by the engine) feed the cost rule of admission and the automatic ``min_glance_batch``; None: admit eagerly."""
        assert self.in_flight is None, "plan() called twice without apply()"
        weight = ARRIVAL_WEIGHT if self.step else 1.0  # the first step's arrivals seed the average
        added = min(self._added, self.config.batch_cap)  # a burst beyond one batch is queue, not rate
        self.arrivals_per_step += weight * (added - self.arrivals_per_step)
        self._added = 0
        cap = self.config.batch_cap
        # requests already active before this step, least recently scheduled first (round-robin past ``cap``)
        ready = sorted(self.running.values(), key=lambda r: (r.last_step, r.arrival))
        assert all(r.exit_index >= 0 for r in ready), "an active request has no glance"
        focus = tuple(r.request_id for r in ready[:cap])
        glance = self._pick(self._admissible(costs))
        for rid in glance:
            req = self.requests[rid]
            req.status = RequestStatus.RUNNING
            self.running[rid] = req
        for rid in glance + focus:
            self.requests[rid].last_step = self.step
        plan = StepPlan(self.step, glance, focus)
        self.in_flight = plan
        self.step += 1
        assert len(plan.glance) <= cap and len(plan.focus) <= cap, f"batch over {cap}: {plan}"
        assert not set(plan.glance) & set(plan.focus), f"request in both stages: {plan}"
        assert plan.glance or plan.focus or not self.waiting, f"idle step with work waiting: {plan}"
        self.check_invariants()
        return plan

    def apply(self, plan: StepPlan, outputs: Mapping[int, RequestOutput]) -> list[Finished]:
        """Record the step's outcome; returns the requests that left (exited, ran out of cubes, or failed)."""
        assert plan is self.in_flight, "apply() must get the plan of the step in flight"
        self.in_flight = None
        finished: list[Finished] = []
        K = self.num_cubes
        for stage, rids in (("glance", plan.glance), ("focus", plan.focus)):
            for rid in rids:
                req = self.running.get(rid)
                if req is None:  # cancelled or expired while the step ran
                    continue
                out = outputs.get(rid)
                assert out is not None, f"no output for planned request {rid}"
                if out.failed:
                    finished.append(self._finish(req, RequestStatus.FINISHED_FAILED))
                    continue
                if stage == "glance":
                    assert req.exit_index == -1 and out.cubes_run == 0, f"bad glance output {out} for {req}"
                else:
                    assert out.cubes_run == 1, f"a focus step runs one cube, got {out}"
                assert req.exit_index < out.exit_index <= K, f"exit index must advance within 0..{K}: {out}, {req}"
                req.exit_index = out.exit_index
                req.cubes_run += out.cubes_run
                self.hazards.record(req.cubes_run, out.exited or out.exit_index == K)
                assert req.cubes_run <= req.exit_index, f"more cubes than exits: {req}"
                if out.exited:
                    finished.append(self._finish(req, RequestStatus.FINISHED_CONFIDENT))
                elif out.exit_index == K:
                    finished.append(self._finish(req, RequestStatus.FINISHED_MAX_CUBES))
        self.check_invariants()
        return finished

    def abandon(self, plan: StepPlan) -> None:
        """The step in flight produced no outputs (an engine bug): forget it, so ``plan`` may be called again.

        The requests it planned keep their state; the engine decides what happens to them (it aborts them all).
        """
        assert plan is self.in_flight, "abandon() must get the plan of the step in flight"
        self.in_flight = None

    def cancel(self, request_id: int) -> Finished | None:
        """Remove a waiting or active request; None if it is unknown or already finished."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        done = self._finish(req, RequestStatus.FINISHED_CANCELLED)
        self.check_invariants()
        return done

    def expire(self, now: float, answer_within: float | None = None) -> list[Finished]:
        """Remove every request whose deadline is at or before ``now`` (FINISHED_DEADLINE). With ``answer_within``
        (deadline answers on), a request past its glance leaves as soon as its deadline is within
        ``answer_within`` of ``now`` (FINISHED_AT_DEADLINE: answered with its prediction so far)."""
        finished = []
        for req in list(self.requests.values()):
            if req.deadline is None:
                continue
            if answer_within is not None and req.exit_index >= 0 and req.deadline <= now + answer_within:
                finished.append(self._finish(req, RequestStatus.FINISHED_AT_DEADLINE))
            elif req.deadline <= now:
                finished.append(self._finish(req, RequestStatus.FINISHED_DEADLINE))
        self.check_invariants()
        return finished

    def abort_all(self) -> list[Finished]:
        """Cancel everything (shutdown without drain)."""
        finished = [self._finish(r, RequestStatus.FINISHED_CANCELLED) for r in list(self.requests.values())]
        self.check_invariants()
        return finished

    # ------------------------------------------------------------------------------------------ internals
    def glance_batch(self, costs: StepCosts | None) -> int:
        """The glance batch continuous mode waits for: ``min_glance_batch``, or when automatic the knee of the
        glance cost per video up to the batch cap (1 without costs)."""
        if self.config.min_glance_batch is not None:
            return self.config.min_glance_batch
        if costs is None:
            return 1
        sizes = costs.glance[: min(self.config.batch_cap, self.config.active_cap)]
        return knee_batch(sizes, self.config.glance_batch_tolerance)

    def _admissible(self, costs: StepCosts | None = None) -> int:
        """How many waiting requests this step may admit."""
        if self.config.mode != "continuous" and self.running:
            return 0  # drain and single: the current batch must leave entirely first
        free = self.config.active_cap - len(self.running)
        admissible = max(0, min(free, self.config.batch_cap, len(self.waiting)))
        if not self.running or not self.waiting:
            return admissible  # never idle with work waiting
        oldest = self.requests[self.waiting[0]]
        automatic = self.config.min_glance_batch is None
        if automatic and self.step - oldest.queued_step >= self.config.max_glance_wait_steps:
            return admissible  # the oldest has waited long enough
        if admissible < min(self.glance_batch(costs), len(self.waiting)):
            return 0  # wait for a larger, cheaper-per-video glance batch while the active requests progress
        if self.config.admission == "cost" and costs is not None:
            return admissible if self._admission_pays(costs, admissible) else 0
        return admissible

    def _pick(self, n: int) -> tuple[int, ...]:
        """Which ``n`` (at most) waiting requests to admit: ``service.engine.fairness`` (FIFO without groups)."""
        if n <= 0:
            return ()
        if all(self.requests[rid].group is None for rid in self.waiting) and not self._grouped_running():
            return tuple(self.waiting.popleft() for _ in range(n))  # no groups: the plain queue order
        running = active_per_group((r.request_id, r.group) for r in self.running.values())
        waiting = [(rid, self.requests[rid].group) for rid in self.waiting]
        chosen = pick(waiting, running, n, self.config.group_max_active)
        for rid in chosen:
            self.waiting.remove(rid)
        return tuple(chosen)

    def _grouped_running(self) -> bool:
        return any(r.group is not None for r in self.running.values())

    def _admission_pays(self, costs: StepCosts, n: int) -> bool:
        """The cost rule for admitting ``n`` now (``service.engine.admission``); recorded in ``last_admission``."""
        in_flight = [r.cubes_run for r in self.running.values()]
        behind = len(self.waiting) - n
        cap = self.config.batch_cap
        self.last_admission = admit_now(costs, cap, self.hazards, in_flight, n, behind, self.arrivals_per_step)
        return self.last_admission.admit

    def _finish(self, req: SchedRequest, status: RequestStatus) -> Finished:
        assert status.is_finished and not req.status.is_finished, f"{req} cannot become {status.name}"
        if req.status == RequestStatus.WAITING:
            self.waiting.remove(req.request_id)
        else:
            del self.running[req.request_id]
        del self.requests[req.request_id]
        req.status = status
        return Finished(req.request_id, status, req.exit_index, req.cubes_run)

    def check_invariants(self) -> None:
        assert len(self.running) <= self.config.active_cap, f"{len(self.running)} active > {self.config.active_cap}"
        assert len(self.waiting) <= self.config.max_queue, f"{len(self.waiting)} waiting > {self.config.max_queue}"
        waiting = set(self.waiting)
        assert len(waiting) == len(self.waiting), "a request is queued twice"
        assert not waiting & self.running.keys(), "a request is both waiting and running"
        assert waiting | self.running.keys() == self.requests.keys(), "a request is in neither or an unknown set"
        for rid in waiting:
            assert self.requests[rid].status == RequestStatus.WAITING
        check(active_per_group((r.request_id, r.group) for r in self.running.values()), self.config.group_max_active)
        for req in self.running.values():
            assert req.status == RequestStatus.RUNNING, f"{req} in the running set"
            assert -1 <= req.exit_index < self.num_cubes, f"{req} should have finished"
