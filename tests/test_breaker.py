"""The circuit breaker as a sans-io state machine: every row of its transition table, then
generated sequences of events checked against a small reference model.

Time is always injected (``now``); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from router_agent.core.breaker import Breaker

THRESHOLD = 3
COOLDOWN = 10.0


def fresh() -> Breaker:
    return Breaker(threshold=THRESHOLD, cooldown_s=COOLDOWN)


def opened_at(t: float) -> Breaker:
    """A breaker that reached ``open`` by THRESHOLD consecutive failures at time ``t``."""
    b = fresh()
    for _ in range(THRESHOLD):
        assert b.process_attempt(t)
        b.process_failure(t)
    assert b.state == "open"
    return b


def half_open_at(t: float) -> Breaker:
    """A breaker whose probe was let through at ``t`` (opened at ``t - COOLDOWN``)."""
    b = opened_at(t - COOLDOWN)
    assert b.process_attempt(t)
    assert b.state == "half_open"
    return b


# --------------------------------------------------------------------------- the table, row by row


def test_closed_success_stays_closed_and_resets_failures():
    b = fresh()
    b.process_failure(1.0)
    b.process_failure(2.0)
    assert b.failures == 2

    b.process_success()

    assert b.state == "closed"
    assert b.failures == 0
    # The reset is real: it again takes a full THRESHOLD failures to open.
    for i in range(THRESHOLD - 1):
        b.process_failure(3.0 + i)
    assert b.state == "closed"


def test_closed_failure_below_threshold_stays_closed_and_lets_traffic_through():
    b = fresh()
    for i in range(THRESHOLD - 1):
        b.process_failure(float(i))
        assert b.state == "closed"
        assert b.failures == i + 1
        assert b.allows(float(i))
        assert b.process_attempt(float(i))


def test_closed_failure_reaching_threshold_opens_at_that_time():
    b = fresh()
    for _ in range(THRESHOLD - 1):
        b.process_failure(5.0)
    assert b.state == "closed"

    b.process_failure(7.5)

    assert b.state == "open"
    assert b.opened_at == 7.5
    assert not b.allows(7.5)
    assert not b.process_attempt(7.5)


def test_open_refuses_until_the_cooldown_is_over():
    b = opened_at(100.0)
    for now in (100.0, 100.0 + COOLDOWN / 2, 100.0 + COOLDOWN - 1e-6):
        assert not b.allows(now)
        assert not b.process_attempt(now)
        assert b.state == "open"
        assert not b.probe_in_flight
    assert b.opened_at == 100.0


def test_open_lets_one_probe_through_once_the_cooldown_is_over():
    b = opened_at(100.0)
    now = 100.0 + COOLDOWN  # the boundary itself counts as "over"

    assert b.allows(now)
    assert b.process_attempt(now)

    assert b.state == "half_open"
    assert b.probe_in_flight


def test_half_open_refuses_while_the_probe_is_in_flight():
    b = half_open_at(50.0)
    for now in (50.0, 50.0 + COOLDOWN, 50.0 + 100 * COOLDOWN):
        assert not b.allows(now)
        assert not b.process_attempt(now)
        assert b.state == "half_open"
        assert b.probe_in_flight


def test_half_open_probe_success_closes():
    b = half_open_at(50.0)

    b.process_success()

    assert b.state == "closed"
    assert b.failures == 0
    assert not b.probe_in_flight
    assert b.process_attempt(50.0)
    assert b.process_attempt(50.0)  # closed: no single-probe limit any more


def test_half_open_probe_failure_reopens_for_another_cooldown():
    b = half_open_at(50.0)

    b.process_failure(53.0, probe=True)

    assert b.state == "open"
    assert b.opened_at == 53.0
    assert not b.probe_in_flight
    assert not b.allows(53.0 + COOLDOWN - 1e-6)
    assert not b.process_attempt(53.0 + COOLDOWN - 1e-6)
    assert b.process_attempt(53.0 + COOLDOWN)
    assert b.state == "half_open"


# ------------------------------------------------------------------ allows() is a pure read


@pytest.mark.parametrize(
    "make, now",
    [
        (fresh, 0.0),
        (lambda: opened_at(0.0), 1.0),  # open, cooling down
        (lambda: opened_at(0.0), COOLDOWN),  # open, cooldown over: would let a probe through
        (lambda: half_open_at(20.0), 25.0),  # half-open, probe in flight
    ],
    ids=["closed", "open-cooling", "open-cooled", "half-open"],
)
def test_allows_never_mutates_and_predicts_process_attempt(make, now):
    b = make()
    before = b.model_dump()

    answers = {b.allows(now) for _ in range(3)}

    assert b.model_dump() == before
    assert len(answers) == 1
    assert answers.pop() == b.process_attempt(now)


# --------------------------------------------------------------------------- a known gap


def test_late_failure_of_a_pre_open_request_does_not_allow_a_second_concurrent_probe():
    b = Breaker(threshold=2, cooldown_s=10.0)
    # t=0: three requests go through while closed; C is slow.
    assert b.process_attempt(0.0)  # A
    assert b.process_attempt(0.0)  # B
    assert b.process_attempt(0.0)  # C
    b.process_failure(1.0)  # A fails
    b.process_failure(1.0)  # B fails -> open at 1
    assert b.state == "open"
    assert b.process_attempt(11.0)  # probe P1 let through, still running
    b.process_failure(12.0)  # C (admitted at t=0) finally fails
    # P1 has not completed, so no other probe may be in flight at the same time.
    assert not b.process_attempt(22.0)
    b.process_failure(23.0, probe=True)  # P1 fails: the next probe may go after the cooldown
    assert b.process_attempt(33.0)


# --------------------------------------------------------------------------- generated sequences


@dataclass
class Model:
    """The breaker as the transition table describes it, written independently."""

    threshold: int
    cooldown: float
    state: str = "closed"
    failures: int = 0
    opened: float = 0.0
    probe: bool = False

    def would_allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self.opened + self.cooldown and not self.probe
        return False  # half_open: its one probe is in flight

    def attempt(self, now: float) -> bool:
        allowed = self.would_allow(now)
        if allowed and self.state == "open":
            self.state, self.probe = "half_open", True
        return allowed

    def success(self) -> None:
        self.state, self.failures, self.probe = "closed", 0, False

    def failure(self, now: float, probe: bool) -> None:
        self.failures += 1
        if self.state != "closed" or self.failures >= self.threshold:
            self.state, self.opened = "open", now
        if probe:
            self.probe = False


class BreakerMachine(RuleBasedStateMachine):
    """Any mix of attempts, successes, failures (including late ones) and clock steps."""

    @initialize(threshold=st.integers(1, 4), cooldown=st.integers(1, 20))
    def setup(self, threshold: int, cooldown: int) -> None:
        self.breaker = Breaker(threshold=threshold, cooldown_s=float(cooldown))
        self.model = Model(threshold, float(cooldown))
        self.now = 0.0
        self.probes_granted_in_half_open = 0

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 20.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def attempt(self) -> None:
        was = self.breaker.state
        expected = self.model.attempt(self.now)
        got = self.breaker.process_attempt(self.now)
        assert got == expected
        if was == "open" and got:
            self.probes_granted_in_half_open = 1
        elif was == "half_open" and got:
            self.probes_granted_in_half_open += 1

    @rule()
    def success(self) -> None:
        self.model.success()
        self.breaker.process_success()
        assert self.breaker.state == "closed"
        assert self.breaker.failures == 0
        self.probes_granted_in_half_open = 0

    @rule()
    def failure(self) -> None:
        """A request other than the probe fails (possibly one admitted long ago)."""
        self.model.failure(self.now, probe=False)
        self.breaker.process_failure(self.now)

    @precondition(lambda self: self.breaker.probe_in_flight)
    @rule()
    def probe_fails(self) -> None:
        self.model.failure(self.now, probe=True)
        self.breaker.process_failure(self.now, probe=True)
        self.probes_granted_in_half_open = 0

    @precondition(lambda self: self.breaker.state == "open")
    @rule(dt=st.floats(0, 1, exclude_max=True))
    def open_refuses_until_cooldown(self, dt: float) -> None:
        # At any instant before opened_at + cooldown, an open breaker refuses.
        t = self.breaker.opened_at + dt * self.breaker.cooldown_s
        if t >= self.breaker.opened_at + self.breaker.cooldown_s:
            return  # float rounding landed on the boundary itself
        assert not self.breaker.allows(t)
        assert not self.breaker.model_copy().process_attempt(t)

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
        before = self.breaker.model_dump()
        for t in (self.now, self.now + self.model.cooldown):
            assert self.breaker.allows(t) == self.model.would_allow(t)
        assert self.breaker.model_dump() == before

    @invariant()
    def at_most_one_probe_in_half_open(self) -> None:
        if not hasattr(self, "model"):
            return
        assert self.breaker.probe_in_flight == self.model.probe
        if self.breaker.state == "half_open":
            assert self.breaker.probe_in_flight
        if self.breaker.probe_in_flight:
            assert self.probes_granted_in_half_open == 1
        if self.breaker.state == "closed":
            assert not self.breaker.probe_in_flight


BreakerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_follows_the_reference_model = BreakerMachine.TestCase
