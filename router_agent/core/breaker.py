"""Circuit breaker, one per deployment (provider + model), as a sans-io state machine.

Rules
-----
1. ``closed`` admits every attempt. ``threshold`` consecutive failures open the breaker;
   ``opened_at`` is the time of the failure that reached the threshold.
2. ``open`` refuses every attempt until ``cooldown_s`` has passed since ``opened_at`` (the
   boundary itself counts as over). The first attempt after that is the *probe*, and the
   breaker goes ``half_open``.
3. At most one probe is outstanding at any time. While it is, every attempt an ``open`` or
   ``half_open`` breaker sees is refused.
4. Any success (the probe's or a request's admitted earlier) closes the breaker and resets
   ``failures``. Any failure while ``open`` or ``half_open`` (re)opens it from that failure's
   time: the probe's failure buys another full cooldown.
5. An abandoned attempt (the caller's deadline expired, shutdown cancelled it) is not the
   deployment's fault: nothing is counted, and an abandoned probe gives its slot back.
6. The caller hands back the admission it was given. Reporting a ``"refused"`` attempt, or a
   ``"probe"`` when none is outstanding, is a caller bug and raises ``BreakerError``; so does
   any ``(state, event)`` pair that ``TRANSITIONS`` does not list.

Theory of operation
-------------------
Each method classifies what happened into one *event*, looks the next state up in
``TRANSITIONS`` (a missing pair raises before anything is changed), then applies the
bookkeeping the event implies. Time is passed in (``now``, monotonic seconds); nothing here
sleeps or reads a clock, so every path is deterministic and tested in microseconds.

``process_attempt(now)`` claims passage and returns an ``Admission``: ``"admitted"`` (closed),
``"probe"`` (the one half-open probe) or ``"refused"``. Whatever was admitted must later be
reported exactly once, with that admission, through ``process_success``,
``process_failure`` or ``process_abandon``. ``allows(now)`` answers the same question without
claiming anything (routing filters candidates with it), so it never mutates and always equals
``process_attempt(now) != "refused"`` on a copy.

The probe slot (``probe_in_flight``) is kept beside the state, not folded into it, because
requests admitted earlier keep reporting after the state has moved on, and only the probe's
own report (success, failure or abandon) releases the slot:

- A slow request admitted while closed may fail after the probe went out. That failure is
  fresh evidence and reopens the breaker, but the probe is still out, so the breaker stays
  refusing until the probe reports: there is never a second concurrent probe.
- A slow request admitted while closed may succeed while the probe is out. That success
  closes the breaker (rule 4); the probe stays outstanding and its later result is still
  accepted and counted like any result in the state it finds (a failure while closed counts
  toward the threshold). So ``probe_in_flight`` may be true in any state, and
  ``process_success("probe")`` never raises just because something else closed the breaker.
- An abandoned probe leaves the breaker ``half_open`` with the slot free: the cooldown has
  already passed, so the next attempt is the new probe. An abandoned probe in an ``open``
  breaker (reopened by a late failure) frees the slot and leaves ``opened_at`` alone.

Transitions
-----------
Attempt events (``process_attempt``; the last column is the admission returned) and result
events (``process_success`` / ``process_failure`` / ``process_abandon``). This table and
``TRANSITIONS`` are checked against each other by the tests.

| state     | event                   | next      | admission / effect                              |
|-----------|-------------------------|-----------|-------------------------------------------------|
| closed    | attempt                 | closed    | admitted                                        |
| closed    | success                 | closed    | failures = 0                                    |
| closed    | failure_below_threshold | closed    | failures += 1                                   |
| closed    | failure_at_threshold    | open      | failures += 1, opened_at = now                  |
| closed    | abandoned               | closed    | nothing counted                                 |
| closed    | probe_abandoned         | closed    | probe slot freed                                |
| open      | attempt_in_cooldown     | open      | refused                                         |
| open      | attempt_while_probing   | open      | refused (the probe has not reported yet)        |
| open      | cooldown_over           | half_open | probe (slot claimed)                            |
| open      | success                 | closed    | failures = 0 (a late success)                   |
| open      | failure                 | open      | failures += 1, opened_at = now (cooldown anew)  |
| open      | abandoned               | open      | nothing counted                                 |
| open      | probe_abandoned         | open      | probe slot freed, opened_at unchanged           |
| half_open | attempt_while_probing   | half_open | refused                                         |
| half_open | probe_slot_free         | half_open | probe (slot claimed again after an abandon)     |
| half_open | success                 | closed    | failures = 0                                    |
| half_open | failure                 | open      | failures += 1, opened_at = now                  |
| half_open | abandoned               | half_open | nothing counted                                 |
| half_open | probe_abandoned         | half_open | probe slot freed: the next attempt may probe    |

A success or failure reported with ``"probe"`` also frees the probe slot, in any state.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

CircuitState = Literal["closed", "open", "half_open"]
Admission = Literal["refused", "admitted", "probe"]


class BreakerError(Exception):
    """An event the breaker's table does not allow (a caller bug)."""


TRANSITIONS: dict[tuple[CircuitState, str], CircuitState] = {
    ("closed", "attempt"): "closed",
    ("closed", "success"): "closed",
    ("closed", "failure_below_threshold"): "closed",
    ("closed", "failure_at_threshold"): "open",
    ("closed", "abandoned"): "closed",
    ("closed", "probe_abandoned"): "closed",
    ("open", "attempt_in_cooldown"): "open",
    ("open", "attempt_while_probing"): "open",
    ("open", "cooldown_over"): "half_open",
    ("open", "success"): "closed",
    ("open", "failure"): "open",
    ("open", "abandoned"): "open",
    ("open", "probe_abandoned"): "open",
    ("half_open", "attempt_while_probing"): "half_open",
    ("half_open", "probe_slot_free"): "half_open",
    ("half_open", "success"): "closed",
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
    "probe_slot_free": "probe",
}
"""What ``process_attempt`` returns for each attempt event."""


class Breaker(BaseModel):
    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    threshold: int = 5
    cooldown_s: float = 30.0

    # ------------------------------------------------------------------ attempts

    def allows(self, now: float) -> bool:
        """Would ``process_attempt(now)`` let a request through? Read-only: claims nothing."""
        event = self._attempt_event(now)
        self._next(event)
        return ADMISSIONS[event] != "refused"

    def process_attempt(self, now: float) -> Admission:
        """Claim passage for one request: ``"admitted"``, ``"probe"`` or ``"refused"``."""
        event = self._attempt_event(now)
        self._enter(self._next(event))
        admission = ADMISSIONS[event]
        if admission == "probe":
            self.probe_in_flight = True
        return admission

    # ------------------------------------------------------------------ results

    def process_success(self, admission: Admission) -> None:
        """The deployment answered: any success closes the breaker and resets failures."""
        self._check_held(admission, "success")
        self._enter(self._next("success"))
        if self.failures:
            self.failures = 0
        if admission == "probe":
            self.probe_in_flight = False

    def process_failure(self, admission: Admission, now: float) -> None:
        """The deployment failed this attempt (an error or its own timeout)."""
        self._check_held(admission, "failure")
        failures = self.failures + 1
        if self.state != "closed":
            event = "failure"
        elif failures >= self.threshold:
            event = "failure_at_threshold"
        else:
            event = "failure_below_threshold"
        state = self._next(event)
        if state == "open":
            self.opened_at = now
        self.state = state
        self.failures = failures
        if admission == "probe":
            self.probe_in_flight = False

    def process_abandon(self, admission: Admission) -> None:
        """The attempt ended through no fault of the deployment: count nothing, free a probe."""
        self._check_held(admission, "abandon")
        self._enter(self._next("probe_abandoned" if admission == "probe" else "abandoned"))
        if admission == "probe":
            self.probe_in_flight = False

    # ------------------------------------------------------------------ internals

    def _attempt_event(self, now: float) -> str:
        if self.state == "closed":
            return "attempt"
        if self.state == "open" and now - self.opened_at < self.cooldown_s:
            return "attempt_in_cooldown"
        if self.probe_in_flight:
            return "attempt_while_probing"
        return "cooldown_over" if self.state == "open" else "probe_slot_free"

    def _enter(self, state: CircuitState) -> None:
        # Assign only on change: a pydantic field assignment costs ~0.5 us, and the closed
        # breaker's attempt and success (every request) change nothing.
        if state != self.state:
            self.state = state

    def _next(self, event: str) -> CircuitState:
        try:
            return TRANSITIONS[self.state, event]
        except KeyError:
            raise BreakerError(f"event {event!r} is not allowed in state {self.state!r}") from None

    def _check_held(self, admission: str, report: str) -> None:
        if admission == "admitted":
            return
        if admission == "probe":
            if not self.probe_in_flight:
                raise BreakerError(f"{report} reported for a probe, but no probe is in flight")
            return
        if admission == "refused":
            raise BreakerError(f"{report} reported for a refused attempt, which never ran")
        raise BreakerError(f"{report} reported with unknown admission {admission!r}")
