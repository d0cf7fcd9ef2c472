"""Continuous batching's admission rule: admit waiting requests now, or hold them while the requests in flight
finish, whichever the expected finish times favour (pure: no torch, no numpy, no clock).

Each step that has free slots, requests waiting and requests in flight, the scheduler asks ``admit_now`` whether
the ``n`` requests it could admit (their glance in this step, their cubes in the focus batch from the next one)
should start now or wait until the requests in flight have left (what drain does). Summed over expected finish
times, with G and F the measured seconds of a glance and a focus call per batch size (``StepCosts``), A_t and N_t
the expected number of in-flight requests and of newcomers still there at step t (``ExitHazards``), and
tau(r) = F(min(r, B)) * r / min(r, B) the time for r active requests to advance one cube (round robin past B):
- the requests in flight lose the glance call now, R * G(n), and at each later step the focus time the newcomers
  add, A_t * (tau(A_t + N_t) - tau(A_t));
- the newcomers gain the hold they skip, n * sum_t tau(A_t), less what sharing the steps costs them,
  N_t * (tau(A_t + N_t) - tau(N_t));
- every request behind them (the rest of the queue and the arrivals expected while the hold lasts) loses the
  overhead of a small glance call, G(n) - (G(B) - G(B - n)): what it costs beyond joining a full batch.
It admits when the gain covers the losses.

For a step cost t(b) = a + c * b: linear (a = 0), sharing slows the newcomers by exactly the hold they skip, so
holding wins while anything is in flight: it waits, at most until the requests in flight have left, never longer
than drain would; flat (c = 0), sharing is free and the newcomers gain the whole hold: it refills at once unless
the glance call costs the requests in flight more than that; in between (a knee) the numbers decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.engine.batch_costs import StepCosts

HAZARD_WEIGHT = 0.05  # weight of one observed exit decision in the moving average of the exit hazards
ARRIVAL_WEIGHT = 0.1  # weight of one step's arrivals in the moving average of arrivals per step


class ExitHazards:
    """h[s] = P(a request leaves right after its s-th cube | it ran s cubes), s = 0..K-1 (0: after its glance; K
    cubes end every request), a moving average of what the scheduler applied. Counted in cubes run, not exit
    indices, so that cubes skipped because earlier ones covered their frames shorten the expected lives too.
    0 until observed: no early exits, the longest lives."""

    def __init__(self, num_cubes: int, weight: float = HAZARD_WEIGHT) -> None:
        self.num_cubes, self.weight = num_cubes, weight
        self._h = [0.0] * num_cubes

    @property
    def hazards(self) -> tuple[float, ...]:
        return tuple(self._h)

    def leaves_at(self, cubes_run: int) -> float:
        return self._h[cubes_run]

    def record(self, cubes_run: int, left: bool) -> None:
        """A request that has run ``cubes_run`` cubes (0: its glance only) left after this step, or went on."""
        if 0 <= cubes_run < self.num_cubes:
            self._h[cubes_run] += self.weight * (float(left) - self._h[cubes_run])

    def alive(self) -> list[list[float]]:
        """alive[s][t]: P(a request in flight after s cubes is still in flight after t more focus steps)."""
        K = self.num_cubes
        table = []
        for k in range(K):
            row = [1.0]
            for t in range(1, K + 1):
                row.append(0.0 if k + t >= K else row[-1] * (1.0 - self._h[k + t]))
            table.append(row)
        return table


@dataclass(frozen=True)
class Admission:
    """The terms of one decision, in request-seconds (``admit_now`` returns it; ``admit`` is the decision)."""

    gain: float  # what the newcomers gain by starting now
    in_flight_cost: float  # what the requests in flight lose
    backlog_cost: float  # what the requests behind lose (the overhead of this small glance call)

    @property
    def admit(self) -> bool:
        return self.gain > self.in_flight_cost + self.backlog_cost


def interpolate(per_call: Sequence[float], samples: float) -> float:
    """Seconds of one call with a (possibly fractional, expected) number of samples: 0 at 0, linear between the
    measured sizes, the largest size's cost per sample beyond it."""
    if samples <= 0:
        return 0.0
    cap = len(per_call)
    if samples >= cap:
        return per_call[-1] * samples / cap
    low = int(samples)
    below = per_call[low - 1] if low >= 1 else 0.0
    return below + (samples - low) * (per_call[low] - below)


def cube_time(focus: Sequence[float], active: float, cap: int) -> float:
    """Seconds for ``active`` requests to advance one cube each: one focus call, round robin past ``cap``."""
    if active <= cap:
        return interpolate(focus, active)
    return focus[cap - 1] * active / cap


def admit_now(
    costs: StepCosts,
    cap: int,
    hazards: ExitHazards,
    in_flight: Sequence[int],
    n: int,
    behind: int = 0,
    arrivals_per_step: float = 0.0,
) -> Admission:
    """Admit ``n`` waiting requests now, or hold them until ``in_flight`` (the cubes each has run) have left?

    ``cap``: samples per model call; ``behind``: requests waiting behind the ``n``; ``arrivals_per_step``: the
    expected arrivals per step, which would wait behind them too while the hold lasts."""
    cap = min(cap, len(costs.glance), len(costs.focus))
    glance, focus = costs.glance[:cap], costs.focus[:cap]
    alive = hazards.alive()
    at = [0] * hazards.num_cubes  # requests in flight per cubes run
    for k in in_flight:
        at[k] += 1
    stays = 1.0 - hazards.leaves_at(0)  # a newcomer goes on past its glance
    small_call = interpolate(glance, n)
    hold = hold_steps = in_flight_cost = stretch = 0.0
    occupied = small_call  # until the newcomers have left, if admitted now
    for t in range(hazards.num_cubes + 1):  # t = 0: this step's focus call; the newcomers' cubes from t = 1
        a = sum(count * alive[k][t] for k, count in enumerate(at) if count)
        new = n * stays * alive[0][t - 1] if t >= 1 else 0.0
        if t and a <= 0.0 and new <= 0.0:
            break
        alone, shared = cube_time(focus, a, cap), cube_time(focus, a + new, cap)
        hold += alone
        hold_steps += min(1.0, a)
        occupied += shared * (1.0 if t == 0 else min(1.0, new))
        in_flight_cost += a * (shared - alone)
        stretch += new * (shared - cube_time(focus, new, cap))
    in_flight_cost += len(in_flight) * small_call
    overhead = max(0.0, small_call - (glance[cap - 1] - interpolate(glance, cap - n)))
    waiting = behind + arrivals_per_step * hold_steps
    # those behind that the batch after the hold would take along wait for the newcomers to leave instead
    room = cap - n  # what the batch after the hold would take along: those behind and the arrivals meanwhile
    left_behind = min(waiting, float(room)) * max(0.0, occupied - hold) if behind <= room else 0.0
    return Admission(n * hold - stretch, in_flight_cost, waiting * overhead + left_behind)
