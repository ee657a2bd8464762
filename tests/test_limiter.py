"""Rate limits (token buckets per deployment) and the wait queue, as pure code.

The properties: a bucket never admits more than ``capacity + refill * W`` in any window of
``W`` seconds, also with estimates corrected, refunds and provider headers in the mix;
``allows`` predicts ``admit`` and changes nothing; provider headers only ever tighten; the
queue serves in (priority, deadline, arrival) order. Time is always passed in.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from router_agent.core.limiter import APPROACHING_BELOW, NEVER, DeploymentLimiter, TokenBucket
from router_agent.core.waitqueue import DEFAULT_PRIORITY, WaitQueue

SLACK = 1e-6  # float rounding in sums of fractional refills, far below one token

# Clock steps in milliseconds, so that sequences shrink to readable numbers.
STEPS = st.integers(0, 30_000).map(lambda ms: ms / 1000)


def window_overruns(events: list[tuple[float, float]], ends: list[int], capacity: float,
                    refill: float) -> list[tuple[int, int, float]]:
    """``events`` are ``(time, amount)`` in the order they happened. Windows from any event
    ``i`` to an event ``j`` in ``ends`` (indexes; what happened after ``j`` at the same
    instant is not in it) whose amounts exceed ``capacity + refill * (t_j - t_i)``:
    ``(i, j, amount)`` for each."""
    bad = []
    for j in ends:
        amount = 0.0
        for i in range(j, -1, -1):
            amount += events[i][1]
            if amount > capacity + refill * (events[j][0] - events[i][0]) + SLACK:
                bad.append((i, j, amount))
    return bad


# --------------------------------------------------------------------------- TokenBucket


def test_a_bucket_starts_full_and_refills_lazily_up_to_capacity():
    bucket = TokenBucket.per_minute(60, now=100.0)  # one per second
    assert (bucket.capacity, bucket.refill_per_s, bucket.level_at(100.0)) == (60.0, 1.0, 60.0)
    bucket.take(60, 100.0)
    assert bucket.level_at(100.0) == 0.0
    assert bucket.level_at(110.0) == 10.0
    assert bucket.level_at(1000.0) == 60.0  # never above capacity
    assert (bucket.level, bucket.updated) == (0.0, 100.0)  # a read stores nothing
    assert bucket.level_at(50.0) == 0.0  # time running backwards mints nothing
    bucket.give_back(1, 50.0)
    assert (bucket.level, bucket.updated) == (1.0, 100.0)


def test_wait_is_zero_when_it_fits_exact_when_not_and_never_above_capacity():
    bucket = TokenBucket.per_minute(600, now=0.0)  # ten per second
    assert bucket.wait_s(600, 0.0) == 0.0
    bucket.take(600, 0.0)
    wait = bucket.wait_s(25, 0.0)
    assert wait == pytest.approx(2.5)
    assert bucket.wait_s(25, wait) == 0.0  # waiting exactly that long is enough
    bucket.take(25, wait)
    assert bucket.wait_s(601, 0.0) == NEVER  # larger than the bucket: distinct from any wait
    assert bucket.wait_s(0, 0.0) == 0.0
    before = copy.copy(bucket)
    with pytest.raises(ValueError, match="does not fit"):  # a caller bug: nothing changes
        bucket.take(1, wait)
    assert bucket == before
    with pytest.raises(ValueError, match="negative"):
        bucket.wait_s(-1, 0.0)


def test_give_back_is_capped_charge_makes_debt_cap_at_only_lowers():
    bucket = TokenBucket.per_minute(60, now=0.0)
    bucket.take(10, 0.0)
    bucket.give_back(50, 0.0)
    assert bucket.level == 60.0
    bucket.charge(90, 0.0)
    assert bucket.level == -30.0
    assert bucket.wait_s(1, 0.0) == pytest.approx(31.0)  # the debt is paid back first
    bucket.cap_at(5, 0.0)
    assert bucket.level == -30.0  # a cap above the level changes nothing
    assert bucket.level_at(40.0) == 10.0
    bucket.cap_at(4, 40.0)
    assert bucket.level == 4.0
    bucket.cap_at(-3, 40.0)
    assert bucket.level == 0.0


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 100), per_minute=st.booleans(),
       attempts=st.lists(st.tuples(STEPS, st.integers(0, 110)), max_size=50))
def test_a_bucket_never_admits_more_than_capacity_plus_refill_over_any_window(capacity, per_minute,
                                                                              attempts):
    bucket = (TokenBucket.per_minute(capacity) if per_minute
              else TokenBucket(capacity=capacity, refill_per_s=capacity / 7.0, level=capacity))
    now, admitted = 0.0, []
    for dt, n in attempts:
        now += dt
        if bucket.wait_s(n, now) == 0.0:
            bucket.take(n, now)
            admitted.append((now, n))
        else:
            assert n > capacity or bucket.level_at(now) < n
    ends = list(range(len(admitted)))
    assert window_overruns(admitted, ends, capacity, bucket.refill_per_s) == []


# --------------------------------------------------------------------------- DeploymentLimiter


def test_admit_takes_a_request_and_its_tokens_or_nothing():
    limiter = DeploymentLimiter.per_minute(rpm=2, tpm=600)
    assert limiter.admit(0.0, 500) == 0.0
    assert limiter.admit(0.0, 200) == pytest.approx(10.0)  # tokens: 100 left, 10 per second
    assert (limiter.requests.level, limiter.tokens.level) == (1.0, 100.0)  # nothing taken
    assert limiter.admit(0.0, 100) == 0.0
    assert limiter.admit(0.0, 0) == pytest.approx(30.0)  # requests: 2 per minute
    assert limiter.admit(30.0, 0) == 0.0


def test_unlimited_dimensions_have_no_bucket():
    limiter = DeploymentLimiter.per_minute(rpm=None, tpm=None)
    assert limiter.admit(0.0, 10**9) == 0.0
    assert limiter.allows(0.0, 10**9)
    assert limiter.headroom(0.0) == 1.0
    only_requests = DeploymentLimiter.per_minute(rpm=1, tpm=None)
    assert only_requests.admit(0.0, 10**9) == 0.0
    assert only_requests.admit(0.0, 1) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="at least 1"):  # 0 is a mistake, not "unlimited"
        DeploymentLimiter.per_minute(rpm=0, tpm=None)


def test_more_tokens_than_a_minute_holds_can_never_be_admitted():
    limiter = DeploymentLimiter.per_minute(rpm=60, tpm=1000)
    assert limiter.admit(0.0, 1001) == NEVER
    assert not limiter.allows(1e9, 1001)
    assert (limiter.requests.level, limiter.tokens.level) == (60.0, 1000.0)


def test_settle_turns_usage_above_the_estimate_into_debt_and_refunds_the_rest():
    limiter = DeploymentLimiter.per_minute(rpm=None, tpm=60)  # one token per second
    assert limiter.admit(0.0, 60) == 0.0
    limiter.settle(0.0, estimated=60, actual=90)
    assert limiter.tokens.level == -30.0
    assert limiter.admit(0.0, 10) == pytest.approx(40.0)  # 30 of debt, then 10 more
    assert limiter.admit(40.0, 10) == 0.0
    limiter.settle(40.0, estimated=10, actual=0)
    assert limiter.tokens.level == 10.0
    limiter.settle(40.0, estimated=1000, actual=0)
    assert limiter.tokens.level == 60.0  # never above capacity


def test_refund_gives_back_the_request_and_its_tokens():
    limiter = DeploymentLimiter.per_minute(rpm=1, tpm=100)
    assert limiter.admit(0.0, 80) == 0.0
    assert not limiter.allows(0.0, 1)
    limiter.refund(0.0, 80)
    assert (limiter.requests.level, limiter.tokens.level) == (1.0, 100.0)
    assert limiter.admit(0.0, 100) == 0.0


def test_retry_after_blocks_and_is_never_shortened():
    limiter = DeploymentLimiter.per_minute(rpm=None, tpm=None)
    limiter.observe(10.0, retry_after_s=5.0)
    assert limiter.admit(10.0, 1) == pytest.approx(5.0)
    assert not limiter.allows(14.9, 1)
    assert limiter.headroom(12.0) == 0.0
    limiter.observe(11.0, retry_after_s=1.0)  # a shorter hint does not lift the block
    assert limiter.wait_s(12.0, 1) == pytest.approx(3.0)
    assert limiter.admit(15.0, 1) == 0.0
    assert limiter.headroom(15.0) == 1.0
    both = DeploymentLimiter.per_minute(rpm=60, tpm=60)
    assert both.admit(0.0, 60) == 0.0
    both.observe(0.0, retry_after_s=2.0)
    assert both.wait_s(0.0, 30) == pytest.approx(30.0)  # the longest of block and buckets
    assert both.wait_s(0.0, 1) == pytest.approx(2.0)


def test_remaining_headers_cap_the_buckets_and_never_raise_them():
    limiter = DeploymentLimiter.per_minute(rpm=100, tpm=10_000)
    for remaining_requests, remaining_tokens in ((3, 500), (90, 9000)):
        limiter.observe(0.0, remaining_requests=remaining_requests, remaining_tokens=remaining_tokens)
        assert (limiter.requests.level, limiter.tokens.level) == (3.0, 500.0)
    limiter = DeploymentLimiter.per_minute(rpm=None, tpm=None)
    limiter.observe(0.0, remaining_requests=0, remaining_tokens=0)  # no capacity to refill toward
    assert limiter.allows(0.0, 1)


def test_headroom_is_the_smaller_share_left():
    limiter = DeploymentLimiter.per_minute(rpm=10, tpm=1000)
    assert limiter.headroom(0.0) == 1.0
    assert limiter.admit(0.0, 500) == 0.0
    assert limiter.headroom(0.0) == pytest.approx(0.5)  # tokens 50 %, requests 90 %
    assert not limiter.approaching(0.0)
    assert limiter.admit(0.0, 350) == 0.0
    assert limiter.headroom(0.0) == pytest.approx(0.15)
    assert limiter.approaching(0.0) and APPROACHING_BELOW == 0.2
    limiter.settle(0.0, estimated=350, actual=2000)
    assert limiter.headroom(0.0) == 0.0  # debt: nothing left, never below zero


def test_reconfigure_carries_what_was_used_over():
    limiter = DeploymentLimiter.per_minute(rpm=60, tpm=None)
    for _ in range(30):
        assert limiter.admit(0.0, 0) == 0.0
    limiter.reconfigure(60, None, 0.0)
    assert limiter.requests.level == 30.0  # the same limits change nothing
    limiter.reconfigure(120, None, 0.0)
    assert (limiter.requests.capacity, limiter.requests.refill_per_s) == (120.0, 2.0)
    assert limiter.requests.level == 90.0  # raised: the difference is free at once
    limiter.reconfigure(20, 600, 0.0)
    assert limiter.requests.level == -10.0  # lowered below this minute's use: debt
    assert limiter.tokens.level == 600.0  # a new limit starts full
    limiter.observe(0.0, retry_after_s=9.0)
    limiter.reconfigure(None, 600, 0.0)
    assert limiter.requests is None
    assert limiter.wait_s(0.0, 1) == pytest.approx(9.0)  # the provider's block stays



def test_a_limiter_round_trips_through_json_for_state_snapshots():
    limiter = DeploymentLimiter.per_minute(rpm=60, tpm=1000, now=5.0)
    limiter.admit(6.0, 300)
    limiter.observe(6.0, retry_after_s=3.0)
    adapter = TypeAdapter(DeploymentLimiter)
    assert adapter.validate_json(adapter.dump_json(limiter)) == limiter


LIMITER_OPS = st.one_of(
    st.tuples(st.just("tick"), STEPS),
    st.tuples(st.just("admit"), st.integers(0, 1200)),
    st.tuples(st.just("settle"), st.integers(0, 1500)),
    st.tuples(st.just("refund"), st.just(0)),
    st.tuples(st.just("observe"), st.tuples(st.none() | st.integers(0, 120),
                                            st.none() | st.integers(0, 1200),
                                            st.none() | st.sampled_from([0.5, 3.0, 30.0]))),
)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 20), tpm=st.integers(1, 1000), ops=st.lists(LIMITER_OPS, max_size=60))
def test_a_limiter_never_lets_more_through_than_its_limits_over_any_window(rpm, tpm, ops):
    """Admissions, corrections of estimates (both ways), refunds of attempts that never ran
    and provider headers, in any order: over any window that ends at an admission, the
    requests let through (less those refunded) stay within ``rpm + rpm * W / 60`` and the
    tokens really used (estimates, corrections, refunds) within ``tpm + tpm * W / 60``.
    Meanwhile ``allows`` predicts ``admit`` and changes nothing."""
    limiter = DeploymentLimiter.per_minute(rpm, tpm)
    now = 0.0
    held: list[int] = []  # estimates of admitted attempts not yet settled or refunded
    requests: list[tuple[float, float]] = []  # (time, +1 admitted / -1 refunded)
    tokens: list[tuple[float, float]] = []  # (time, tokens used: estimates, corrections, refunds)
    admitted_at: list[tuple[int, int]] = []  # indexes of each admission in the two lists
    for op, arg in ops:
        if op == "tick":
            now += arg
        elif op == "admit":
            before = copy.deepcopy(limiter)
            predicted = limiter.allows(now, arg)
            assert limiter == before
            wait = limiter.admit(now, arg)
            assert predicted == (wait == 0.0)
            if wait == 0.0:
                held.append(arg)
                admitted_at.append((len(requests), len(tokens)))
                requests.append((now, 1))
                tokens.append((now, arg))
            else:
                assert limiter == before
                # Waiting what it said is enough (give or take float rounding).
                assert wait == NEVER or copy.deepcopy(limiter).admit(now + wait + 1e-9, arg) == 0.0
        elif held and op == "settle":
            estimate = held.pop(0)
            limiter.settle(now, estimate, arg)
            tokens.append((now, arg - estimate))
        elif held and op == "refund":
            estimate = held.pop()
            limiter.refund(now, estimate)
            requests.append((now, -1))
            tokens.append((now, -estimate))
        elif op == "observe":
            remaining_requests, remaining_tokens, retry_after = arg
            limiter.observe(now, retry_after_s=retry_after, remaining_requests=remaining_requests,
                            remaining_tokens=remaining_tokens)
    assert window_overruns(requests, [r for r, _ in admitted_at], rpm, rpm / 60) == []
    assert window_overruns(tokens, [t for _, t in admitted_at], tpm, tpm / 60) == []


@settings(max_examples=150, deadline=None)
@given(rpm=st.none() | st.integers(1, 50), tpm=st.none() | st.integers(1, 5000),
       used=st.integers(0, 60), dt=STEPS, tokens=st.integers(0, 6000),
       retry_after=st.none() | st.floats(0, 100), remaining_requests=st.none() | st.integers(-1, 100),
       remaining_tokens=st.none() | st.integers(-1, 10_000))
def test_observing_the_provider_never_loosens(rpm, tpm, used, dt, tokens, retry_after,
                                              remaining_requests, remaining_tokens):
    limiter = DeploymentLimiter.per_minute(rpm, tpm)
    for _ in range(used):
        limiter.admit(0.0, 50)
    before = copy.deepcopy(limiter)
    limiter.observe(dt, retry_after_s=retry_after, remaining_requests=remaining_requests,
                    remaining_tokens=remaining_tokens)
    for t in (dt, dt + 1.0, dt + 60.0):
        assert limiter.wait_s(t, tokens) >= before.wait_s(t, tokens)
        assert limiter.headroom(t) <= before.headroom(t)
        assert limiter.allows(t, tokens) <= before.allows(t, tokens)


# --------------------------------------------------------------------------- WaitQueue


@dataclass
class Waiter:
    """An opaque item, unhashable (a dataclass with ``eq``), like the shell's pending request."""

    name: str


def test_the_queue_serves_priority_then_deadline_then_arrival():
    queue = WaitQueue(max_size=10)
    late_high, early_low, early_high, twin = (Waiter(n) for n in ("late_high", "early_low",
                                                                   "early_high", "twin"))
    assert queue.push(late_high, 9, 50.0)
    assert queue.push(early_low, 1, 5.0)
    assert queue.push(early_high, 9, 10.0)
    assert queue.push(twin, 9, 10.0)  # same key as early_high: arrival decides
    assert len(queue) == 4 and queue.peek() is early_high and len(queue) == 4
    assert [queue.pop().name for _ in range(4)] == ["early_high", "twin", "late_high", "early_low"]
    assert queue.pop() is None and queue.peek() is None and len(queue) == 0


def test_the_queue_is_bounded_and_refuses_mistakes():
    queue = WaitQueue(max_size=2)
    a, b, c = Waiter("a"), Waiter("b"), Waiter("c")
    assert queue.push(a) and queue.push(b, DEFAULT_PRIORITY, 3.0)
    assert not queue.push(c)
    assert c not in queue and len(queue) == 2
    with pytest.raises(ValueError, match="already queued"):
        queue.push(a)
    queue.pop()
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="priority"):
            queue.push(c, bad, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        queue.push(c, 5, math.nan)
    assert queue.push(c)


def test_expired_takes_out_exactly_the_waiters_whose_deadline_passed():
    queue = WaitQueue(max_size=10)
    waiters = {t: Waiter(str(t)) for t in (3.0, 1.0, 2.0, 5.0)}
    for deadline, waiter in waiters.items():
        queue.push(waiter, 5, deadline)
    queue.remove(waiters[1.0])
    assert queue.next_deadline() == 2.0
    assert [w.name for w in queue.expired(3.0)] == ["2.0", "3.0"]  # the boundary counts as passed
    assert queue.expired(3.0) == []
    assert queue.next_deadline() == 5.0 and len(queue) == 1
    assert queue.pop() is waiters[5.0]
    assert queue.next_deadline() is None


def test_removing_many_keeps_the_heaps_small():
    queue = WaitQueue(max_size=10)
    keep = Waiter("keep")
    queue.push(keep, 0, 1e9)
    for i in range(5000):
        waiter = Waiter(str(i))
        assert queue.push(waiter, 9, float(i))
        assert queue.remove(waiter)
        assert not queue.remove(waiter)
    assert len(queue) == 1 and queue.peek() is keep
    assert len(queue._order) < 100 and len(queue._deadlines) < 100  # dead rows were compacted


QUEUE_OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 9), st.integers(0, 20)),
    st.tuples(st.just("pop"), st.just(0), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 100), st.just(0)),
    st.tuples(st.just("expire"), st.just(0), st.integers(0, 20)),
), max_size=80)


@settings(max_examples=150, deadline=None)
@given(max_size=st.integers(0, 12), ops=QUEUE_OPS)
def test_the_queue_matches_a_sorted_list(max_size, ops):
    """Against a plain list kept sorted by (priority desc, deadline asc, arrival)."""
    queue, model, seq = WaitQueue(max_size=max_size), [], 0
    for op, a, b in ops:
        if op == "push":
            seq += 1
            waiter = Waiter(str(seq))
            accepted = queue.push(waiter, a, float(b))
            assert accepted == (len(model) < max_size)
            if accepted:
                model.append(((-a, float(b), seq), waiter))
        elif op == "pop":
            model.sort(key=lambda row: row[0])
            expected = model.pop(0)[1] if model else None
            assert queue.pop() is expected
        elif op == "remove" and model:
            _, waiter = model.pop(a % len(model))
            assert queue.remove(waiter)
            assert waiter not in queue
        elif op == "expire":
            gone = [row for row in model if row[0][1] <= b]
            model = [row for row in model if row[0][1] > b]
            expected = [w for _, w in sorted(gone, key=lambda row: (row[0][1], row[0][2]))]
            assert queue.expired(float(b)) == expected
        assert len(queue) == len(model)
        model.sort(key=lambda row: row[0])
        assert queue.peek() is (model[0][1] if model else None)
        assert queue.next_deadline() == (min(row[0][1] for row in model) if model else None)
    assert [queue.pop() for _ in model] == [w for _, w in sorted(model, key=lambda row: row[0])]


@settings(max_examples=150, deadline=None)
@given(rpm=st.none() | st.integers(1, 20), tpm=st.none() | st.integers(1, 1000),
       ops=st.lists(LIMITER_OPS, max_size=40), probes=st.lists(st.floats(0, 90), min_size=1, max_size=4),
       tokens=st.integers(0, 1200))
def test_the_full_at_shortcut_reads_exactly_what_the_buckets_hold(rpm, tpm, ops, probes, tokens):
    """``headroom`` and ``allows`` skip the buckets from ``full_at`` on: after any writes, at
    any later time, they answer as a limiter that reads its buckets every time."""
    limiter = DeploymentLimiter.per_minute(rpm, tpm)
    now = 0.0
    held: list[int] = []
    for op, arg in ops:
        if op == "tick":
            now += arg
        elif op == "admit":
            if limiter.admit(now, arg) == 0.0:
                held.append(arg)
        elif held and op == "settle":
            limiter.settle(now, held.pop(0), arg)
        elif held and op == "refund":
            limiter.refund(now, held.pop())
        elif op == "observe":
            remaining_requests, remaining_tokens, retry_after = arg
            limiter.observe(now, retry_after_s=retry_after, remaining_requests=remaining_requests,
                            remaining_tokens=remaining_tokens)
        reading = copy.deepcopy(limiter)
        reading.full_at = math.inf  # never "full": every read goes to the buckets
        for later in probes:
            at = now + later
            assert limiter.headroom(at) == pytest.approx(reading.headroom(at), abs=1e-9)
            assert limiter.allows(at, tokens) == reading.allows(at, tokens)
