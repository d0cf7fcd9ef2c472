"""The cost rule of continuous admission on hand-built cost curves: every term worked out by hand (pure)."""

import pytest

from service.engine.admission import Admission, ExitHazards, admit_now, cube_time, interpolate
from service.engine.batch_costs import StepCosts

K = 3  # a request admitted now runs its glance, then at most 3 cubes (in_flight: the cubes each has run)

LINEAR = StepCosts(glance=(1.0, 2.0, 3.0, 4.0), focus=(1.0, 2.0, 3.0, 4.0))  # t(b) = b: batching buys nothing
FLAT = StepCosts(glance=(1.0, 1.0, 1.0, 1.0), focus=(1.0, 1.0, 1.0, 1.0))  # t(b) = 1: batching is free
KNEE = StepCosts(glance=(1.0, 1.0, 2.0, 3.0), focus=(1.0, 1.0, 2.0, 3.0))  # flat up to 2, then linear


def test_interpolation_between_and_beyond_the_measured_sizes() -> None:
    assert interpolate((1.0, 2.0, 4.0), 0) == 0.0
    assert interpolate((1.0, 2.0, 4.0), 0.5) == 0.5  # an expected half request: half a call of one
    assert interpolate((1.0, 2.0, 4.0), 2.5) == 3.0
    assert interpolate((1.0, 2.0, 4.0), 6) == 8.0  # the largest size's cost per sample beyond it
    assert cube_time((1.0, 1.5), 2, cap=2) == 1.5
    assert cube_time((1.0, 1.5), 5, cap=2) == 3.75  # round robin: 2.5 calls of 2 for each to advance one cube


@pytest.mark.parametrize(
    ("costs", "in_flight", "n", "expected", "admit"),
    [
        # linear: the two in flight (exit 0, 3 steps left) lose G(2) = 2 each now, then 2 s at each of the 2 steps
        # they share; the newcomers skip a 6 s hold but sharing stretches them by as much, 8 s, less 2 x 2 s
        (LINEAR, [0, 0], 2, Admission(gain=2 * 6.0 - 8.0, in_flight_cost=2 * 2.0 + 8.0, backlog_cost=0.0), False),
        # flat: sharing is free; the newcomers skip 3 steps of 1 s each, the two in flight lose one glance call
        (FLAT, [0, 0], 2, Admission(gain=2 * 3.0, in_flight_cost=2 * 1.0, backlog_cost=0.0), True),
        (FLAT, [0, 0, 0], 1, Admission(gain=3.0, in_flight_cost=3.0, backlog_cost=0.0), False),  # a tie holds
        # the knee: one in flight gains a partner for free ...
        (KNEE, [0], 1, Admission(gain=3.0, in_flight_cost=1.0, backlog_cost=0.0), True),
        # ... three in flight one exit from the end: a step of 4 costs 3 instead of 2, for 3 requests
        (KNEE, [1, 1, 1], 1, Admission(gain=2 * 2.0 - 2.0, in_flight_cost=3 * 1.0 + 3 * 1.0, backlog_cost=0.0), False),
        # ... one near its end and three newcomers: the glance of 3 costs it 2, the shared step 0
        (KNEE, [2], 3, Admission(gain=3 * 1.0, in_flight_cost=2.0, backlog_cost=0.0), True),
    ],
)
def test_the_rule_on_linear_flat_and_knee_curves(
    costs: StepCosts, in_flight: list[int], n: int, expected: Admission, admit: bool
) -> None:
    got = admit_now(costs, 4, ExitHazards(K), in_flight, n)
    assert got == pytest.approx(expected) and got.admit is admit


def test_requests_waiting_behind_pay_the_overhead_of_a_small_glance_call() -> None:
    hazards = ExitHazards(K)
    # FLAT: G(1) = 1, and joining a full batch instead would cost G(4) - G(3) = 0: the whole call is overhead
    assert admit_now(FLAT, 4, hazards, [0, 0, 0], 1, behind=4).backlog_cost == 4.0
    # arrivals expected while the hold lasts wait behind too: 0.5 per step over its 3 steps
    decision = admit_now(FLAT, 4, hazards, [0, 0, 0], 1, behind=4, arrivals_per_step=0.5)
    assert decision.backlog_cost == pytest.approx(4.0 + 1.5) and not decision.admit
    # LINEAR: a glance of 1 costs what it adds to a full batch: no overhead, whatever waits
    assert admit_now(LINEAR, 4, hazards, [0], 1, behind=100).backlog_cost == 0.0
    # a full batch never has overhead
    assert admit_now(FLAT, 4, hazards, [0], 4, behind=100).backlog_cost == 0.0


def test_exit_hazards_shorten_the_expected_lives() -> None:
    hazards = ExitHazards(K, weight=0.5)
    assert hazards.alive() == [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    hazards.record(1, left=True)  # h[1]: 0 -> 0.5
    hazards.record(2, left=False)  # h[2] stays 0
    hazards.record(3, left=True)  # K cubes end every request: not a hazard
    assert hazards.hazards == (0.0, 0.5, 0.0)
    assert hazards.alive()[0] == [1.0, 0.5, 0.5, 0.0]
    # FLAT, one in flight at exit 0: the hold is 1 + 0.5 + 0.5 s; at the third step an expected half newcomer
    # shares a call with an expected half request in flight: 1 s against the 0.5 s it would take alone
    assert admit_now(FLAT, 4, hazards, [0], 1).gain == pytest.approx(2.0 - 0.5 * 0.5)


def test_beyond_the_batch_cap_requests_take_turns() -> None:
    # FLAT with a cap of 2: 3 in flight at exit 2 take 1.5 s to advance one cube; a newcomer makes that 2 s
    decision = admit_now(FLAT, 2, ExitHazards(K), [2, 2, 2], 1)
    assert decision == pytest.approx(Admission(gain=1.5, in_flight_cost=3 * 1.0, backlog_cost=0.0))
