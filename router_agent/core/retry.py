"""Retries of a failed attempt: the backoff policy, the retry budget, and the decision (pure).

Writes nothing outside its own objects. The request shell holds one ``RetryPolicy`` (from
settings) and a ``RetryBudget``: one for the router, or one per deployment as Envoy keeps
one per upstream cluster (then one provider's outage cannot spend the others' retries). It
can ask ``after_failure`` what to do when an attempt fails.

Rules
-----
1. A retry goes to the *same* deployment, after a wait. Retry number ``attempt`` (1 = the
   first retry) waits ``rand * min(max_s, initial_s * multiplier ** (attempt - 1))``: full
   jitter, with ``rand`` in [0, 1) passed in, so many callers failing together do not
   retry together.
2. Retry-After is honoured: the wait is at least what the provider asked for.
3. At most ``max_retries`` retries per deployment per request.
4. A retry never outlasts the request's deadline: it is granted only when the wait plus
   ``min_attempt_s`` (the least time an attempt needs to be worth making) fits in what is
   left. So the waits granted to one request never sum to more than its remaining time.
5. No waiting while another candidate can take the request now: the shell goes to it.
6. The retry budget (rule 7) is asked last, and only for a retry that would otherwise be
   made, because asking records the retry.
7. ``RetryBudget``: a retry is admitted only while, counted over the sliding window,
   ``retries + 1 <= max(ratio * requests, min_retries_per_s * window_s)``. ``requests``
   are first attempts (``record_request`` once per request the budget covers, not per
   retry). The ratio caps retries at a share of recent traffic, so a provider outage adds at
   most that share of load to it instead of multiplying it; the floor lets a quiet
   deployment still retry. A refused retry is not recorded.
8. Whatever is not retried moves on: to the next candidate of the plan or the next model of
   its fallback chain, or the answer, when the error forbids a fallback or the plan is
   spent. That is the shell's walk; here it is one step, ``move_on``.

Theory of operation
-------------------
``after_failure`` classifies the failure into one *situation*, in the order of the table
below (the first that applies wins), and returns ``DECISIONS[situation]`` with the wait.
Nothing sleeps: the shell waits ``wait_s`` (on its clock, cancellable by the deadline) and
calls the same deployment again; it records the request in the budget before the first
attempt. ``RetryPolicy.delay`` and ``backoff`` are stamina's shape: keyword-only
settings, the attempt number and the randomness passed in.

The budget's window is ``buckets`` slots of ``window_s / buckets`` seconds; a slot is
reused (cleared) when time reaches it again. What counts is the slots of the last
``buckets`` slot periods, the current one included: between ``window_s - window_s /
buckets`` and ``window_s`` of history. A ``now`` earlier than the latest seen counts as the
latest, so clock readings out of order never clear newer slots.

Decisions
---------
| situation         | step    | when                                                      |
|-------------------|---------|-----------------------------------------------------------|
| deadline_passed   | stop    | nothing remains of the deadline: the shell answers timeout |
| not_retryable     | move_on | the same call cannot succeed later                        |
| candidate_ready   | move_on | another candidate can take it now (rule 5)                |
| retries_exhausted | move_on | ``attempt > max_retries`` (rule 3)                         |
| outlasts_deadline | move_on | the wait plus ``min_attempt_s`` exceeds what is left (rule 4) |
| budget_spent      | move_on | the deployment's retry budget refuses (rule 7)            |
| backoff           | retry   | wait ``wait_s``, then call the same deployment again      |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

Step = Literal["retry", "move_on", "stop"]

DECISIONS: dict[str, Step] = {
    "deadline_passed": "stop",
    "not_retryable": "move_on",
    "candidate_ready": "move_on",
    "retries_exhausted": "move_on",
    "outlasts_deadline": "move_on",
    "budget_spent": "move_on",
    "backoff": "retry",
}
"""``situation -> step``, in the order ``after_failure`` tests the situations."""


class RetryDecision(NamedTuple):
    step: Step
    situation: str
    """Why: a key of ``DECISIONS`` (for the attempt's record and the logs)."""
    wait_s: float = 0.0
    """Seconds to wait before the retry; 0 unless ``step == "retry"``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    initial_s: float = 0.2
    max_s: float = 10.0
    multiplier: float = 2.0
    max_retries: int = 2
    min_attempt_s: float = 0.25
    """The least time left for the call itself that makes a retry worth waiting for."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if self.max_retries < 0 or self.min_attempt_s < 0:
            raise ValueError("max_retries and min_attempt_s cannot be negative")

    def ceiling(self, attempt: int) -> float:
        """The largest wait before retry number ``attempt``: the un-jittered exponential."""
        if attempt < 1:
            raise ValueError(f"retries are numbered from 1, got {attempt}")
        # Compare exponents, not powers: multiplier ** attempt overflows a float long
        # before attempt is absurd.
        growth = (attempt - 1) * math.log(self.multiplier)
        if growth >= math.log(self.max_s / self.initial_s):
            return self.max_s
        return min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))

    def delay(self, attempt: int, rand: float) -> float:
        """Full jitter (rule 1): ``rand * ceiling(attempt)``, ``rand`` in [0, 1)."""
        if not 0.0 <= rand < 1.0:
            raise ValueError(f"rand must be in [0, 1), got {rand}")
        return rand * self.ceiling(attempt)

    def backoff(self, attempt: int, rand: float, *, retry_after_s: float | None = None,
                remaining_s: float) -> float | None:
        """The wait before retry ``attempt`` on the same deployment, or None when there is
        to be no such retry: too many already (rule 3), or it would outlast the deadline
        (rule 4). Honours Retry-After (rule 2)."""
        if attempt > self.max_retries:
            return None
        wait = max(self.delay(attempt, rand), retry_after_s or 0.0)
        if wait + self.min_attempt_s > remaining_s:
            return None
        return wait


class RetryBudget:
    """Retries at most a share of recent requests, with a floor (rule 7); Envoy's retry
    budget and gRPC's retry throttling in one bucketed sliding window."""

    __slots__ = ("_index", "_latest", "_requests", "_retries", "bucket_s", "min_retries_per_s",
                 "ratio", "window_s")

    def __init__(self, *, ratio: float = 0.2, min_retries_per_s: float = 5.0, window_s: float = 10.0,
                 buckets: int = 10) -> None:
        if ratio < 0 or min_retries_per_s < 0 or window_s <= 0 or buckets < 1:
            raise ValueError("need ratio >= 0, min_retries_per_s >= 0, window_s > 0, buckets >= 1")
        self.ratio = ratio
        self.min_retries_per_s = min_retries_per_s
        self.window_s = window_s
        self.bucket_s = window_s / buckets
        self._index = [-math.inf] * buckets  # which slot period each slot counts
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._latest = -math.inf

    @property
    def floor(self) -> float:
        """Retries always allowed per window, however little traffic there is."""
        return self.min_retries_per_s * self.window_s

    def record_request(self, now: float) -> None:
        """A first attempt went to the deployment."""
        self._requests[self._slot(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Admit and record one retry if the budget allows it; a refusal records nothing."""
        requests, retries = self.counts(now)
        if retries + 1 > max(self.ratio * requests, self.floor):
            return False
        self._retries[self._slot(now)] += 1
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, retries)`` in the window ending at ``now``. Read-only."""
        oldest = self._period(now) - len(self._index)
        requests = retries = 0
        for index, req, ret in zip(self._index, self._requests, self._retries, strict=True):
            if index > oldest:
                requests += req
                retries += ret
        return requests, retries

    def _period(self, now: float) -> float:
        return max(math.floor(now / self.bucket_s), self._latest)

    def _slot(self, now: float) -> int:
        period = self._period(now)
        self._latest = period
        slot = int(period % len(self._index))
        if self._index[slot] != period:  # time came round to this slot again: start it afresh
            self._index[slot] = period
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot


def after_failure(policy: RetryPolicy, budget: RetryBudget, now: float, *, attempt: int, retryable: bool,
                  candidate_ready: bool, rand: float, remaining_s: float,
                  retry_after_s: float | None = None) -> RetryDecision:
    """What to do now that an attempt on one deployment failed. ``attempt``: the number the
    retry would have (1 when the first call failed, 2 when the first retry did...).
    ``candidate_ready``: another candidate of the plan can take the request now.
    ``remaining_s``: what is left until the request's deadline."""
    if remaining_s <= 0:
        situation, wait = "deadline_passed", None
    elif not retryable:
        situation, wait = "not_retryable", None
    elif candidate_ready:
        situation, wait = "candidate_ready", None
    elif attempt > policy.max_retries:
        situation, wait = "retries_exhausted", None
    else:
        wait = policy.backoff(attempt, rand, retry_after_s=retry_after_s, remaining_s=remaining_s)
        if wait is None:
            situation = "outlasts_deadline"
        elif not budget.try_retry(now):
            situation, wait = "budget_spent", None
        else:
            situation = "backoff"
    return RetryDecision(DECISIONS[situation], situation, wait or 0.0)
