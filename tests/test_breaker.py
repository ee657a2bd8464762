"""The circuit breaker as a sans-io state machine: its table against its docstring, every row
of the table, illegal events, then generated sequences of events checked against invariants
and against a small reference model.

Time is always injected (``now``); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

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
)

THRESHOLD = 3
COOLDOWN = 10.0


def fresh() -> Breaker:
    return Breaker(threshold=THRESHOLD, cooldown_s=COOLDOWN)


def opened_at(t: float) -> Breaker:
    """A breaker that reached ``open`` by THRESHOLD consecutive failures at time ``t``."""
    b = fresh()
    for _ in range(THRESHOLD):
        assert b.process_attempt(t) == "admitted"
        b.process_failure("admitted", t)
    assert b.state == "open"
    return b


def half_open_at(t: float) -> Breaker:
    """A breaker whose probe was let through at ``t`` (opened at ``t - COOLDOWN``)."""
    b = opened_at(t - COOLDOWN)
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
    b.process_success("admitted")
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
    attempt_events = set(ADMISSIONS)
    assert attempt_events <= {event for _, event in TRANSITIONS}
    assert set(ADMISSIONS.values()) == set(get_args(Admission))


# One scenario per row: (breaker in the row's state, the call that fires the row's event,
# what the call must return). Adding a row without a scenario fails the next test.
Scenario = tuple[Callable[[], Breaker], Callable[[Breaker], object], object]
ROWS: dict[tuple[str, str], Scenario] = {
    ("closed", "attempt"): (fresh, lambda b: b.process_attempt(0.0), "admitted"),
    ("closed", "success"): (fresh, lambda b: b.process_success("admitted"), None),
    ("closed", "failure_below_threshold"): (
        fresh,
        lambda b: b.process_failure("admitted", 1.0),
        None,
    ),
    ("closed", "failure_at_threshold"): (
        lambda: Breaker(threshold=1, cooldown_s=COOLDOWN),
        lambda b: b.process_failure("admitted", 1.0),
        None,
    ),
    ("closed", "abandoned"): (fresh, lambda b: b.process_abandon("admitted"), None),
    ("closed", "probe_abandoned"): (
        lambda: closed_with_probe_out(50.0),
        lambda b: b.process_abandon("probe"),
        None,
    ),
    ("open", "attempt_in_cooldown"): (
        lambda: opened_at(0.0),
        lambda b: b.process_attempt(1.0),
        "refused",
    ),
    ("open", "attempt_while_probing"): (
        lambda: open_with_probe_out(50.0),
        lambda b: b.process_attempt(50.0 + COOLDOWN),
        "refused",
    ),
    ("open", "cooldown_over"): (
        lambda: opened_at(0.0),
        lambda b: b.process_attempt(COOLDOWN),
        "probe",
    ),
    ("open", "success"): (lambda: opened_at(0.0), lambda b: b.process_success("admitted"), None),
    ("open", "failure"): (
        lambda: opened_at(0.0),
        lambda b: b.process_failure("admitted", 2.0),
        None,
    ),
    ("open", "abandoned"): (lambda: opened_at(0.0), lambda b: b.process_abandon("admitted"), None),
    ("open", "probe_abandoned"): (
        lambda: open_with_probe_out(50.0),
        lambda b: b.process_abandon("probe"),
        None,
    ),
    ("half_open", "attempt_while_probing"): (
        lambda: half_open_at(50.0),
        lambda b: b.process_attempt(51.0),
        "refused",
    ),
    ("half_open", "probe_slot_free"): (
        lambda: half_open_slot_free(50.0),
        lambda b: b.process_attempt(51.0),
        "probe",
    ),
    ("half_open", "success"): (
        lambda: half_open_at(50.0),
        lambda b: b.process_success("probe"),
        None,
    ),
    ("half_open", "failure"): (
        lambda: half_open_at(50.0),
        lambda b: b.process_failure("probe", 51.0),
        None,
    ),
    ("half_open", "abandoned"): (
        lambda: probing_with_straggler(50.0),
        lambda b: b.process_abandon("admitted"),
        None,
    ),
    ("half_open", "probe_abandoned"): (
        lambda: half_open_at(50.0),
        lambda b: b.process_abandon("probe"),
        None,
    ),
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

    b.process_success("admitted")

    assert b.state == "closed"
    assert b.failures == 0
    # The reset is real: it again takes a full THRESHOLD failures to open.
    for i in range(THRESHOLD - 1):
        b.process_failure("admitted", 3.0 + i)
    assert b.state == "closed"


def test_closed_failure_below_threshold_stays_closed_and_lets_traffic_through():
    b = fresh()
    for i in range(THRESHOLD - 1):
        b.process_failure("admitted", float(i))
        assert b.state == "closed"
        assert b.failures == i + 1
        assert b.allows(float(i))
        assert b.process_attempt(float(i)) == "admitted"


def test_closed_failure_reaching_threshold_opens_at_that_time():
    b = fresh()
    for _ in range(THRESHOLD - 1):
        b.process_failure("admitted", 5.0)
    assert b.state == "closed"

    b.process_failure("admitted", 7.5)

    assert b.state == "open"
    assert b.opened_at == 7.5
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

    assert b.state == "half_open"
    assert b.probe_in_flight


def test_half_open_refuses_while_the_probe_is_in_flight():
    b = half_open_at(50.0)
    for now in (50.0, 50.0 + COOLDOWN, 50.0 + 100 * COOLDOWN):
        assert not b.allows(now)
        assert b.process_attempt(now) == "refused"
        assert b.state == "half_open"
        assert b.probe_in_flight


def test_half_open_probe_success_closes():
    b = half_open_at(50.0)

    b.process_success("probe")

    assert b.state == "closed"
    assert b.failures == 0
    assert not b.probe_in_flight
    assert b.process_attempt(50.0) == "admitted"
    assert b.process_attempt(50.0) == "admitted"  # closed: no single-probe limit any more


def test_half_open_probe_failure_reopens_for_another_cooldown():
    b = half_open_at(50.0)

    b.process_failure("probe", 53.0)

    assert b.state == "open"
    assert b.opened_at == 53.0
    assert not b.probe_in_flight
    assert not b.allows(53.0 + COOLDOWN - 1e-6)
    assert b.process_attempt(53.0 + COOLDOWN - 1e-6) == "refused"
    assert b.process_attempt(53.0 + COOLDOWN) == "probe"
    assert b.state == "half_open"


def test_late_failure_while_open_restarts_the_cooldown():
    b = opened_at(0.0)
    b.process_failure("admitted", 4.0)  # admitted before it opened, fails late
    assert (b.state, b.opened_at, b.failures) == ("open", 4.0, THRESHOLD + 1)
    assert b.process_attempt(COOLDOWN) == "refused"
    assert b.process_attempt(4.0 + COOLDOWN) == "probe"


def test_late_success_while_open_closes():
    b = opened_at(0.0)
    b.process_success("admitted")
    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 0, False)
    assert b.process_attempt(1.0) == "admitted"


# --------------------------------------------------------------------------- abandon


def test_abandoned_probe_frees_the_slot_without_counting_a_failure():
    b = half_open_at(50.0)
    before = snapshot(b)

    b.process_abandon("probe")

    assert b.state == "half_open"
    assert not b.probe_in_flight
    assert b.failures == before["failures"]
    assert b.opened_at == before["opened_at"]
    # The cooldown has passed already: the very next attempt is the new probe, and only one.
    assert b.allows(50.0)
    assert b.process_attempt(50.0) == "probe"
    assert b.probe_in_flight
    assert b.process_attempt(50.0) == "refused"
    b.process_success("probe")
    assert b.state == "closed"


def test_abandoned_probe_in_a_reopened_breaker_frees_the_slot_and_keeps_opened_at():
    b = open_with_probe_out(60.0)

    b.process_abandon("probe")

    assert (b.state, b.opened_at, b.probe_in_flight) == ("open", 60.0, False)
    assert b.process_attempt(60.0 + COOLDOWN - 1e-6) == "refused"
    assert b.process_attempt(60.0 + COOLDOWN) == "probe"


@pytest.mark.parametrize(
    "make",
    [
        fresh,
        lambda: opened_at(0.0),
        lambda: half_open_at(50.0),
        lambda: probing_with_straggler(50.0),
    ],
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


@pytest.mark.parametrize(
    "make",
    [fresh, lambda: opened_at(0.0), lambda: half_open_at(50.0)],
    ids=["closed", "open", "half-open"],
)
@pytest.mark.parametrize(
    "report",
    [
        lambda b, a: b.process_success(a),
        lambda b, a: b.process_failure(a, 60.0),
        lambda b, a: b.process_abandon(a),
    ],
    ids=["success", "failure", "abandon"],
)
def test_reporting_a_refused_attempt_raises_and_changes_nothing(make, report):
    b = make()
    before = snapshot(b)
    with pytest.raises(BreakerError, match="refused"):
        report(b, "refused")
    with pytest.raises(BreakerError, match="unknown admission"):
        report(b, "granted")
    assert snapshot(b) == before


@pytest.mark.parametrize(
    "make",
    [fresh, lambda: opened_at(0.0), lambda: half_open_slot_free(50.0)],
    ids=["closed", "open", "half-open-slot-free"],
)
@pytest.mark.parametrize(
    "report",
    [
        lambda b: b.process_success("probe"),
        lambda b: b.process_failure("probe", 60.0),
        lambda b: b.process_abandon("probe"),
    ],
    ids=["success", "failure", "abandon"],
)
def test_reporting_a_probe_when_none_is_in_flight_raises_and_changes_nothing(make, report):
    b = make()
    assert not b.probe_in_flight
    before = snapshot(b)
    with pytest.raises(BreakerError, match="no probe is in flight"):
        report(b)
    assert snapshot(b) == before


def test_a_probe_reports_only_once():
    b = half_open_at(50.0)
    b.process_failure("probe", 51.0)
    with pytest.raises(BreakerError):
        b.process_success("probe")


def test_a_pair_missing_from_the_table_raises(monkeypatch):
    """The methods look the next state up in TRANSITIONS: remove a row and the event raises,
    before anything is changed."""
    b = fresh()
    monkeypatch.delitem(TRANSITIONS, ("closed", "failure_below_threshold"))
    before = snapshot(b)
    with pytest.raises(BreakerError, match="'failure_below_threshold'.*'closed'"):
        b.process_failure("admitted", 1.0)
    assert snapshot(b) == before
    monkeypatch.delitem(TRANSITIONS, ("closed", "attempt"))
    with pytest.raises(BreakerError):
        b.allows(0.0)
    with pytest.raises(BreakerError):
        b.process_attempt(0.0)


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
    ids=[
        "closed",
        "open-cooling",
        "open-cooled",
        "half-open",
        "half-open-slot-free",
        "open-probe-out",
        "closed-probe-out",
    ],
)
def test_allows_never_mutates_and_predicts_process_attempt(make, now):
    b = make()
    before = snapshot(b)

    answers = {b.allows(now) for _ in range(3)}

    assert snapshot(b) == before
    assert len(answers) == 1
    assert answers.pop() == (b.process_attempt(now) != "refused")


# --------------------------------------------------------------------------- stragglers


def test_late_failure_of_a_pre_open_request_does_not_allow_a_second_concurrent_probe():
    b = Breaker(threshold=2, cooldown_s=10.0)
    # t=0: three requests go through while closed; C is slow.
    assert b.process_attempt(0.0) == "admitted"  # A
    assert b.process_attempt(0.0) == "admitted"  # B
    assert b.process_attempt(0.0) == "admitted"  # C
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

    b.process_success("admitted")  # the straggler succeeds: the deployment works

    assert (b.state, b.failures) == ("closed", 0)
    assert b.probe_in_flight  # the probe is still out and will report
    assert b.process_attempt(51.0) == "admitted"  # closed: traffic flows meanwhile

    b.process_success("probe")  # accepted, no error

    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 0, False)


def test_probe_failure_after_a_late_success_counts_like_any_closed_failure():
    b = probing_with_straggler(50.0)
    b.process_success("admitted")

    b.process_failure("probe", 52.0)

    assert (b.state, b.failures, b.probe_in_flight) == ("closed", 1, False)


def test_probe_out_while_closed_blocks_a_second_probe_if_it_reopens():
    b = probing_with_straggler(50.0)
    b.process_success("admitted")  # closed, probe still out
    for _ in range(THRESHOLD):
        assert b.process_attempt(51.0) == "admitted"
        b.process_failure("admitted", 51.0)
    assert b.state == "open"
    assert b.process_attempt(51.0 + COOLDOWN) == "refused"  # the old probe has not reported
    b.process_abandon("probe")
    assert b.process_attempt(51.0 + COOLDOWN) == "probe"


def test_breaker_round_trips_through_json():
    b = probing_with_straggler(50.0)
    again = Breaker.model_validate_json(b.model_dump_json())
    assert again == b
    assert again.process_attempt(51.0) == "refused"


# --------------------------------------------------------------------------- generated sequences

OPS = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 20.0])),
    st.tuples(st.just("attempt"), st.just(0)),
    st.tuples(st.sampled_from(["success", "failure", "abandon"]), st.integers(0, 50)),
)


@settings(max_examples=300, deadline=None)
@given(threshold=st.integers(1, 4), cooldown=st.integers(1, 20), ops=st.lists(OPS, max_size=60))
def test_never_two_probes_and_allows_predicts_attempt(threshold, cooldown, ops):
    """Random attempts, results (only for admissions actually held) and clock steps."""
    b = Breaker(threshold=threshold, cooldown_s=float(cooldown))
    held: list[Admission] = []
    now = 0.0
    for op, arg in ops:
        if op == "tick":
            now += arg
        elif op == "attempt":
            predicted = b.allows(now)
            assert predicted == (b.model_copy().process_attempt(now) != "refused")
            admission = b.process_attempt(now)
            assert predicted == (admission != "refused")
            if admission != "refused":
                held.append(admission)
        elif held:
            admission = held.pop(arg % len(held))
            if op == "success":
                b.process_success(admission)
            elif op == "failure":
                b.process_failure(admission, now)
            else:
                b.process_abandon(admission)
        assert held.count("probe") <= 1
        assert b.probe_in_flight == ("probe" in held)
        if b.state == "half_open" and not b.probe_in_flight:
            assert b.allows(now)  # only an abandoned probe leaves the slot free
        for t in (now, now + cooldown):
            before = snapshot(b)
            assert b.allows(t) == (b.model_copy().process_attempt(t) != "refused")
            assert snapshot(b) == before


@dataclass
class Model:
    """The breaker as the rules describe it, written independently of the table."""

    threshold: int
    cooldown: float
    state: str = "closed"
    failures: int = 0
    opened: float = 0.0
    probe: bool = False

    def would_admit(self, now: float) -> str:
        if self.state == "closed":
            return "admitted"
        if self.state == "open" and now < self.opened + self.cooldown:
            return "refused"
        return "refused" if self.probe else "probe"

    def attempt(self, now: float) -> str:
        admission = self.would_admit(now)
        if admission == "probe":
            self.state, self.probe = "half_open", True
        return admission

    def success(self, admission: str) -> None:
        self.state, self.failures = "closed", 0
        if admission == "probe":
            self.probe = False

    def failure(self, admission: str, now: float) -> None:
        self.failures += 1
        if self.state != "closed" or self.failures >= self.threshold:
            self.state, self.opened = "open", now
        if admission == "probe":
            self.probe = False

    def abandon(self, admission: str) -> None:
        if admission == "probe":
            self.probe = False


class BreakerMachine(RuleBasedStateMachine):
    """Any mix of attempts, successes, failures and abandons (including late ones), clock
    steps and caller bugs, compared step by step with the reference model."""

    @initialize(threshold=st.integers(1, 4), cooldown=st.integers(1, 20))
    def setup(self, threshold: int, cooldown: int) -> None:
        self.breaker = Breaker(threshold=threshold, cooldown_s=float(cooldown))
        self.model = Model(threshold, float(cooldown))
        self.now = 0.0
        self.held: list[str] = []

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def attempt(self) -> None:
        expected = self.model.attempt(self.now)
        got = self.breaker.process_attempt(self.now)
        assert got == expected
        if got != "refused":
            self.held.append(got)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 50), outcome=st.sampled_from(["success", "failure", "abandon"]))
    def report(self, pick: int, outcome: str) -> None:
        admission = self.held.pop(pick % len(self.held))
        if outcome == "success":
            self.model.success(admission)
            self.breaker.process_success(admission)
            assert (self.breaker.state, self.breaker.failures) == ("closed", 0)
        elif outcome == "failure":
            self.model.failure(admission, self.now)
            self.breaker.process_failure(admission, self.now)
        else:
            before = {k: v for k, v in snapshot(self.breaker).items() if k != "probe_in_flight"}
            self.model.abandon(admission)
            self.breaker.process_abandon(admission)
            after = {k: v for k, v in snapshot(self.breaker).items() if k != "probe_in_flight"}
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
            self.breaker.process_success(admission)
        elif outcome == "failure":
            self.breaker.process_failure(admission, self.now)
        else:
            self.breaker.process_abandon(admission)

    @precondition(lambda self: self.breaker.state == "open")
    @rule(dt=st.floats(0, 1, exclude_max=True))
    def open_refuses_until_cooldown(self, dt: float) -> None:
        # At any instant before opened_at + cooldown, an open breaker refuses.
        t = self.breaker.opened_at + dt * self.breaker.cooldown_s
        if t >= self.breaker.opened_at + self.breaker.cooldown_s:
            return  # float rounding landed on the boundary itself
        assert not self.breaker.allows(t)
        assert self.breaker.model_copy().process_attempt(t) == "refused"

    @invariant()
    def matches_reference_model(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.breaker.state == self.model.state
        assert self.breaker.failures == self.model.failures
        if self.model.state == "open":
            assert self.breaker.opened_at == self.model.opened

    @invariant()
    def allows_is_read_only_and_agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        before = snapshot(self.breaker)
        for t in (self.now, self.now + self.model.cooldown):
            expected = self.model.would_admit(t)
            assert self.breaker.allows(t) == (expected != "refused")
            assert self.breaker.model_copy().process_attempt(t) == expected
        assert snapshot(self.breaker) == before

    @invariant()
    def at_most_one_probe_outstanding(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.held.count("probe") <= 1
        assert self.breaker.probe_in_flight == self.model.probe == ("probe" in self.held)


BreakerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_follows_the_reference_model = BreakerMachine.TestCase
