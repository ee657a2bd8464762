"""The circuit breaker as a sans-io state machine: its table against its docstring, every row
of the table, the window, the growing cooldown, several probes, forced probes, illegal
events, then generated sequences of events checked against invariants and against a small
reference model.

Time is always injected (``now``); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from router_agent.core import breaker as breaker_module
from router_agent.core.breaker import (
    ADMISSIONS,
    TRANSITIONS,
    Admission,
    Breaker,
    BreakerError,
    CircuitState,
    condemns_provider,
    counts_against_deployment,
    earliest,
)
from signals.types import ErrorCode

THRESHOLD = 3
COOLDOWN = 10.0


def fresh(**settings_: object) -> Breaker:
    """A breaker with a constant cooldown and no window, so the basic rows read simply;
    the window and the growing cooldown have tests of their own."""
    return Breaker(**{"threshold": THRESHOLD, "cooldown_s": COOLDOWN, "cooldown_multiplier": 1.0,
                      "failure_ratio": 0.0, **settings_})


def opened_at(t: float, **settings_: object) -> Breaker:
    """A breaker that reached ``open`` by its threshold of consecutive failures at ``t``."""
    b = fresh(**settings_)
    for _ in range(b.threshold):
        assert b.process_attempt(t) == "admitted"
        b.process_failure("admitted", t)
    assert b.state == "open"
    return b


def half_open_at(t: float, **settings_: object) -> Breaker:
    """A breaker whose probe was let through at ``t`` (opened at ``t - COOLDOWN``)."""
    b = opened_at(t - COOLDOWN, **settings_)
    assert b.process_attempt(t) == "probe"
    assert b.state == "half_open"
    return b


def probing_with_straggler(t: float) -> Breaker:
    """Half-open at ``t`` with its probe out, and one request admitted before it opened still
    running (its result is reported with ``"admitted"`` by the caller)."""
    b = fresh()
    assert b.process_attempt(t - COOLDOWN) == "admitted"  # the straggler
    for _ in range(THRESHOLD):
        assert b.process_attempt(t - COOLDOWN) == "admitted"
        b.process_failure("admitted", t - COOLDOWN)
    assert b.process_attempt(t) == "probe"
    return b


def open_with_probe_out(t: float) -> Breaker:
    """Reopened at ``t`` by a straggler's late failure while the probe is still out."""
    b = probing_with_straggler(t - 1.0)
    b.process_failure("admitted", t)
    assert (b.state, b.probe_in_flight, b.opened_at) == ("open", True, t)
    return b


def closed_with_probe_out(t: float) -> Breaker:
    """Closed at ``t`` by a straggler's late success while the probe is still out."""
    b = probing_with_straggler(t)
    b.process_success("admitted", t)
    assert (b.state, b.probe_in_flight, b.failures) == ("closed", True, 0)
    return b


def half_open_slot_free(t: float) -> Breaker:
    """Half-open after its probe was abandoned at ``t``."""
    b = half_open_at(t)
    b.process_abandon("probe")
    assert (b.state, b.probe_in_flight) == ("half_open", False)
    return b


def snapshot(b: Breaker) -> dict:
    return b.model_dump()


# ------------------------------------------------------------------- the table and its docs


def docstring_rows() -> set[tuple[str, str, str]]:
    doc = breaker_module.__doc__ or ""
    rows = set()
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) != 4:
            continue
        if cells[0] == "state" or set(cells[0]) <= {"-"}:
            continue  # header and separator
        rows.add((cells[0], cells[1], cells[2]))
    return rows


def test_docstring_table_is_exactly_the_transitions_table():
    documented = docstring_rows()
    actual = {(state, event, nxt) for (state, event), nxt in TRANSITIONS.items()}
    assert documented, "no transition table found in the module docstring"
    assert documented - actual == set(), "rows in the docstring but not in TRANSITIONS"
    assert actual - documented == set(), "rows in TRANSITIONS but not in the docstring"
    assert len(documented) == len(TRANSITIONS)


def test_table_only_uses_known_states_and_every_attempt_event_has_an_admission():
    states = set(get_args(CircuitState))
    for (state, _event), nxt in TRANSITIONS.items():
        assert state in states and nxt in states
    assert {state for state, _ in TRANSITIONS} == states
    assert set(ADMISSIONS) <= {event for _, event in TRANSITIONS}
    assert set(ADMISSIONS.values()) == set(get_args(Admission))


# One scenario per row: (breaker in the row's state, the call that fires the row's event,
# what the call must return). Adding a row without a scenario fails the next test.
Scenario = tuple[Callable[[], Breaker], Callable[[Breaker], object], object]
ROWS: dict[tuple[str, str], Scenario] = {
    ("closed", "attempt"): (fresh, lambda b: b.process_attempt(0.0), "admitted"),
    ("closed", "success"): (fresh, lambda b: b.process_success("admitted", 0.0), None),
    ("closed", "failure_below_threshold"): (fresh, lambda b: b.process_failure("admitted", 1.0), None),
    ("closed", "failure_at_threshold"): (
        lambda: fresh(threshold=1), lambda b: b.process_failure("admitted", 1.0), None),
    ("closed", "failure_over_ratio"): (
        lambda: fresh(threshold=100, failure_ratio=0.5, min_requests=1),
        lambda b: b.process_failure("admitted", 1.0), None),
    ("closed", "abandoned"): (fresh, lambda b: b.process_abandon("admitted"), None),
    ("closed", "probe_abandoned"): (
        lambda: closed_with_probe_out(50.0), lambda b: b.process_abandon("probe"), None),
    ("open", "attempt_in_cooldown"): (lambda: opened_at(0.0), lambda b: b.process_attempt(1.0), "refused"),
    ("open", "attempt_while_probing"): (
        lambda: open_with_probe_out(50.0), lambda b: b.process_attempt(50.0 + COOLDOWN), "refused"),
    ("open", "cooldown_over"): (lambda: opened_at(0.0), lambda b: b.process_attempt(COOLDOWN), "probe"),
    ("open", "forced_probe"): (lambda: opened_at(0.0), lambda b: b.process_forced_probe(1.0), "probe"),
    ("open", "success_below_threshold"): (
        lambda: opened_at(0.0, success_threshold=2), lambda b: b.process_success("admitted", 1.0), None),
    ("open", "success_at_threshold"): (
        lambda: opened_at(0.0), lambda b: b.process_success("admitted", 1.0), None),
    ("open", "failure"): (lambda: opened_at(0.0), lambda b: b.process_failure("admitted", 2.0), None),
    ("open", "abandoned"): (lambda: opened_at(0.0), lambda b: b.process_abandon("admitted"), None),
    ("open", "probe_abandoned"): (
        lambda: open_with_probe_out(50.0), lambda b: b.process_abandon("probe"), None),
    ("half_open", "attempt_while_probing"): (
        lambda: half_open_at(50.0), lambda b: b.process_attempt(51.0), "refused"),
    ("half_open", "probe_slot_free"): (
        lambda: half_open_slot_free(50.0), lambda b: b.process_attempt(51.0), "probe"),
    ("half_open", "success_below_threshold"): (
        lambda: half_open_at(50.0, success_threshold=2), lambda b: b.process_success("probe", 51.0), None),
    ("half_open", "success_at_threshold"): (
        lambda: half_open_at(50.0), lambda b: b.process_success("probe", 51.0), None),
    ("half_open", "failure"): (lambda: half_open_at(50.0), lambda b: b.process_failure("probe", 51.0), None),
    ("half_open", "abandoned"): (
        lambda: probing_with_straggler(50.0), lambda b: b.process_abandon("admitted"), None),
    ("half_open", "probe_abandoned"): (
        lambda: half_open_at(50.0), lambda b: b.process_abandon("probe"), None),
}


def test_every_row_has_a_scenario():
    assert set(ROWS) == set(TRANSITIONS)


@pytest.mark.parametrize("row", list(ROWS), ids=[f"{s}-{e}" for s, e in ROWS])
def test_each_row_moves_to_its_next_state(row):
    make, fire, expected = ROWS[row]
    b = make()
    assert b.state == row[0]

    assert fire(b) == expected

    assert b.state == TRANSITIONS[row]


# --------------------------------------------------------------------------- the rows in detail


def test_closed_success_stays_closed_and_resets_failures():
    b = fresh()
    b.process_failure("admitted", 1.0)
    b.process_failure("admitted", 2.0)
    assert b.failures == 2

    b.process_success("admitted", 2.5)

    assert (b.state, b.failures) == ("closed", 0)
    # The reset is real: it again takes a full THRESHOLD failures to open.
    for i in range(THRESHOLD - 1):
        b.process_failure("admitted", 3.0 + i)
    assert b.state == "closed"


def test_closed_failure_below_threshold_stays_closed_and_lets_traffic_through():
    b = fresh()
    for i in range(THRESHOLD - 1):
        b.process_failure("admitted", float(i))
        assert (b.state, b.failures) == ("closed", i + 1)
        assert b.allows(float(i))
        assert b.process_attempt(float(i)) == "admitted"


def test_closed_failure_reaching_threshold_opens_at_that_time_with_a_deadline():
    b = fresh()
    for _ in range(THRESHOLD - 1):
        b.process_failure("admitted", 5.0)
    assert b.state == "closed"

    b.process_failure("admitted", 7.5)

    assert (b.state, b.opened_at, b.open_until, b.changed_at) == ("open", 7.5, 7.5 + COOLDOWN, 7.5)
    assert not b.allows(7.5)
    assert b.process_attempt(7.5) == "refused"


def test_open_refuses_until_the_cooldown_is_over():
    b = opened_at(100.0)
    for now in (100.0, 100.0 + COOLDOWN / 2, 100.0 + COOLDOWN - 1e-6):
        assert not b.allows(now)
        assert b.process_attempt(now) == "refused"
        assert b.state == "open"
        assert not b.probe_in_flight
    assert b.opened_at == 100.0


def test_open_lets_one_probe_through_once_the_cooldown_is_over():
    b = opened_at(100.0)
    now = 100.0 + COOLDOWN  # the boundary itself counts as "over"

    assert b.allows(now)
    assert b.process_attempt(now) == "probe"

    assert (b.state, b.probes_in_flight, b.changed_at) == ("half_open", 1, now)


def test_half_open_refuses_while_the_probe_is_in_flight():
    b = half_open_at(50.0)
    for now in (50.0, 50.0 + COOLDOWN, 50.0 + 100 * COOLDOWN):
        assert not b.allows(now)
        assert b.process_attempt(now) == "refused"
        assert (b.state, b.probes_in_flight) == ("half_open", 1)


def test_half_open_probe_success_closes():
    b = half_open_at(50.0)

    b.process_success("probe", 51.0)

    assert (b.state, b.failures, b.probe_in_flight, b.changed_at) == ("closed", 0, False, 51.0)
    assert b.process_attempt(51.0) == "admitted"
    assert b.process_attempt(51.0) == "admitted"  # closed: no probe limit any more


def test_half_open_probe_failure_reopens_for_another_cooldown():
    b = half_open_at(50.0)

    b.process_failure("probe", 53.0)

    assert (b.state, b.opened_at, b.probe_in_flight) == ("open", 53.0, False)
    assert not b.allows(53.0 + COOLDOWN - 1e-6)
    assert b.process_attempt(53.0 + COOLDOWN - 1e-6) == "refused"
    assert b.process_attempt(53.0 + COOLDOWN) == "probe"
    assert b.state == "half_open"


def test_late_failure_while_open_restarts_the_cooldown():
    b = opened_at(0.0)
    b.process_failure("admitted", 4.0)  # admitted before it opened, fails late
    assert (b.state, b.opened_at, b.open_until, b.failures) == ("open", 4.0, 4.0 + COOLDOWN, THRESHOLD + 1)
    assert b.process_attempt(COOLDOWN) == "refused"
    assert b.process_attempt(4.0 + COOLDOWN) == "probe"


def test_late_success_while_open_closes():
    b = opened_at(0.0)
    b.process_success("admitted", 1.0)
    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 0, False)
    assert b.process_attempt(1.0) == "admitted"


# --------------------------------------------------------------------------- the window


def test_the_failure_ratio_opens_only_once_the_window_holds_min_requests():
    b = fresh(threshold=100, failure_ratio=0.5, window_s=10.0, min_requests=4)
    for _ in range(3):
        b.process_failure("admitted", 1.0)  # 100% failed, but only 3 results
    assert (b.state, b.window_counts(1.0)) == ("closed", (0, 3))
    b.process_failure("admitted", 1.0)
    assert (b.state, b.failures) == ("open", 4)
    assert b.window_counts(1.0) == (0, 0)  # opening empties the window


def test_the_failure_ratio_counts_successes_and_opens_at_the_ratio():
    b = fresh(threshold=100, failure_ratio=0.5, window_s=10.0, min_requests=4)
    for _ in range(3):
        b.process_success("admitted", 2.0)
    b.process_failure("admitted", 2.0)
    b.process_failure("admitted", 2.0)
    assert (b.state, b.window_counts(2.0)) == ("closed", (3, 2))  # 40%
    b.process_failure("admitted", 2.0)  # 3 of 6: the ratio is reached
    assert b.state == "open"


def test_the_ratio_opens_even_when_successes_break_the_consecutive_run():
    b = fresh(threshold=3, failure_ratio=0.5, min_requests=4)
    for outcome in ("failure", "failure", "success", "failure"):
        getattr(b, f"process_{outcome}")("admitted", 1.0)
    assert (b.state, b.failures) == ("open", 1)


def test_old_results_slide_out_of_the_window():
    b = fresh(threshold=100, failure_ratio=0.5, window_s=10.0, min_requests=4)
    for _ in range(3):
        b.process_failure("admitted", 0.0)
    assert b.window_counts(9.9) == (0, 3)
    assert b.window_counts(10.5) == (0, 0)  # read-only: nothing written yet
    b.process_failure("admitted", 10.5)
    assert (b.state, b.window_counts(10.5)) == ("closed", (0, 1))
    b.process_success("admitted", 25.0)
    assert b.window_counts(25.0) == (1, 0)


def test_a_zero_ratio_disables_the_window():
    b = fresh(threshold=100, failure_ratio=0.0, min_requests=1)
    for _ in range(50):
        b.process_failure("admitted", 1.0)
    assert (b.state, b.window_counts(1.0)) == ("closed", (0, 0))


def test_results_while_not_closed_stay_out_of_the_window():
    b = opened_at(0.0, failure_ratio=0.5, min_requests=10)
    b.process_failure("admitted", 1.0)
    assert b.window_counts(1.0) == (0, 0)
    b.process_success("admitted", 2.0)  # closes
    assert (b.state, b.window_counts(2.0)) == ("closed", (0, 0))
    b.process_failure("admitted", 2.0)
    assert b.window_counts(2.0) == (0, 1)


# --------------------------------------------------------------------------- the cooldown grows


def test_each_failed_recovery_grows_the_cooldown_up_to_the_cap_and_a_close_resets_it():
    b = opened_at(0.0, threshold=1, cooldown_s=10.0, cooldown_multiplier=2.0, max_cooldown_s=35.0)
    deadlines = [b.open_until]
    now = 0.0
    for _ in range(4):
        now = b.open_until
        assert b.process_attempt(now - 1e-6) == "refused"
        assert b.process_attempt(now) == "probe"
        b.process_failure("probe", now)
        deadlines.append(b.open_until)
    assert [round(d - s, 6) for d, s in zip(deadlines, [0.0, 10.0, 30.0, 65.0, 100.0])] == [10, 20, 35, 35, 35]

    assert b.process_attempt(b.open_until) == "probe"
    b.process_success("probe", b.open_until)
    assert (b.state, b.recovery_rounds, b.current_cooldown_s()) == ("closed", 0, 10.0)
    b.process_failure("admitted", 200.0)
    assert b.open_until == 210.0


def test_several_probes_failing_in_one_round_grow_the_cooldown_once():
    b = opened_at(0.0, threshold=1, half_open_probes=3, cooldown_multiplier=2.0)
    assert [b.process_attempt(COOLDOWN) for _ in range(3)] == ["probe"] * 3
    for t in (11.0, 12.0, 13.0):
        b.process_failure("probe", t)
    assert (b.recovery_rounds, b.open_until) == (1, 13.0 + 2 * COOLDOWN)


def test_a_reopen_always_sets_a_fresh_deadline():
    b = opened_at(0.0, cooldown_multiplier=2.0)
    assert b.process_attempt(COOLDOWN) == "probe"
    b.process_failure("probe", 12.0)  # the round failed: 20 s from now
    assert b.open_until == 32.0
    b.process_failure("admitted", 15.0)  # a straggler fails later: fresh, never the older one
    assert (b.open_until, b.opened_at) == (35.0, 15.0)
    assert not b.allows(34.9)


# --------------------------------------------------------------------------- probes and successes


def test_half_open_admits_at_most_half_open_probes_at_once():
    b = opened_at(0.0, half_open_probes=3, success_threshold=3)
    assert [b.process_attempt(COOLDOWN) for _ in range(5)] == ["probe"] * 3 + ["refused"] * 2
    assert not b.allows(COOLDOWN) and b.retry_at(COOLDOWN) == math.inf
    b.process_success("probe", 11.0)
    assert (b.state, b.successes) == ("half_open", 1)
    assert b.process_attempt(11.0) == "probe"  # the freed slot, and only that one
    assert b.process_attempt(11.0) == "refused"


def test_success_threshold_probes_in_a_row_close_it_and_a_failure_starts_over():
    b = half_open_at(50.0, success_threshold=2)
    b.process_success("probe", 51.0)
    assert (b.state, b.successes) == ("half_open", 1)
    assert b.process_attempt(51.0) == "probe"
    b.process_failure("probe", 52.0)
    assert (b.state, b.successes) == ("open", 0)
    assert b.process_attempt(52.0 + COOLDOWN) == "probe"
    b.process_success("probe", 63.0)
    assert b.process_attempt(63.0) == "probe"
    b.process_success("probe", 64.0)
    assert (b.state, b.successes, b.failures) == ("closed", 0, 0)


# --------------------------------------------------------------------------- forced probes, earliest


def test_a_forced_probe_goes_before_the_cooldown_and_takes_the_probe_slot():
    b = opened_at(0.0)
    assert b.process_attempt(1.0) == "refused"
    assert b.retry_at(1.0) == COOLDOWN

    assert b.process_forced_probe(1.0) == "probe"

    assert (b.state, b.probes_in_flight) == ("half_open", 1)
    assert b.process_forced_probe(1.0) == "refused"  # the slot is taken: never two
    assert b.process_attempt(1.0) == "refused"
    b.process_success("probe", 2.0)
    assert b.state == "closed"


@pytest.mark.parametrize(
    "make, now, expected",
    [(fresh, 0.0, "admitted"), (lambda: half_open_slot_free(50.0), 51.0, "probe"),
     (lambda: half_open_at(50.0), 51.0, "refused"), (lambda: open_with_probe_out(50.0), 51.0, "refused")],
    ids=["closed", "half-open-slot-free", "half-open-probing", "open-probe-out"],
)
def test_a_forced_probe_elsewhere_is_an_ordinary_attempt(make, now, expected):
    b = make()
    assert b.process_forced_probe(now) == expected


def test_earliest_names_the_breaker_that_will_admit_soonest():
    late, soon, probing = opened_at(20.0), opened_at(10.0), half_open_at(50.0)
    assert earliest([("late", late), ("soon", soon), ("probing", probing)], 15.0) == "soon"
    assert earliest([(("p", "m"), late)], 15.0) == ("p", "m")  # tuple keys pass through
    assert earliest([("probing", probing)], 15.0) is None  # every slot taken: nothing to try
    assert earliest([], 15.0) is None
    assert earliest([("a", opened_at(0.0)), ("b", opened_at(0.0))], 1.0) == "a"  # ties: the first
    assert earliest([("late", late), ("closed", fresh())], 15.0) == "closed"


# --------------------------------------------------------------------------- error codes


def test_which_error_codes_count_against_a_deployment_and_a_provider():
    counted = {"server_error", "overloaded", "timeout", "connection_error", "auth_error", "not_found",
               "provider_error"}
    for code in get_args(ErrorCode):
        assert counts_against_deployment(code) == (code in counted), code
        assert condemns_provider(code) == (code in {"connection_error", "auth_error"}), code
    for code in ("rate_limited", "bad_request", "context_length_exceeded", "content_filtered", "invalid_request"):
        assert not counts_against_deployment(code)


# --------------------------------------------------------------------------- construction


def test_a_breaker_given_only_opened_at_and_a_probe_flag_still_reads_right():
    b = Breaker(state="open", opened_at=100.0, cooldown_s=30.0, probe_in_flight=True)
    assert (b.open_until, b.probes_in_flight) == (130.0, 1)
    assert Breaker(state="half_open", probe_in_flight=False).probes_in_flight == 0


def test_a_cap_below_the_cooldown_is_refused():
    with pytest.raises(ValueError, match="max_cooldown_s"):
        Breaker(cooldown_s=60.0, max_cooldown_s=30.0)


def test_breaker_round_trips_through_json():
    b = probing_with_straggler(50.0)
    b.process_success("admitted", 50.0)
    b.process_failure("admitted", 50.0)
    again = Breaker.model_validate_json(b.model_dump_json())
    assert again == b


# --------------------------------------------------------------------------- abandon


def test_abandoned_probe_frees_the_slot_without_counting_a_failure():
    b = half_open_at(50.0)
    before = snapshot(b)

    b.process_abandon("probe")

    assert (b.state, b.probe_in_flight, b.failures, b.opened_at) == (
        "half_open", False, before["failures"], before["opened_at"])
    # The cooldown has passed already: the very next attempt is the new probe, and only one.
    assert b.allows(50.0)
    assert b.process_attempt(50.0) == "probe"
    assert b.process_attempt(50.0) == "refused"
    b.process_success("probe", 50.0)
    assert b.state == "closed"


def test_abandoned_probe_in_a_reopened_breaker_frees_the_slot_and_keeps_the_deadline():
    b = open_with_probe_out(60.0)

    b.process_abandon("probe")

    assert (b.state, b.opened_at, b.open_until, b.probe_in_flight) == ("open", 60.0, 60.0 + COOLDOWN, False)
    assert b.process_attempt(60.0 + COOLDOWN - 1e-6) == "refused"
    assert b.process_attempt(60.0 + COOLDOWN) == "probe"


@pytest.mark.parametrize(
    "make",
    [fresh, lambda: opened_at(0.0), lambda: half_open_at(50.0), lambda: probing_with_straggler(50.0)],
    ids=["closed", "open", "half-open", "half-open-with-straggler"],
)
def test_abandoned_admitted_attempt_is_a_no_op(make):
    b = make()
    if b.state == "closed":
        b.process_failure("admitted", 0.0)  # something to (not) reset
    before = snapshot(b)

    b.process_abandon("admitted")

    assert snapshot(b) == before


# --------------------------------------------------------------------------- illegal events

REPORTS = [
    lambda b, a: b.process_success(a, 60.0),
    lambda b, a: b.process_failure(a, 60.0),
    lambda b, a: b.process_abandon(a),
]


@pytest.mark.parametrize("make", [fresh, lambda: opened_at(0.0), lambda: half_open_at(50.0)],
                         ids=["closed", "open", "half-open"])
@pytest.mark.parametrize("report", REPORTS, ids=["success", "failure", "abandon"])
def test_reporting_a_refused_attempt_raises_and_changes_nothing(make, report):
    b = make()
    before = snapshot(b)
    with pytest.raises(BreakerError, match="refused"):
        report(b, "refused")
    with pytest.raises(BreakerError, match="unknown admission"):
        report(b, "granted")
    assert snapshot(b) == before


@pytest.mark.parametrize("make", [fresh, lambda: opened_at(0.0), lambda: half_open_slot_free(50.0)],
                         ids=["closed", "open", "half-open-slot-free"])
@pytest.mark.parametrize("report", REPORTS, ids=["success", "failure", "abandon"])
def test_reporting_a_probe_when_none_is_in_flight_raises_and_changes_nothing(make, report):
    b = make()
    assert not b.probe_in_flight
    before = snapshot(b)
    with pytest.raises(BreakerError, match="no probe is in flight"):
        report(b, "probe")
    assert snapshot(b) == before


def test_a_probe_reports_only_once():
    b = half_open_at(50.0)
    b.process_failure("probe", 51.0)
    with pytest.raises(BreakerError):
        b.process_success("probe", 52.0)


def test_a_pair_missing_from_the_table_raises(monkeypatch):
    """The methods look the next state up in TRANSITIONS: remove a row and the event raises,
    before anything is changed."""
    b = fresh(failure_ratio=0.5, min_requests=10)
    monkeypatch.delitem(TRANSITIONS, ("closed", "failure_below_threshold"))
    before = snapshot(b)
    with pytest.raises(BreakerError, match="'failure_below_threshold'.*'closed'"):
        b.process_failure("admitted", 1.0)
    assert snapshot(b) == before  # the window did not count it either
    monkeypatch.delitem(TRANSITIONS, ("closed", "success"))
    with pytest.raises(BreakerError):
        b.process_success("admitted", 1.0)
    assert snapshot(b) == before
    monkeypatch.delitem(TRANSITIONS, ("closed", "attempt"))
    for call in (b.allows, b.process_attempt, b.process_forced_probe):
        with pytest.raises(BreakerError):
            call(0.0)


def test_the_table_decides_the_next_state(monkeypatch):
    """Not an if/else copy of the table: change a row and the behaviour follows it."""
    b = half_open_at(50.0)
    monkeypatch.setitem(TRANSITIONS, ("half_open", "probe_abandoned"), "open")
    b.process_abandon("probe")
    assert b.state == "open"


# ------------------------------------------------------------------ allows() is a pure read


@pytest.mark.parametrize(
    "make, now",
    [
        (fresh, 0.0),
        (lambda: opened_at(0.0), 1.0),  # open, cooling down
        (lambda: opened_at(0.0), COOLDOWN),  # open, cooldown over: would let a probe through
        (lambda: half_open_at(20.0), 25.0),  # half-open, probe in flight
        (lambda: half_open_slot_free(20.0), 25.0),  # half-open, probe abandoned
        (lambda: open_with_probe_out(20.0), 20.0 + COOLDOWN),  # reopened, probe still out
        (lambda: closed_with_probe_out(20.0), 25.0),  # closed, probe still out
    ],
    ids=["closed", "open-cooling", "open-cooled", "half-open", "half-open-slot-free", "open-probe-out",
         "closed-probe-out"],
)
def test_allows_and_retry_at_never_mutate_and_predict_process_attempt(make, now):
    b = make()
    before = snapshot(b)

    answers = {b.allows(now) for _ in range(3)}
    retry_at = b.retry_at(now)

    assert snapshot(b) == before
    assert len(answers) == 1
    allowed = answers.pop()
    assert allowed == (retry_at == now)
    assert allowed == (b.process_attempt(now) != "refused")


# --------------------------------------------------------------------------- stragglers


def test_late_failure_of_a_pre_open_request_does_not_allow_a_second_concurrent_probe():
    b = fresh(threshold=2)
    # t=0: three requests go through while closed; C is slow.
    assert [b.process_attempt(0.0) for _ in range(3)] == ["admitted"] * 3  # A, B, C
    b.process_failure("admitted", 1.0)  # A fails
    b.process_failure("admitted", 1.0)  # B fails -> open at 1
    assert b.state == "open"
    assert b.process_attempt(11.0) == "probe"  # probe P1 let through, still running
    b.process_failure("admitted", 12.0)  # C (admitted at t=0) finally fails
    # P1 has not completed, so no other probe may be in flight at the same time.
    assert b.process_attempt(22.0) == "refused"
    b.process_failure("probe", 23.0)  # P1 fails: the next probe may go after the cooldown
    assert b.process_attempt(32.0) == "refused"
    assert b.process_attempt(33.0) == "probe"


def test_late_success_while_probing_closes_and_the_probe_still_reports():
    b = probing_with_straggler(50.0)

    b.process_success("admitted", 50.5)  # the straggler succeeds: the deployment works

    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 0, True)
    assert b.process_attempt(51.0) == "admitted"  # closed: traffic flows meanwhile

    b.process_success("probe", 51.0)  # accepted, no error

    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 0, False)


def test_probe_failure_after_a_late_success_counts_like_any_closed_failure():
    b = probing_with_straggler(50.0)
    b.process_success("admitted", 50.5)

    b.process_failure("probe", 52.0)

    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 1, False)


def test_probe_out_while_closed_blocks_a_second_probe_if_it_reopens():
    b = probing_with_straggler(50.0)
    b.process_success("admitted", 50.5)  # closed, probe still out
    for _ in range(THRESHOLD):
        assert b.process_attempt(51.0) == "admitted"
        b.process_failure("admitted", 51.0)
    assert b.state == "open"
    assert b.process_attempt(51.0 + COOLDOWN) == "refused"  # the old probe has not reported
    assert b.process_forced_probe(51.0 + COOLDOWN) == "refused"
    b.process_abandon("probe")
    assert b.process_attempt(51.0 + COOLDOWN) == "probe"


# --------------------------------------------------------------------------- generated sequences

OPS = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 20.0])),
    st.tuples(st.sampled_from(["attempt", "forced"]), st.just(0)),
    st.tuples(st.sampled_from(["success", "failure", "abandon"]), st.integers(0, 50)),
)


@settings(max_examples=200, deadline=None)
@given(probes=st.integers(1, 3), successes=st.integers(1, 3), ratio=st.sampled_from([0.0, 0.5]),
       cooldown=st.integers(1, 20), ops=st.lists(OPS, max_size=60))
def test_a_half_open_breaker_never_admits_more_probes_than_configured(probes, successes, ratio, cooldown, ops):
    """Random attempts, forced probes, results (only for admissions actually held) and clock
    steps: never more than ``half_open_probes`` probes outstanding, ``allows`` and
    ``retry_at`` predict the admission, and every reopen sets a fresh deadline."""
    b = Breaker(threshold=2, failure_ratio=ratio, min_requests=3, window_s=5.0, half_open_probes=probes,
                success_threshold=successes, cooldown_s=float(cooldown), max_cooldown_s=4.0 * cooldown)
    held: list[Admission] = []
    now = 0.0
    for op, arg in ops:
        if op == "tick":
            now += arg
        elif op in ("attempt", "forced"):
            predicted = b.allows(now) if op == "attempt" else b.retry_at(now) < math.inf
            admission = b.process_attempt(now) if op == "attempt" else b.process_forced_probe(now)
            assert predicted == (admission != "refused")
            if admission != "refused":
                held.append(admission)
        elif held:
            admission = held.pop(arg % len(held))
            if op == "success":
                b.process_success(admission, now)
            elif op == "failure":
                deadline = b.open_until
                b.process_failure(admission, now)
                if b.state == "open":
                    assert b.open_until == now + b.current_cooldown_s() >= deadline
            else:
                b.process_abandon(admission)
        assert held.count("probe") == b.probes_in_flight <= probes
        assert b.current_cooldown_s() <= 4.0 * cooldown
        for t in (now, now + cooldown):
            before = snapshot(b)
            allowed = b.allows(t)
            assert allowed == (b.retry_at(t) == t)
            assert allowed == (b.model_copy(deep=True).process_attempt(t) != "refused")
            assert snapshot(b) == before


@dataclass
class Model:
    """The breaker as the rules describe it (no window), written independently of the table."""

    threshold: int
    cooldown: float
    probes_allowed: int
    successes_needed: int
    multiplier: float
    cap: float
    state: str = "closed"
    failures: int = 0
    successes: int = 0
    rounds: int = 0
    until: float = 0.0
    probes: int = 0

    def would_admit(self, now: float, forced: bool = False) -> str:
        if self.state == "closed":
            return "admitted"
        if self.probes >= self.probes_allowed:
            return "refused"
        return "refused" if self.state == "open" and now < self.until and not forced else "probe"

    def attempt(self, now: float, forced: bool = False) -> str:
        admission = self.would_admit(now, forced)
        if admission == "probe":
            if self.state == "open" and self.cooldown * self.multiplier ** self.rounds < self.cap:
                self.rounds += 1
            self.state, self.probes = "half_open", self.probes + 1
        return admission

    def success(self, admission: str) -> None:
        if self.state == "closed":
            self.failures = 0
        else:
            self.successes += 1
            if self.successes >= self.successes_needed:
                self.state, self.failures, self.successes, self.rounds = "closed", 0, 0, 0
        self.probes -= admission == "probe"

    def failure(self, admission: str, now: float) -> None:
        self.failures += 1
        if self.state != "closed" or self.failures >= self.threshold:
            self.state, self.successes = "open", 0
            self.until = now + min(self.cooldown * self.multiplier ** self.rounds, self.cap)
        self.probes -= admission == "probe"

    def abandon(self, admission: str) -> None:
        self.probes -= admission == "probe"


class BreakerMachine(RuleBasedStateMachine):
    """Any mix of attempts, forced probes, successes, failures and abandons (including late
    ones), clock steps and caller bugs, compared step by step with the reference model."""

    @initialize(threshold=st.integers(1, 4), cooldown=st.integers(1, 20), probes=st.integers(1, 3),
                successes=st.integers(1, 2), multiplier=st.sampled_from([1.0, 2.0]))
    def setup(self, threshold: int, cooldown: int, probes: int, successes: int, multiplier: float) -> None:
        cap = 3.0 * cooldown
        self.breaker = Breaker(threshold=threshold, cooldown_s=float(cooldown), failure_ratio=0.0,
                               half_open_probes=probes, success_threshold=successes,
                               cooldown_multiplier=multiplier, max_cooldown_s=cap)
        self.model = Model(threshold, float(cooldown), probes, successes, multiplier, cap)
        self.now = 0.0
        self.held: list[str] = []

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(forced=st.booleans())
    def attempt(self, forced: bool) -> None:
        expected = self.model.attempt(self.now, forced)
        got = (self.breaker.process_forced_probe if forced else self.breaker.process_attempt)(self.now)
        assert got == expected
        if got != "refused":
            self.held.append(got)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 50), outcome=st.sampled_from(["success", "failure", "abandon"]))
    def report(self, pick: int, outcome: str) -> None:
        admission = self.held.pop(pick % len(self.held))
        if outcome == "success":
            self.model.success(admission)
            self.breaker.process_success(admission, self.now)
        elif outcome == "failure":
            self.model.failure(admission, self.now)
            self.breaker.process_failure(admission, self.now)
        else:
            before = {k: v for k, v in snapshot(self.breaker).items() if k != "probes_in_flight"}
            self.model.abandon(admission)
            self.breaker.process_abandon(admission)
            after = {k: v for k, v in snapshot(self.breaker).items() if k != "probes_in_flight"}
            assert after == before  # an abandon counts nothing and never moves the state

    @rule(outcome=st.sampled_from(["success", "failure", "abandon"]))
    def report_refused(self, outcome: str) -> None:
        before = snapshot(self.breaker)
        with pytest.raises(BreakerError):
            self._report(outcome, "refused")
        assert snapshot(self.breaker) == before

    @precondition(lambda self: "probe" not in self.held)
    @rule(outcome=st.sampled_from(["success", "failure", "abandon"]))
    def report_phantom_probe(self, outcome: str) -> None:
        before = snapshot(self.breaker)
        with pytest.raises(BreakerError):
            self._report(outcome, "probe")
        assert snapshot(self.breaker) == before

    def _report(self, outcome: str, admission: Admission) -> None:
        if outcome == "success":
            self.breaker.process_success(admission, self.now)
        elif outcome == "failure":
            self.breaker.process_failure(admission, self.now)
        else:
            self.breaker.process_abandon(admission)

    @invariant()
    def matches_reference_model(self) -> None:
        if not hasattr(self, "model"):
            return
        b, m = self.breaker, self.model
        assert (b.state, b.failures, b.successes, b.recovery_rounds) == (m.state, m.failures, m.successes, m.rounds)
        if m.state != "closed":
            assert b.open_until == m.until

    @invariant()
    def allows_is_read_only_and_agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        before = snapshot(self.breaker)
        for t in (self.now, self.now + self.model.cooldown):
            for forced in (False, True):
                expected = self.model.would_admit(t, forced)
                copy = self.breaker.model_copy(deep=True)
                assert (copy.process_forced_probe if forced else copy.process_attempt)(t) == expected
            assert self.breaker.allows(t) == (self.model.would_admit(t) != "refused")
        assert snapshot(self.breaker) == before

    @invariant()
    def probes_outstanding_never_exceed_the_limit(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.held.count("probe") == self.breaker.probes_in_flight == self.model.probes
        assert self.model.probes <= self.model.probes_allowed


BreakerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_follows_the_reference_model = BreakerMachine.TestCase
