"""A provider's health as a sans-io state machine: its table against its docstring, every row,
the evidence rules (passive, active, reported), what is kept for reports, and generated
sequences checked against invariants. Time is always injected; nothing sleeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import get_args, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core import health as health_module
from router_agent.core.health import TRANSITIONS, HealthError, HealthState, ProviderHealth
from signals.types import ProviderHealth as ProviderHealthSignal

INTERVAL = 30.0


def healthy(t: float = 0.0, **settings_: object) -> ProviderHealth:
    return ProviderHealth(t, probe_interval_s=INTERVAL, **settings_)


def degraded(t: float = 0.0, **settings_: object) -> ProviderHealth:
    h = healthy(t, **settings_)
    h.process_breaker_open(t, "gpt-4")
    assert h.state == "degraded"
    return h


def unhealthy(t: float = 0.0, **settings_: object) -> ProviderHealth:
    h = healthy(t, **settings_)
    h.process_breaker_open(t, None)
    assert h.state == "unhealthy"
    return h


def snapshot(h: ProviderHealth) -> dict:
    return dataclasses.asdict(h)


# ------------------------------------------------------------------- the table and its docs


def docstring_rows() -> set[tuple[str, str, str]]:
    rows = set()
    for line in (health_module.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) != 4 or cells[0] == "state" or set(cells[0]) <= {"-"}:
            continue
        rows.add((cells[0], cells[1], cells[2]))
    return rows


def test_docstring_table_is_exactly_the_transitions_table():
    documented = docstring_rows()
    assert documented, "no transition table found in the module docstring"
    assert documented == {(state, event, nxt) for (state, event), nxt in TRANSITIONS.items()}
    assert len(documented) == len(TRANSITIONS)


def test_the_states_are_those_of_the_provider_health_signal():
    states = set(get_args(HealthState))
    assert states == set(get_args(get_type_hints(ProviderHealthSignal)["status"]))
    for (state, _event), nxt in TRANSITIONS.items():
        assert state in states and nxt in states
    for state in states:  # every state hears every report
        assert {TRANSITIONS[state, f"report_{s}"] for s in states} == states


Scenario = tuple[Callable[[], ProviderHealth], Callable[[ProviderHealth], None]]
ROWS: dict[tuple[str, str], Scenario] = {
    ("healthy", "success"): (healthy, lambda h: h.process_success(1.0)),
    ("healthy", "failure"): (healthy, lambda h: h.process_failure(1.0, "server_error", "500")),
    ("healthy", "failure_degrades"): (
        lambda: healthy(degraded_after=1), lambda h: h.process_failure(1.0, "timeout", "slow")),
    ("healthy", "deployment_breaker_open"): (healthy, lambda h: h.process_breaker_open(1.0, "m")),
    ("healthy", "provider_breaker_open"): (healthy, lambda h: h.process_breaker_open(1.0, None)),
    ("healthy", "probe_failed"): (healthy, lambda h: h.process_probe(1.0, False, "refused")),
    ("healthy", "probe_condemns"): (
        lambda: healthy(unhealthy_after=1), lambda h: h.process_probe(1.0, False, "refused")),
    ("degraded", "success"): (degraded, lambda h: h.process_probe(1.0, True)),
    ("degraded", "success_recovers"): (
        lambda: degraded(recover_after=1), lambda h: h.process_success(1.0)),
    ("degraded", "failure"): (degraded, lambda h: h.process_failure(1.0, "overloaded", "")),
    ("degraded", "deployment_breaker_open"): (degraded, lambda h: h.process_breaker_open(1.0, "m2")),
    ("degraded", "provider_breaker_open"): (degraded, lambda h: h.process_breaker_open(1.0, None)),
    ("degraded", "probe_failed"): (degraded, lambda h: h.process_probe(1.0, False, "500")),
    ("degraded", "probe_condemns"): (
        lambda: degraded(unhealthy_after=1), lambda h: h.process_probe(1.0, False, "500")),
    ("unhealthy", "success"): (unhealthy, lambda h: h.process_success(1.0)),
    ("unhealthy", "success_recovers"): (
        lambda: unhealthy(recover_after=1), lambda h: h.process_probe(1.0, True)),
    ("unhealthy", "failure"): (unhealthy, lambda h: h.process_failure(1.0, "connection_error", "refused")),
    ("unhealthy", "deployment_breaker_open"): (unhealthy, lambda h: h.process_breaker_open(1.0, "m")),
    ("unhealthy", "provider_breaker_open"): (unhealthy, lambda h: h.process_breaker_open(1.0, None)),
    ("unhealthy", "probe_failed"): (unhealthy, lambda h: h.process_probe(1.0, False, "refused")),
}
for _state, _make in (("healthy", healthy), ("degraded", degraded), ("unhealthy", unhealthy)):
    for _status in ("healthy", "degraded", "unhealthy"):
        ROWS[_state, f"report_{_status}"] = (_make, lambda h, s=_status: h.process_report(1.0, s, "monitor"))


def test_every_row_has_a_scenario():
    assert set(ROWS) == set(TRANSITIONS)


@pytest.mark.parametrize("row", list(ROWS), ids=[f"{s}-{e}" for s, e in ROWS])
def test_each_row_moves_to_its_next_state(row):
    make, fire = ROWS[row]
    h = make()
    assert h.state == row[0]
    fire(h)
    assert h.state == TRANSITIONS[row]


def test_a_pair_missing_from_the_table_raises_before_anything_changes(monkeypatch):
    h = healthy()
    monkeypatch.delitem(TRANSITIONS, ("healthy", "failure"))
    before = snapshot(h)
    with pytest.raises(HealthError, match="'failure'.*'healthy'"):
        h.process_failure(1.0, "server_error", "500")
    assert snapshot(h) == before


def test_the_table_decides_the_next_state(monkeypatch):
    h = healthy()
    monkeypatch.setitem(TRANSITIONS, ("healthy", "failure"), "unhealthy")
    h.process_failure(1.0, "server_error", "500")
    assert h.state == "unhealthy"


def test_a_failure_that_is_not_the_providers_raises_and_changes_nothing():
    h = healthy()
    before = snapshot(h)
    for code in ("bad_request", "rate_limited", "context_length_exceeded", "invalid_request"):
        with pytest.raises(HealthError, match="says nothing about the provider"):
            h.process_failure(1.0, code, "")
    assert snapshot(h) == before


@pytest.mark.parametrize("name", ["degraded_after", "unhealthy_after", "recover_after"])
def test_settings_are_checked(name):
    with pytest.raises(ValueError, match=name):
        ProviderHealth(0.0, **{name: 0})
    with pytest.raises(ValueError, match="probe_interval_s"):
        ProviderHealth(0.0, probe_interval_s=-1)


# --------------------------------------------------------------------------- passive evidence


def test_failures_in_a_row_degrade_and_a_success_between_them_resets_the_count():
    h = healthy(degraded_after=3)
    h.process_failure(1.0, "server_error", "500")
    h.process_failure(2.0, "server_error", "500")
    h.process_success(3.0)
    h.process_failure(4.0, "server_error", "500")
    h.process_failure(5.0, "server_error", "500")
    assert h.state == "healthy"
    h.process_failure(6.0, "timeout", "no answer in 30 s")
    assert (h.state, h.changed_at) == ("degraded", 6.0)
    assert h.detail == "3 failures in a row, the last timeout: no answer in 30 s"


def test_recovery_takes_recover_after_successes_in_a_row():
    h = unhealthy(recover_after=3)
    h.process_success(1.0)
    assert (h.state, h.detail) == ("degraded", "recovering: 1 successes in a row")
    h.process_success(2.0)
    h.process_failure(2.5, "server_error", "500")  # the run starts over
    h.process_success(3.0)
    h.process_success(4.0)
    assert h.state == "degraded"
    h.process_probe(5.0, True)
    assert (h.state, h.detail, h.successes_in_row) == ("healthy", "", 0)


def test_last_error_and_last_success_are_kept_and_bounded():
    h = healthy()
    h.process_success(1.0)
    h.process_failure(2.0, "auth_error", "key rejected " + "x" * 1000)
    assert (h.last_success_at, h.last_error_code, h.last_error_at) == (1.0, "auth_error", 2.0)
    assert h.last_error.startswith("key rejected") and len(h.last_error) == 500
    h.process_probe(3.0, False, "connection refused")
    assert (h.last_error, h.last_error_code, h.last_error_at) == ("connection refused", "probe_failed", 3.0)


def test_the_providers_own_breaker_condemns_it_and_a_deployments_degrades_it():
    h = healthy()
    h.process_breaker_open(1.0, "gpt-4")
    assert (h.state, h.detail) == ("degraded", "the circuit of gpt-4 is open")
    h.process_breaker_open(2.0, None)
    assert (h.state, h.detail) == ("unhealthy", "its circuit breaker is open")


def test_a_breaker_opening_restarts_a_recovery_run():
    h = unhealthy(0.0, recover_after=2)
    h.process_success(1.0)
    h.process_breaker_open(2.0, "m")
    h.process_success(3.0)
    assert (h.state, h.successes_in_row) == ("degraded", 1)


# --------------------------------------------------------------------------- active probes


def test_a_probe_is_due_only_after_an_interval_without_evidence():
    h = healthy(100.0)
    assert not h.probe_due(100.0 + INTERVAL - 0.1)
    assert h.probe_due(100.0 + INTERVAL)
    h.process_success(120.0)  # real traffic proves health: the clock starts again
    assert not h.probe_due(100.0 + INTERVAL)
    assert h.probe_due(120.0 + INTERVAL)


def test_a_sent_probe_holds_off_the_next_even_if_it_never_reports():
    h = healthy(0.0)
    h.process_probe_sent(INTERVAL)
    assert not h.probe_due(INTERVAL + 1.0)
    assert h.probe_due(2 * INTERVAL)  # the first never came back: send another


def test_failed_probes_degrade_then_condemn():
    h = healthy(0.0, unhealthy_after=2)
    h.process_probe(30.0, False, "connection refused")
    assert h.state == "degraded"
    h.process_probe(60.0, False, "connection refused")
    assert (h.state, h.detail) == ("unhealthy", "2 failed probes in a row: connection refused")
    assert not h.probe_due(60.0) and h.probe_due(90.0)  # unhealthy: no traffic, keep probing


def test_an_unhealthy_provider_is_probed_back_to_health():
    h = unhealthy(0.0, recover_after=2)
    for t in (30.0, 61.0):
        assert h.probe_due(t)
        h.process_probe_sent(t)
        h.process_probe(t + 0.1, True)
    assert h.state == "healthy"


def test_a_zero_interval_turns_probes_off():
    h = ProviderHealth(0.0, probe_interval_s=0.0)
    assert not any(h.probe_due(t) for t in (0.0, 1e3, 1e9))


# --------------------------------------------------------------------------- reports from outside


def test_a_report_sets_the_state_until_fresher_own_evidence():
    h = healthy(0.0, recover_after=2)
    h.process_report(10.0, "unhealthy", "monitor: 5xx on /health")
    assert (h.state, h.reported, h.reported_at) == ("unhealthy", "unhealthy", 10.0)
    assert h.detail == "reported unhealthy: monitor: 5xx on /health"
    assert not h.probe_due(10.0 + INTERVAL - 1)  # the report is evidence for an interval
    assert h.probe_due(10.0 + INTERVAL)
    h.process_probe(45.0, True)  # our own, fresher evidence: it answers
    assert h.state == "degraded"


def test_a_healthy_report_clears_own_counts():
    h = healthy(0.0, degraded_after=3)
    h.process_failure(1.0, "server_error", "500")
    h.process_failure(2.0, "server_error", "500")
    h.process_report(3.0, "healthy", "")
    assert (h.state, h.failures_in_row, h.detail) == ("healthy", 0, "reported healthy")
    h.process_failure(4.0, "server_error", "500")
    assert h.state == "healthy"  # it takes degraded_after failures again


# --------------------------------------------------------------------------- uptime


def test_uptime_is_the_share_of_time_healthy_or_degraded():
    h = healthy(0.0)
    assert h.uptime(0.0) == 1.0
    h.process_breaker_open(10.0, "m")  # degraded still counts as up
    h.process_breaker_open(20.0, None)  # unhealthy from 20
    assert h.uptime(40.0) == pytest.approx(0.5)
    assert h.time_in_states(40.0) == {"healthy": 10.0, "degraded": 10.0, "unhealthy": 20.0}
    h.process_report(40.0, "healthy", "")
    assert h.uptime(80.0) == pytest.approx(60.0 / 80.0)
    assert unhealthy(5.0).uptime(5.0) == 0.0


EVENTS = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.1, 1.0, 10.0, 31.0])),
    st.tuples(st.just("late"), st.sampled_from([0.5, 5.0])),  # a `now` a little in the past
    st.tuples(st.just("success"), st.none()),
    st.tuples(st.just("failure"), st.sampled_from(["server_error", "timeout", "connection_error"])),
    st.tuples(st.just("breaker"), st.sampled_from([None, "m"])),
    st.tuples(st.just("probe"), st.booleans()),
    st.tuples(st.just("report"), st.sampled_from(["healthy", "degraded", "unhealthy"])),
)


def apply(h: ProviderHealth, now: float, op: str, arg: object) -> None:
    if op == "success":
        h.process_success(now)
    elif op == "failure":
        h.process_failure(now, str(arg), "detail")
    elif op == "breaker":
        h.process_breaker_open(now, arg)  # type: ignore[arg-type]
    elif op == "probe":
        h.process_probe_sent(now)
        h.process_probe(now, bool(arg), "detail")
    elif op == "report":
        h.process_report(now, arg, "detail")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(events=st.lists(EVENTS, max_size=50), start=st.sampled_from([0.0, 1e6]))
def test_uptime_stays_in_the_unit_interval_and_time_adds_up(events, start):
    h = healthy(start)
    now = start
    for op, arg in events:
        if op == "tick":
            now += arg  # type: ignore[operator]
        elif op == "late":  # a result whose `now` was read a little earlier
            apply(h, now - arg, "failure", "server_error")  # type: ignore[operator]
        else:
            apply(h, now, op, arg)
        assert 0.0 <= h.uptime(now) <= 1.0
        assert sum(h.time_in_states(now).values()) == pytest.approx(now - start)
        assert h.state in ("healthy", "degraded", "unhealthy")


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.floats(0.0, INTERVAL - 1e-6), min_size=1, max_size=40),  # float sums round
       prefix=st.lists(EVENTS.filter(lambda e: e[0] != "late"), max_size=10))
def test_no_probe_is_due_while_successes_keep_arriving_within_the_interval(gaps, prefix):
    h = healthy(0.0)
    now = 0.0
    for op, arg in prefix:
        if op == "tick":
            now += arg  # type: ignore[operator]
        else:
            apply(h, now, op, arg)
    h.process_success(now)
    for gap in gaps:
        assert not h.probe_due(now + gap)
        now += gap
        h.process_success(now)
        assert not h.probe_due(now)
