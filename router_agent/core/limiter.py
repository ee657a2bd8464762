"""Rate limits per deployment (provider + model) and the queue of requests waiting for them (pure).

Writes nothing outside its own objects: the registry owns one ``DeploymentLimiter`` per
``(provider, model)`` in ``rate_limiters``; the request shell owns the ``WaitQueue``.

Rules
-----
1. A deployment has up to two token buckets: ``requests`` (capacity = requests per minute)
   and ``tokens`` (capacity = tokens per minute). Each starts full and refills evenly at
   capacity / 60 per second. A limit that is not configured (``None``) is no bucket: that
   dimension is unlimited.
2. Burst: a full bucket lets the whole minute's allowance go at once. So any window of
   ``W`` seconds admits at most ``capacity + capacity * W / 60``: the long-run rate is the
   configured figure, a worst-case sliding minute sees twice it. A smaller burst would leave
   allowance unused after a quiet spell; where the provider counts more strictly, its own
   headers tighten the bucket (rule 6) and its 429 with Retry-After blocks it.
3. ``admit(now, tokens)`` is all or nothing. It admits (returns ``0.0``, and takes one
   request and ``tokens`` from the buckets) only when no provider block is in force and
   both buckets hold enough; otherwise it takes nothing and returns the seconds until it
   could admit: the largest of the block's remainder and each bucket's refill time.
   ``tokens`` above the tokens-per-minute capacity can never fit: the wait is ``math.inf``
   (``NEVER``), and the caller sends the request elsewhere or answers at once.
4. ``settle(now, estimated, actual)``: tokens are estimated before the call and corrected
   after it. Usage above the estimate is charged as debt (the level may go below zero and
   later requests wait until it is paid back by the refill); usage below it is given back,
   never above capacity.
5. ``refund(now, tokens)``: an attempt that never reached the provider gives back both.
6. ``observe(now, ...)`` only tightens, never loosens: Retry-After extends the block (never
   shortens it); remaining-requests / remaining-tokens cap a bucket's level (never raise it).
   A dimension with no configured limit ignores its remaining-* header: there is no capacity
   to refill toward, and the provider's 429 still blocks through Retry-After.
7. ``reconfigure(rpm, tpm)`` (``provider_update`` at run time): what was used carries over.
   A bucket keeps ``capacity - level`` as used, so its new level is ``new capacity - used``:
   raising a limit frees the difference at once, lowering it below what was used this
   minute leaves debt. A new limit starts full; a removed one is dropped. The block stays.
8. ``allows``, ``wait_s`` and ``headroom`` are reads: they change nothing.
   ``allows(now, t)`` is exactly ``admit(now, t) == 0.0`` on a copy.

Theory of operation
-------------------
Refill is lazy. A bucket stores ``level`` at ``updated``; its level at ``now`` is
``min(capacity, level + (now - updated) * refill_per_s)``. A read computes that and stores
nothing; a write stores it first, then changes it. A ``now`` earlier than ``updated`` counts
as no time passed: clock readings arriving out of order never mint tokens. Nothing here
sleeps or reads a clock: the shell waits the returned seconds, or routes elsewhere.

Levels are floats (refill is fractional); ``EPSILON`` of a token absorbs rounding, so that
waiting the returned ``wait_s`` admits instead of asking for 1e-12 s more.

Routing filters candidates with ``allows`` (~250 ns: slot reads, no calls into the
buckets) and reads ``headroom`` (as cheap): ``model.rate_limit_approaching`` is
``headroom(now) < APPROACHING_BELOW``. A blocked deployment has no headroom.

``WaitQueue`` holds requests no candidate could take: highest ``priority`` first, then the
earliest deadline, then arrival order. The shell re-tries the head when capacity frees,
takes out whatever ``expired(now)`` returns (answering those ``rate_limited``), and refuses
to queue a request whose wait outlasts its deadline (answering at once, with the wait).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

SECONDS_PER_MINUTE = 60.0
NEVER = math.inf
"""The wait for a request that can never fit (more tokens than the bucket holds)."""
EPSILON = 1e-9
"""Tokens of float rounding forgiven when deciding whether a request fits."""
APPROACHING_BELOW = 0.2
"""``model.rate_limit_approaching`` is ``headroom(now) < APPROACHING_BELOW``."""

PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = 0, 9, 5
"""``llm_request.priority``: 0 (lowest) to 9 (highest); a request that sets none is 5."""


def _check_count(n: float) -> None:
    if n < 0:
        raise ValueError(f"a token or request count cannot be negative, got {n}")


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled at ``refill_per_s``; ``level`` as of ``updated``."""

    capacity: float
    refill_per_s: float
    level: float
    updated: float = 0.0

    @classmethod
    def per_minute(cls, limit: float, now: float = 0.0) -> TokenBucket:
        """A full bucket of ``limit`` refilled evenly over a minute (rules 1 and 2)."""
        if limit <= 0:
            raise ValueError(f"a per-minute limit must be positive, got {limit}")
        return cls(capacity=float(limit), refill_per_s=limit / SECONDS_PER_MINUTE,
                   level=float(limit), updated=now)

    # ------------------------------------------------------------------ reads

    def level_at(self, now: float) -> float:
        """The level at ``now`` after the lazy refill (may be negative: debt)."""
        elapsed = now - self.updated
        if elapsed <= 0.0:
            return self.level
        return min(self.capacity, self.level + elapsed * self.refill_per_s)

    def wait_s(self, n: float, now: float) -> float:
        """Seconds until ``n`` fits: 0 when it fits now, ``NEVER`` when it never will."""
        _check_count(n)
        if n > self.capacity:
            return NEVER
        missing = n - self.level_at(now)
        if missing <= EPSILON:
            return 0.0
        return missing / self.refill_per_s if self.refill_per_s > 0 else NEVER

    # ------------------------------------------------------------------ writes

    def take(self, n: float, now: float) -> None:
        """Take ``n`` that fits now; taking what does not fit is a caller bug and raises."""
        if self.wait_s(n, now) != 0.0:
            raise ValueError(f"{n} does not fit: the level is {self.level_at(now)}")
        self._advance(now)
        self.level -= n

    def give_back(self, n: float, now: float) -> None:
        """Return ``n`` taken earlier (a refund, an overestimate), never above capacity."""
        _check_count(n)
        self._advance(now)
        self.level = min(self.capacity, self.level + n)

    def charge(self, n: float, now: float) -> None:
        """Use ``n`` more than was taken: the level may go negative (debt, rule 4)."""
        _check_count(n)
        self._advance(now)
        self.level -= n

    def cap_at(self, n: float, now: float) -> None:
        """The provider says only ``n`` remain: lower the level to it, never raise it."""
        n = max(0.0, float(n))
        if n < self.level_at(now):  # otherwise leave it be: not even a rounding step looser
            self._advance(now)
            self.level = n

    def _advance(self, now: float) -> None:
        level = self.level_at(now)
        self.updated = max(self.updated, now)
        self.level = level


@dataclass(slots=True)
class DeploymentLimiter:
    """One deployment's limits: a request bucket, a token bucket, the provider's block."""

    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    blocked_until: float = 0.0
    """Monotonic time until which the provider asked for no calls (Retry-After)."""

    @classmethod
    def per_minute(cls, rpm: int | None, tpm: int | None, now: float = 0.0) -> DeploymentLimiter:
        """The limiter for configured limits (``None``: unlimited), buckets full."""
        return cls(requests=_resized(None, rpm, now), tokens=_resized(None, tpm, now))

    # ------------------------------------------------------------------ admission

    def allows(self, now: float, tokens: int) -> bool:
        """Would ``admit(now, tokens)`` admit? Read-only; inlined for routing's hot loop."""
        if now < self.blocked_until:
            return False
        bucket = self.requests
        if bucket is not None:
            level, elapsed = bucket.level, now - bucket.updated
            if elapsed > 0.0:
                level += elapsed * bucket.refill_per_s
            if 1.0 - level > EPSILON:  # as wait_s decides; no cap needed: 1 <= capacity
                return False
        bucket = self.tokens
        if bucket is not None:
            if tokens > bucket.capacity:
                return False
            level, elapsed = bucket.level, now - bucket.updated
            if elapsed > 0.0:
                level += elapsed * bucket.refill_per_s
            if tokens - level > EPSILON:
                return False
        return True

    def wait_s(self, now: float, tokens: int) -> float:
        """Seconds until ``admit(now, tokens)`` could admit; 0 now, ``NEVER`` never. Read-only."""
        _check_count(tokens)
        wait = self.blocked_until - now if now < self.blocked_until else 0.0
        if self.requests is not None:
            wait = max(wait, self.requests.wait_s(1, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_s(tokens, now))
        return wait

    def admit(self, now: float, tokens: int) -> float:
        """Admit one request of ``tokens`` (returns 0.0, both taken) or return the wait (rule 3)."""
        wait = self.wait_s(now, tokens)
        if wait:
            return wait
        for bucket, n in ((self.requests, 1), (self.tokens, tokens)):
            if bucket is not None:  # checked above: take without checking again
                bucket._advance(now)
                bucket.level -= n
        return 0.0

    # ------------------------------------------------------------------ corrections

    def settle(self, now: float, estimated: int, actual: int) -> None:
        """Correct the token bucket by the real usage: debt above the estimate, refund below."""
        _check_count(estimated)
        _check_count(actual)
        if self.tokens is None:
            return
        if actual > estimated:
            self.tokens.charge(actual - estimated, now)
        elif actual < estimated:
            self.tokens.give_back(estimated - actual, now)

    def refund(self, now: float, tokens: int) -> None:
        """The admitted attempt never reached the provider: give back its request and tokens."""
        _check_count(tokens)
        if self.requests is not None:
            self.requests.give_back(1, now)
        if self.tokens is not None:
            self.tokens.give_back(tokens, now)

    def observe(self, now: float, *, retry_after_s: float | None = None,
                remaining_requests: int | None = None, remaining_tokens: int | None = None) -> None:
        """Tighten from the provider's answer (rule 6): never loosens beyond what is here."""
        if retry_after_s is not None and retry_after_s > 0:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        if remaining_requests is not None and self.requests is not None:
            self.requests.cap_at(remaining_requests, now)
        if remaining_tokens is not None and self.tokens is not None:
            self.tokens.cap_at(remaining_tokens, now)

    def reconfigure(self, rpm: int | None, tpm: int | None, now: float) -> None:
        """New limits at run time; what was used this minute carries over (rule 7)."""
        self.requests = _resized(self.requests, rpm, now)
        self.tokens = _resized(self.tokens, tpm, now)

    # ------------------------------------------------------------------ reads

    def headroom(self, now: float) -> float:
        """The smaller remaining share of the two buckets in [0, 1]; 1.0 unlimited, 0.0 blocked."""
        if now < self.blocked_until:
            return 0.0
        share = 1.0
        for bucket in (self.requests, self.tokens):
            if bucket is not None:  # level_at, inlined: routing reads this per candidate
                level, elapsed = bucket.level, now - bucket.updated
                if elapsed > 0.0:
                    level += elapsed * bucket.refill_per_s
                if level < share * bucket.capacity:
                    share = level / bucket.capacity
        return max(0.0, share)

    def approaching(self, now: float) -> bool:
        """``model.rate_limit_approaching``: less than ``APPROACHING_BELOW`` of a limit is left."""
        return self.headroom(now) < APPROACHING_BELOW


def _resized(bucket: TokenBucket | None, limit: int | None, now: float) -> TokenBucket | None:
    if limit is None:
        return None
    if limit < 1:
        raise ValueError(f"a per-minute limit is at least 1 (None: unlimited), got {limit}")
    if bucket is None:
        return TokenBucket.per_minute(limit, now)
    used = bucket.capacity - bucket.level_at(now)
    fresh = TokenBucket.per_minute(limit, max(now, bucket.updated))
    fresh.level = min(fresh.capacity, fresh.capacity - used)
    return fresh


# --------------------------------------------------------------------------- the wait queue


@dataclass(slots=True)
class _Entry:
    item: Any
    deadline: float
    live: bool = True


class WaitQueue:
    """Requests waiting for rate-limit capacity: highest priority, then earliest deadline, then
    arrival first. Bounded: ``push`` refuses (False) when ``max_size`` are waiting.

    Two heaps over the same entries (by serving order, and by deadline for ``expired``), with
    lazy deletion: ``remove`` marks an entry dead and the heaps drop dead entries when they
    reach the top, or all at once when dead ones outnumber the live. A heap row ends in a
    unique arrival number before the entry, so entries are never compared. Items are opaque
    and tracked by identity, so they need not be hashable.
    """

    __slots__ = ("_deadlines", "_entries", "_order", "_seq", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size cannot be negative, got {max_size}")
        self.max_size = max_size
        self._order: list[tuple[int, float, int, _Entry]] = []
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._entries: dict[int, _Entry] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._entries

    def push(self, item: Any, priority: int = DEFAULT_PRIORITY, deadline: float = math.inf) -> bool:
        """Queue ``item``; False (nothing queued) when full. Queuing it twice is a caller bug."""
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be {PRIORITY_MIN}-{PRIORITY_MAX}, got {priority}")
        if math.isnan(deadline):  # NaN would corrupt both heaps' order
            raise ValueError("deadline is NaN")
        if id(item) in self._entries:
            raise ValueError("this item is already queued")
        if len(self._entries) >= self.max_size:
            return False
        self._seq += 1
        entry = _Entry(item, deadline)
        self._entries[id(item)] = entry
        heapq.heappush(self._order, (-priority, deadline, self._seq, entry))
        heapq.heappush(self._deadlines, (deadline, self._seq, entry))
        return True

    def peek(self) -> Any:
        """The item ``pop`` would return, left queued; None when empty."""
        heap = self._order
        while heap and not heap[0][3].live:
            heapq.heappop(heap)
        return heap[0][3].item if heap else None

    def pop(self) -> Any:
        """Take the first item in serving order; None when empty."""
        heap = self._order
        while heap:
            entry = heapq.heappop(heap)[3]
            if entry.live:
                self._forget(entry)
                self._compact_if_mostly_dead()
                return entry.item
        return None

    def remove(self, item: Any) -> bool:
        """Take ``item`` out wherever it is (its caller went away); False if it was not queued."""
        entry = self._entries.get(id(item))
        if entry is None:
            return False
        self._forget(entry)
        self._compact_if_mostly_dead()
        return True

    def expired(self, now: float) -> list[Any]:
        """Remove and return, earliest deadline first, every item whose deadline is ``<= now``."""
        out = []
        heap = self._deadlines
        while heap and (heap[0][0] <= now or not heap[0][2].live):
            entry = heapq.heappop(heap)[2]
            if entry.live:
                self._forget(entry)
                out.append(entry.item)
        if out:
            self._compact_if_mostly_dead()
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline waiting: when the shell should next call ``expired``."""
        heap = self._deadlines
        while heap and not heap[0][2].live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _forget(self, entry: _Entry) -> None:
        entry.live = False
        del self._entries[id(entry.item)]

    def _compact_if_mostly_dead(self) -> None:
        # Dead rows far from the top would otherwise pile up under push/remove churn.
        live = len(self._entries)
        if len(self._order) > 2 * live + 32:
            self._order = [row for row in self._order if row[3].live]
            heapq.heapify(self._order)
        if len(self._deadlines) > 2 * live + 32:
            self._deadlines = [row for row in self._deadlines if row[2].live]
            heapq.heapify(self._deadlines)
