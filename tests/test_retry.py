"""Retries as pure code: the jittered backoff's bounds, retries never outlasting the deadline,
the retry budget against a reference model, and the decision table against its docstring.

Time and randomness are always passed in; nothing here sleeps.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core import retry as retry_module
from router_agent.core.retry import DECISIONS, RetryBudget, RetryPolicy, after_failure

RAND = st.floats(0.0, 1.0, exclude_max=True)
POLICIES = st.builds(
    RetryPolicy,
    initial_s=st.floats(0.01, 2.0),
    max_s=st.floats(2.0, 60.0),
    multiplier=st.floats(1.0, 4.0),
    max_retries=st.integers(0, 8),
    min_attempt_s=st.floats(0.0, 1.0),
)


def roomy_budget() -> RetryBudget:
    return RetryBudget(ratio=1.0, min_retries_per_s=1000.0)


# --------------------------------------------------------------------------- RetryPolicy


def test_defaults_are_keyword_only_and_checked():
    policy = RetryPolicy()
    assert (policy.initial_s, policy.max_s, policy.multiplier, policy.max_retries) == (0.2, 10.0, 2.0, 2)
    with pytest.raises(TypeError):
        RetryPolicy(0.1)  # type: ignore[misc]
    for bad in ({"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"multiplier": 0.5},
                {"max_retries": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_delay_is_full_jitter_under_a_doubling_ceiling():
    policy = RetryPolicy(initial_s=0.5, max_s=3.0, multiplier=2.0)
    assert [policy.ceiling(a) for a in (1, 2, 3, 4, 50)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, 0.0) == 0.0
    assert policy.delay(2, 0.5) == 0.5
    assert policy.delay(10_000, 0.5) == 1.5  # no overflow however many retries
    with pytest.raises(ValueError, match="rand"):
        policy.delay(1, 1.0)
    with pytest.raises(ValueError, match="numbered from 1"):
        policy.delay(0, 0.5)


@settings(max_examples=200, deadline=None)
@given(policy=POLICIES, attempt=st.integers(1, 200), rand=RAND)
def test_delay_stays_within_its_ceiling_and_the_ceiling_never_shrinks(policy, attempt, rand):
    ceiling = min(policy.max_s, policy.initial_s * policy.multiplier ** (attempt - 1))  # < 4 ** 200
    assert 0.0 <= policy.delay(attempt, rand) <= ceiling * (1 + 1e-12)
    assert policy.ceiling(attempt) == pytest.approx(ceiling, rel=1e-9)
    assert policy.ceiling(attempt) <= policy.ceiling(attempt + 1) <= policy.max_s


def test_backoff_honours_retry_after_and_gives_up_past_the_deadline_or_the_count():
    policy = RetryPolicy(initial_s=1.0, max_s=8.0, max_retries=2, min_attempt_s=0.5)
    assert policy.backoff(1, 0.5, remaining_s=10.0) == 0.5
    assert policy.backoff(1, 0.5, retry_after_s=4.0, remaining_s=10.0) == 4.0
    assert policy.backoff(2, 0.5, retry_after_s=0.1, remaining_s=10.0) == 1.0
    assert policy.backoff(3, 0.0, remaining_s=10.0) is None  # max_retries
    assert policy.backoff(1, 0.5, retry_after_s=9.5, remaining_s=10.0) == 9.5  # just fits
    assert policy.backoff(1, 0.5, retry_after_s=9.6, remaining_s=10.0) is None
    assert policy.backoff(1, 0.0, remaining_s=0.4) is None  # no time left for the call


@settings(max_examples=200, deadline=None)
@given(policy=POLICIES, remaining=st.floats(0.0, 30.0),
       failures=st.lists(st.tuples(st.floats(0.0, 5.0), RAND, st.none() | st.floats(0.0, 1.5)),
                         max_size=12))
def test_retries_never_outlast_the_deadline(policy, remaining, failures):
    """A request fails again and again on one deployment, each attempt taking any time
    (cut short by the deadline) and the provider asking for any Retry-After (as a share of
    the time left, to reach the boundary often): the waits granted sum to no more than the
    time there was, and every retry starts with at least ``min_attempt_s`` left."""
    deadline, now, waited, retries = remaining, 0.0, 0.0, 0
    for took, rand, retry_after_share in failures:
        now = min(deadline, now + took)
        retry_after = None if retry_after_share is None else retry_after_share * (deadline - now)
        decision = after_failure(policy, roomy_budget(), now, attempt=retries + 1, retryable=True,
                                 candidate_ready=False, rand=rand, retry_after_s=retry_after,
                                 remaining_s=deadline - now)
        if decision.step != "retry":
            assert decision.wait_s == 0.0
            break
        assert decision.wait_s + policy.min_attempt_s <= deadline - now
        assert decision.wait_s >= (retry_after or 0.0)
        retries += 1
        waited += decision.wait_s
        now += decision.wait_s
        assert now + policy.min_attempt_s <= deadline + 1e-9
    assert waited <= remaining
    assert retries <= policy.max_retries


# --------------------------------------------------------------------------- RetryBudget


def test_the_ratio_caps_retries_at_a_share_of_requests():
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.0, window_s=10.0)
    for _ in range(100):
        budget.record_request(0.0)
    assert [budget.try_retry(1.0) for _ in range(21)] == [True] * 20 + [False]
    assert budget.counts(1.0) == (100, 20)  # the refusal was not recorded
    assert not budget.try_retry(10.0)  # requests of t=0 have left the window; so have ...
    assert budget.counts(10.0) == (0, 20)  # ... not the retries of t=1
    assert budget.counts(11.0) == (0, 0)


def test_the_floor_lets_a_quiet_deployment_retry():
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.5, window_s=10.0)  # floor: 5 per window
    assert budget.floor == 5.0
    assert [budget.try_retry(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert budget.try_retry(10.0)  # the window moved on


def test_a_clock_reading_out_of_order_clears_nothing():
    budget = RetryBudget(ratio=1.0, min_retries_per_s=0.0, window_s=10.0)
    budget.record_request(25.0)
    budget.record_request(14.0)  # earlier than the latest: counted as now, not 11 s ago
    assert budget.counts(25.0) == (2, 0)
    assert budget.counts(5.0) == (2, 0)


BUDGET_OPS = st.lists(st.tuples(st.sampled_from(["tick", "request", "retry"]),
                                st.integers(0, 3000).map(lambda ms: ms / 1000)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]), per_s=st.sampled_from([0.0, 0.1, 0.5, 5.0]),
       window_s=st.sampled_from([1.0, 5.0, 10.0]), buckets=st.integers(1, 10), ops=BUDGET_OPS)
def test_the_budget_holds_over_any_sequence(ratio, per_s, window_s, buckets, ops):
    """Against a plain list of events: each retry is admitted exactly when, with it, the
    retries in the window are at most ``max(ratio * requests, floor)``."""
    budget = RetryBudget(ratio=ratio, min_retries_per_s=per_s, window_s=window_s, buckets=buckets)
    slot_s = window_s / buckets
    events: list[tuple[int, str]] = []  # (slot period, kind)
    now = 0.0
    for op, dt in ops:
        if op == "tick":
            now += dt
            continue
        period = math.floor(now / slot_s)
        in_window = [kind for p, kind in events if period - buckets < p <= period]
        requests, retries = in_window.count("request"), in_window.count("retry")
        assert budget.counts(now) == (requests, retries)
        if op == "request":
            budget.record_request(now)
            events.append((period, "request"))
        else:
            allowed = retries + 1 <= max(ratio * requests, per_s * window_s)
            assert budget.try_retry(now) == allowed
            if allowed:
                events.append((period, "retry"))
                assert retries + 1 <= max(ratio * requests, budget.floor)


# --------------------------------------------------------------------------- the decision


def docstring_rows() -> set[tuple[str, str]]:
    rows = set()
    for line in (retry_module.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) != 3:
            continue
        if cells[0] == "situation" or set(cells[0]) <= {"-"}:
            continue
        rows.add((cells[0], cells[1]))
    return rows


def test_docstring_table_is_exactly_the_decisions_table():
    documented = docstring_rows()
    assert documented, "no decision table in the module docstring"
    assert documented == set(DECISIONS.items())


def decide(**overrides):
    """``after_failure`` for a retryable failure with room to retry, changed by ``overrides``;
    returns the decision and the budget it asked."""
    budget = overrides.pop("budget", roomy_budget())
    policy = overrides.pop("policy", RetryPolicy(initial_s=1.0, max_s=8.0, max_retries=2,
                                                 min_attempt_s=0.5))
    args = {"attempt": 1, "retryable": True, "candidate_ready": False, "rand": 0.5,
            "remaining_s": 30.0, "retry_after_s": None} | overrides
    return after_failure(policy, budget, 0.0, **args), budget


# One scenario per situation; adding a situation without one fails the next test.
SITUATIONS = {
    "deadline_passed": {"remaining_s": 0.0, "candidate_ready": True, "retryable": False},
    "not_retryable": {"retryable": False},
    "candidate_ready": {"candidate_ready": True},
    "retries_exhausted": {"attempt": 3},
    "outlasts_deadline": {"retry_after_s": 29.6},
    "budget_spent": {"budget": RetryBudget(ratio=0.0, min_retries_per_s=0.0)},
    "backoff": {},
}


def test_every_situation_has_a_scenario():
    assert set(SITUATIONS) == set(DECISIONS)


@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_each_situation_leads_to_its_step(situation):
    decision, budget = decide(**SITUATIONS[situation])
    assert (decision.situation, decision.step) == (situation, DECISIONS[situation])
    assert decision.wait_s == (0.5 if situation == "backoff" else 0.0)
    # The budget is asked, and a retry recorded, only when the retry is made.
    assert budget.counts(0.0)[1] == (1 if situation == "backoff" else 0)


def test_the_decision_follows_the_table(monkeypatch):
    monkeypatch.setitem(DECISIONS, "not_retryable", "stop")
    assert decide(retryable=False)[0].step == "stop"
