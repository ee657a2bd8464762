"""Circuit breaker, one per deployment (provider + model) and one per provider for failures
that condemn the whole endpoint, as a sans-io state machine.

Rules
-----
1. ``closed`` admits every attempt. It opens on ``threshold`` consecutive failures, or when the
   sliding window (``window_s`` in ``WINDOW_BUCKETS`` buckets) holds at least
   ``min_requests`` results and the failed share reaches ``failure_ratio`` (0 disables the
   window). Only results reported while closed fill the window; opening empties it.
2. ``open`` refuses every attempt until ``open_until`` (the boundary itself counts as over).
   The next attempt is a *probe*, and the breaker goes ``half_open``.
3. At most ``half_open_probes`` probes are outstanding at any time, in any state. While every
   slot is taken, an ``open`` or ``half_open`` breaker refuses: half-open never lets ordinary
   traffic through, only probes.
4. A success while ``open`` or ``half_open`` (a probe's, or a late one) counts toward
   ``success_threshold``; reaching it closes the breaker and resets ``failures``,
   ``successes`` and the cooldown. Below it a half-open breaker stays half-open and the freed
   slot lets the next probe through. A success while ``closed`` resets ``failures``.
5. Any failure while ``open`` or ``half_open`` (re)opens it: ``open_until = now +
   current_cooldown_s()``, always fresh, never an older, shorter deadline. The cooldown is
   ``cooldown_s`` times ``cooldown_multiplier`` per recovery round (each entry into
   ``half_open``) since the last close, capped at ``max_cooldown_s``: a failed recovery
   lengthens the next cooldown once, however many of its probes fail.
6. When every candidate refuses, the caller picks the one whose ``retry_at`` is soonest
   (``earliest()``) and calls ``process_forced_probe(now)``: an ``open`` breaker with a free
   slot admits a probe before its cooldown ends. It takes a slot like any probe (rule 3).
7. An abandoned attempt (the caller's deadline expired, shutdown cancelled it) is not the
   deployment's fault: nothing is counted, and an abandoned probe gives its slot back.
8. The caller hands back the admission it was given. Reporting a ``"refused"`` attempt, or a
   ``"probe"`` when none is outstanding, is a caller bug and raises ``BreakerError``; so does
   any ``(state, event)`` pair that ``TRANSITIONS`` does not list.

Theory of operation
-------------------
Each method classifies what happened into one *event*, looks the next state up in
``TRANSITIONS`` (a missing pair raises before anything is changed), then applies the
bookkeeping the event implies. Time is passed in (``now``, monotonic seconds); nothing here
sleeps or reads a clock.

``process_attempt(now)`` claims passage and returns an ``Admission``: ``"admitted"``,
``"probe"`` or ``"refused"``; whatever was admitted is later reported exactly once, with that
admission, through ``process_success``, ``process_failure`` or ``process_abandon``.
``allows(now)`` answers without claiming anything (routing filters with it): it equals
``process_attempt(now) != "refused"`` on a copy. ``retry_at(now)`` is when the breaker next
admits: ``now``, ``open_until`` while cooling down, or infinity while every probe slot is
taken (only a probe's report frees one); ``process_forced_probe`` admits when it is finite.

The probe slots (``probes_in_flight``) are kept beside the state, not folded into it:
requests admitted earlier keep reporting after the state has moved on, and only a probe's
own report (success, failure or abandon) releases its slot. A slow request admitted while
closed may fail after a probe went out: fresh evidence that reopens the breaker, but the
probe keeps its slot, so there are never more than ``half_open_probes``. It may instead
succeed: that counts (rule 4) and may close the breaker, and the probe's later result is
counted like any result in the state it finds. An abandoned probe frees its slot and leaves
the deadline alone: half-open, the next attempt is the new probe.

State changes are not returned: a caller that publishes them (``provider_health``) compares
``state`` before and after a call; ``changed_at`` is when it last changed. The closed path
runs on every request: a few attribute reads, one window bucket bumped in place (so copy with
``model_copy(deep=True)`` before reporting results to a copy), no pydantic field write
unless a value changes.

Transitions
-----------
Attempt events (the last column is the admission returned) and result events. The tests
check this table and ``TRANSITIONS`` against each other.

| state     | event                   | next      | admission / effect                              |
|-----------|-------------------------|-----------|-------------------------------------------------|
| closed    | attempt                 | closed    | admitted                                        |
| closed    | success                 | closed    | failures = 0, window counts a success           |
| closed    | failure_below_threshold | closed    | failures += 1, window counts a failure          |
| closed    | failure_at_threshold    | open      | failures += 1, fresh deadline, window emptied   |
| closed    | failure_over_ratio      | open      | failures += 1, fresh deadline, window emptied   |
| closed    | abandoned               | closed    | nothing counted                                 |
| closed    | probe_abandoned         | closed    | probe slot freed                                |
| open      | attempt_in_cooldown     | open      | refused                                         |
| open      | attempt_while_probing   | open      | refused (every probe slot is taken)             |
| open      | cooldown_over           | half_open | probe (slot claimed, a recovery round starts)   |
| open      | forced_probe            | half_open | probe before the deadline (all others refuse)   |
| open      | success_below_threshold | open      | successes += 1 (a late success)                 |
| open      | success_at_threshold    | closed    | failures = successes = rounds = 0               |
| open      | failure                 | open      | failures += 1, successes = 0, fresh deadline    |
| open      | abandoned               | open      | nothing counted                                 |
| open      | probe_abandoned         | open      | probe slot freed, deadline unchanged            |
| half_open | attempt_while_probing   | half_open | refused (every probe slot is taken)             |
| half_open | probe_slot_free         | half_open | probe (slot claimed)                            |
| half_open | success_below_threshold | half_open | successes += 1: the next attempt may probe      |
| half_open | success_at_threshold    | closed    | failures = successes = rounds = 0               |
| half_open | failure                 | open      | failures += 1, successes = 0, fresh deadline    |
| half_open | abandoned               | half_open | nothing counted                                 |
| half_open | probe_abandoned         | half_open | probe slot freed: the next attempt may probe    |

A success or failure reported with ``"probe"`` also frees its probe slot, in any state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

CircuitState = Literal["closed", "open", "half_open"]
Admission = Literal["refused", "admitted", "probe"]
K = TypeVar("K")

WINDOW_BUCKETS = 10
"""The failure-ratio window is this many buckets of ``window_s / WINDOW_BUCKETS`` each."""

COUNTS_AGAINST_DEPLOYMENT = frozenset({"server_error", "overloaded", "timeout", "connection_error", "auth_error",
                                       "not_found", "provider_error"})
"""Error codes (``signals.types.ErrorCode``) that say something about the deployment; the
caller's own mistakes do not, and ``rate_limited`` is the rate limiter's business."""

CONDEMNS_PROVIDER = frozenset({"connection_error", "auth_error"})
"""Codes that condemn the whole endpoint: they also count against the provider's breaker."""


def counts_against_deployment(code: str) -> bool:
    """Is a failure with this error code a breaker failure of the deployment?"""
    return code in COUNTS_AGAINST_DEPLOYMENT


def condemns_provider(code: str) -> bool:
    """Does a failure with this error code also count against the per-provider breaker?"""
    return code in CONDEMNS_PROVIDER


def earliest(breakers: Iterable[tuple[K, Breaker]], now: float) -> K | None:
    """Among breakers that all refuse, the key of the one that will admit soonest (ties: the
    first given), or None when every one has all its probe slots taken. The caller then
    claims a probe on it with ``process_forced_probe`` rather than failing blind."""
    best_key, best_at = None, math.inf
    for key, breaker in breakers:
        at = breaker.retry_at(now)
        if at < best_at:
            best_key, best_at = key, at
    return best_key


BREAKER_SETTINGS = ("failure_ratio", "window_s", "min_requests", "half_open_probes", "success_threshold",
                    "cooldown_s", "cooldown_multiplier", "max_cooldown_s")


def new_breaker(settings: Any) -> Breaker:
    """A closed breaker with the settings of a ``CircuitBreakerConfig`` (the same names, but
    ``failure_threshold`` for ``threshold``); duck-typed, so the core imports no config."""
    return Breaker(threshold=settings.failure_threshold, **{n: getattr(settings, n) for n in BREAKER_SETTINGS})


class BreakerError(Exception):
    """An event the breaker's table does not allow (a caller bug)."""


TRANSITIONS: dict[tuple[CircuitState, str], CircuitState] = {
    ("closed", "attempt"): "closed",
    ("closed", "success"): "closed",
    ("closed", "failure_below_threshold"): "closed",
    ("closed", "failure_at_threshold"): "open",
    ("closed", "failure_over_ratio"): "open",
    ("closed", "abandoned"): "closed",
    ("closed", "probe_abandoned"): "closed",
    ("open", "attempt_in_cooldown"): "open",
    ("open", "attempt_while_probing"): "open",
    ("open", "cooldown_over"): "half_open",
    ("open", "forced_probe"): "half_open",
    ("open", "success_below_threshold"): "open",
    ("open", "success_at_threshold"): "closed",
    ("open", "failure"): "open",
    ("open", "abandoned"): "open",
    ("open", "probe_abandoned"): "open",
    ("half_open", "attempt_while_probing"): "half_open",
    ("half_open", "probe_slot_free"): "half_open",
    ("half_open", "success_below_threshold"): "half_open",
    ("half_open", "success_at_threshold"): "closed",
    ("half_open", "failure"): "open",
    ("half_open", "abandoned"): "half_open",
    ("half_open", "probe_abandoned"): "half_open",
}
"""``(state, event) -> next state``. A pair not listed is illegal and raises ``BreakerError``."""

ADMISSIONS: dict[str, Admission] = {
    "attempt": "admitted",
    "attempt_in_cooldown": "refused",
    "attempt_while_probing": "refused",
    "cooldown_over": "probe",
    "forced_probe": "probe",
    "probe_slot_free": "probe",
}
"""What ``process_attempt`` / ``process_forced_probe`` return for each attempt event."""


def _empty_window() -> list[int]:
    return [0] * WINDOW_BUCKETS


class Breaker(BaseModel):
    # Settings, as the rules describe them (CircuitBreakerConfig carries the same names).
    threshold: int = Field(5, ge=1)
    failure_ratio: float = Field(0.5, ge=0, le=1)
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(20, ge=1)
    half_open_probes: int = Field(1, ge=1)
    success_threshold: int = Field(1, ge=1)
    cooldown_s: float = Field(30.0, gt=0)
    cooldown_multiplier: float = Field(2.0, ge=1)
    max_cooldown_s: float = Field(300.0, gt=0)

    # State.
    state: CircuitState = "closed"
    failures: int = 0
    """Consecutive failures."""
    successes: int = 0
    """Successes since the breaker opened, toward ``success_threshold``."""
    opened_at: float = 0.0
    open_until: float = 0.0
    changed_at: float = 0.0
    probes_in_flight: int = 0
    recovery_rounds: int = 0
    """Times the breaker went half-open since it last closed: the cooldown's exponent."""
    window_ok: list[int] = Field(default_factory=_empty_window)
    window_failed: list[int] = Field(default_factory=_empty_window)
    window_epoch: int = 0
    """The bucket number (``now // bucket width``) of the newest bucket written."""

    @model_validator(mode="before")
    @classmethod
    def _accept_single_probe_flag(cls, data: Any) -> Any:  # from before several probes
        if isinstance(data, dict) and "probe_in_flight" in data:
            data = dict(data)
            data.setdefault("probes_in_flight", int(bool(data.pop("probe_in_flight"))))
        return data

    @model_validator(mode="after")
    def _check(self) -> Breaker:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(f"max_cooldown_s ({self.max_cooldown_s}) is below cooldown_s ({self.cooldown_s})")
        if len(self.window_ok) != WINDOW_BUCKETS or len(self.window_failed) != WINDOW_BUCKETS:
            raise ValueError(f"the window has {WINDOW_BUCKETS} buckets")
        if "open_until" not in self.model_fields_set and self.state != "closed":
            self.open_until = self.opened_at + self.current_cooldown_s()  # given opened_at only
        return self

    @property
    def probe_in_flight(self) -> bool:
        """Is any probe outstanding?"""
        return self.probes_in_flight > 0

    def current_cooldown_s(self) -> float:
        """The cooldown the next (re)open uses: grown per recovery round, capped."""
        return min(self.cooldown_s * self.cooldown_multiplier ** self.recovery_rounds, self.max_cooldown_s)

    # ------------------------------------------------------------------ attempts

    def allows(self, now: float) -> bool:
        """Would ``process_attempt(now)`` let a request through? Read-only: claims nothing."""
        event = self._attempt_event(now)
        self._next(event)
        return ADMISSIONS[event] != "refused"

    def retry_at(self, now: float) -> float:
        """When it next admits: ``now``, ``open_until``, or ``inf`` while every slot is taken."""
        if self.state == "closed":
            return now
        if self.probes_in_flight >= self.half_open_probes:
            return math.inf
        return self.open_until if self.state == "open" and now < self.open_until else now

    def process_attempt(self, now: float) -> Admission:
        """Claim passage for one request: ``"admitted"``, ``"probe"`` or ``"refused"``."""
        return self._admit(self._attempt_event(now), now)

    def process_forced_probe(self, now: float) -> Admission:
        """Like ``process_attempt``, but an open breaker still cooling down admits a probe if a
        slot is free: for the one ``earliest()`` picked when every candidate refuses."""
        event = self._attempt_event(now)
        if event == "attempt_in_cooldown" and self.probes_in_flight < self.half_open_probes:
            event = "forced_probe"
        return self._admit(event, now)

    # ------------------------------------------------------------------ results

    def process_success(self, admission: Admission, now: float) -> None:
        """The deployment answered: failures reset, or one more success toward closing."""
        self._check_held(admission, "success")
        if self.state == "closed":
            state = self._next("success")
            if self.failures:
                self.failures = 0
            if self.failure_ratio:
                self._count(now, self.window_ok)
        else:
            successes = self.successes + 1
            at_threshold = successes >= self.success_threshold
            state = self._next("success_at_threshold" if at_threshold else "success_below_threshold")
            if state == "closed":
                self.failures = self.successes = self.recovery_rounds = 0
            else:
                self.successes = successes
        self._enter(state, now)
        if admission == "probe":
            self.probes_in_flight -= 1

    def process_failure(self, admission: Admission, now: float) -> None:
        """The deployment failed this attempt (an error that counts, or its own timeout)."""
        self._check_held(admission, "failure")
        failures = self.failures + 1
        was_closed = self.state == "closed"
        if not was_closed:
            event = "failure"
        elif failures >= self.threshold:
            event = "failure_at_threshold"
        elif self.failure_ratio and self._ratio_reached_with_one_more_failure(now):
            event = "failure_over_ratio"
        else:
            event = "failure_below_threshold"
        state = self._next(event)
        if state == "open":
            self.opened_at = now
            self.open_until = now + self.current_cooldown_s()
            self.successes = 0
            if was_closed:  # new lists, not zeroed in place: a shallow copy keeps its own
                self.window_ok, self.window_failed = _empty_window(), _empty_window()
        elif was_closed and self.failure_ratio:
            self._count(now, self.window_failed)
        self._enter(state, now)
        self.failures = failures
        if admission == "probe":
            self.probes_in_flight -= 1

    def process_abandon(self, admission: Admission) -> None:
        """The attempt ended through no fault of the deployment: count nothing, free a probe."""
        self._check_held(admission, "abandon")
        state = self._next("probe_abandoned" if admission == "probe" else "abandoned")
        if state != self.state:
            self.state = state
        if admission == "probe":
            self.probes_in_flight -= 1

    # ------------------------------------------------------------------ internals

    def _attempt_event(self, now: float) -> str:
        if self.state == "closed":
            return "attempt"
        if self.state == "open" and now < self.open_until:
            return "attempt_in_cooldown"
        if self.probes_in_flight >= self.half_open_probes:
            return "attempt_while_probing"
        return "cooldown_over" if self.state == "open" else "probe_slot_free"

    def _admit(self, event: str, now: float) -> Admission:
        state = self._next(event)
        admission = ADMISSIONS[event]
        if admission == "probe":
            # A round starts on entering half-open; past the cap it cannot grow the cooldown.
            if self.state == "open" and self.current_cooldown_s() < self.max_cooldown_s:
                self.recovery_rounds += 1
            self.probes_in_flight += 1
        self._enter(state, now)
        return admission

    def _enter(self, state: CircuitState, now: float) -> None:
        # Assign only on change: a pydantic field assignment costs ~0.5 us, and the closed
        # breaker's attempt and success (every request) change nothing.
        if state != self.state:
            self.state = state
            self.changed_at = now

    def _next(self, event: str) -> CircuitState:
        try:
            return TRANSITIONS[self.state, event]
        except KeyError:
            raise BreakerError(f"event {event!r} is not allowed in state {self.state!r}") from None

    def _check_held(self, admission: str, report: str) -> None:
        if admission == "admitted":
            return
        if admission == "probe":
            if not self.probes_in_flight:
                raise BreakerError(f"{report} reported for a probe, but no probe is in flight")
            return
        if admission == "refused":
            raise BreakerError(f"{report} reported for a refused attempt, which never ran")
        raise BreakerError(f"{report} reported with unknown admission {admission!r}")

    # ------------------------------------------------------------------ the sliding window

    def _epoch(self, now: float) -> int:
        return int(now * WINDOW_BUCKETS // self.window_s)

    def _count(self, now: float, buckets: list[int]) -> None:
        epoch = self._epoch(now)
        newest = self.window_epoch
        if epoch > newest:  # clear the buckets time has moved past (once per bucket width)
            for stale in range(newest + 1, min(epoch, newest + WINDOW_BUCKETS) + 1):
                self.window_ok[stale % WINDOW_BUCKETS] = self.window_failed[stale % WINDOW_BUCKETS] = 0
            self.window_epoch = newest = epoch
        buckets[newest % WINDOW_BUCKETS] += 1  # a late `now` counts in the newest bucket

    def window_counts(self, now: float) -> tuple[int, int]:
        """``(successes, failures)`` the window holds at ``now``. Read-only."""
        stale = min(max(self._epoch(now) - self.window_epoch, 0), WINDOW_BUCKETS)
        ok = failed = 0
        for age in range(WINDOW_BUCKETS - stale):
            i = (self.window_epoch - age) % WINDOW_BUCKETS
            ok += self.window_ok[i]
            failed += self.window_failed[i]
        return ok, failed

    def _ratio_reached_with_one_more_failure(self, now: float) -> bool:
        ok, failed = self.window_counts(now)
        total = ok + failed + 1
        return total >= self.min_requests and failed + 1 >= self.failure_ratio * total
