"""Rate limits per deployment (provider + model) and the queue of requests waiting for them (pure).

Writes nothing outside its own objects: the registry owns one ``DeploymentLimiter`` per
``(provider, model)`` in ``rate_limiters``.

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

``full_at`` makes the common read free: the time from which no block holds and both
buckets are full again if nothing is taken meanwhile. Every write recomputes it
(``_refresh``), so ``now >= full_at`` means headroom 1.0 and every request that fits a
bucket's capacity allowed; routing's loop over every candidate checks that one slot and
reads the buckets only for deployments actually in use near their limits. Code that
changes a bucket goes through the limiter's methods, never the fields.

The requests no candidate could take wait in a ``core.waitqueue.WaitQueue``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_MINUTE = 60.0
NEVER = math.inf
"""The wait for a request that can never fit (more tokens than the bucket holds)."""
EPSILON = 1e-9
"""Tokens of float rounding forgiven when deciding whether a request fits."""
APPROACHING_BELOW = 0.2
"""``model.rate_limit_approaching`` is ``headroom(now) < APPROACHING_BELOW``."""



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
    full_at: float = 0.0
    """From then on, unless something is taken, no block and both buckets full (kept by every write)."""

    def __post_init__(self) -> None:
        self._refresh()

    @classmethod
    def per_minute(cls, rpm: int | None, tpm: int | None, now: float = 0.0) -> DeploymentLimiter:
        """The limiter for configured limits (``None``: unlimited), buckets full."""
        return cls(requests=_resized(None, rpm, now), tokens=_resized(None, tpm, now))

    def _refresh(self) -> None:
        """Recompute ``full_at`` after a write."""
        at = self.blocked_until
        for bucket in (self.requests, self.tokens):
            if bucket is not None and bucket.level < bucket.capacity:
                refilled = bucket.updated + (bucket.capacity - bucket.level) / bucket.refill_per_s
                if refilled > at:  # noqa: PLR1730 - an if is cheaper than a call
                    at = refilled
        self.full_at = at

    # ------------------------------------------------------------------ admission

    def allows(self, now: float, tokens: int) -> bool:
        """Would ``admit(now, tokens)`` admit? Read-only; inlined for routing's hot loop."""
        if now >= self.full_at:
            return self.tokens is None or tokens <= self.tokens.capacity
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
        self.take(now, tokens)
        return 0.0

    def take(self, now: float, tokens: int) -> None:
        """Take one request of ``tokens`` that ``allows(now, tokens)`` has just said fits (the
        attempt chain's path: checked once, not again)."""
        for bucket, n in ((self.requests, 1), (self.tokens, tokens)):
            if bucket is not None:
                bucket._advance(now)
                bucket.level -= n
        self._refresh()

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
        self._refresh()

    def refund(self, now: float, tokens: int) -> None:
        """The admitted attempt never reached the provider: give back its request and tokens."""
        _check_count(tokens)
        if self.requests is not None:
            self.requests.give_back(1, now)
        if self.tokens is not None:
            self.tokens.give_back(tokens, now)
        self._refresh()

    def observe(self, now: float, *, retry_after_s: float | None = None,
                remaining_requests: int | None = None, remaining_tokens: int | None = None) -> None:
        """Tighten from the provider's answer (rule 6): never loosens beyond what is here."""
        if retry_after_s is not None and retry_after_s > 0:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        if remaining_requests is not None and self.requests is not None:
            self.requests.cap_at(remaining_requests, now)
        if remaining_tokens is not None and self.tokens is not None:
            self.tokens.cap_at(remaining_tokens, now)
        self._refresh()

    def reconfigure(self, rpm: int | None, tpm: int | None, now: float) -> None:
        """New limits at run time; what was used this minute carries over (rule 7)."""
        self.requests = _resized(self.requests, rpm, now)
        self.tokens = _resized(self.tokens, tpm, now)
        self._refresh()

    # ------------------------------------------------------------------ reads

    def headroom(self, now: float) -> float:
        """The smaller remaining share of the two buckets in [0, 1]; 1.0 unlimited, 0.0 blocked."""
        if now >= self.full_at:
            return 1.0
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
