"""A provider's health (healthy, degraded, unhealthy) as a sans-io state machine, merged from
three sources: outcomes of real requests (passive), a cheap probe when there is no traffic
(active), and ``provider_health`` reports from outside.

Rules
-----
1. Passive failures are the ones that count against a deployment
   (``breaker.counts_against_deployment``); passing any other code is a caller bug and
   raises ``HealthError``. ``degraded_after`` of them in a row make a healthy provider
   ``degraded``; so does a deployment breaker of the provider opening.
2. The provider's own breaker opening (refused connections, rejected keys: the whole
   endpoint) makes it ``unhealthy``; so do ``unhealthy_after`` failed probes in a row (a
   failed probe short of that degrades a healthy provider).
3. Any success, a real request's or a probe's, lifts an ``unhealthy`` provider to
   ``degraded`` (routable again, at half weight); ``recover_after`` successes in a row make
   it ``healthy``. One success is not enough to call a flapping provider healthy.
4. A probe is due when ``probe_interval_s`` has passed since the last own evidence (any
   result, a probe's included) and since the last probe was sent; a real result is evidence,
   so under load no probe is ever due. ``probe_interval_s = 0`` turns probes off.
5. A report from outside sets the state it names and restarts the counts in a row; it holds
   until fresher own evidence moves the state by the rules above. It is evidence too: no
   probe is due for one interval after it.
6. Any ``(state, event)`` pair that ``TRANSITIONS`` does not list raises ``HealthError``.

Theory of operation
-------------------
The shell keeps one ``ProviderHealth`` per provider and calls ``process_success`` /
``process_failure`` with each attempt's outcome, ``process_breaker_open`` when a breaker
opens, ``probe_due`` on a timer (then ``process_probe_sent`` and, later,
``process_probe``), and ``process_report`` for a ``provider_health`` signal. Each method
classifies what happened into one event, looks the next state up in ``TRANSITIONS`` before
changing anything, then does the bookkeeping. Time is passed in (monotonic seconds).

Routing drops ``unhealthy`` providers, so an unhealthy provider gets no real traffic: only
a probe or a report can bring it back. That is why a probe is due whenever own evidence is
old, and why a probe that never reports (its task died) is simply sent again one interval
later instead of blocking further probes.

State changes are not returned: the caller compares ``state`` before and after a call (the
shell publishes ``provider_health`` on a change); ``changed_at`` is when it last changed.
Time spent in each state is kept, for ``uptime(now)``: the share of time since first seen
that the provider was healthy or degraded (routable).

Transitions
-----------
| state     | event                   | next      | when                                          |
|-----------|-------------------------|-----------|-----------------------------------------------|
| healthy   | success                 | healthy   | a real request or a probe succeeded           |
| healthy   | failure                 | healthy   | fewer than ``degraded_after`` in a row        |
| healthy   | failure_degrades        | degraded  | ``degraded_after`` failures in a row          |
| healthy   | deployment_breaker_open | degraded  | one of its deployments' breakers opened       |
| healthy   | provider_breaker_open   | unhealthy | the provider's own breaker opened             |
| healthy   | probe_failed            | degraded  | fewer than ``unhealthy_after`` in a row       |
| healthy   | probe_condemns          | unhealthy | ``unhealthy_after`` failed probes in a row    |
| healthy   | report_healthy          | healthy   | a ``provider_health`` signal                  |
| healthy   | report_degraded         | degraded  | a ``provider_health`` signal                  |
| healthy   | report_unhealthy        | unhealthy | a ``provider_health`` signal                  |
| degraded  | success                 | degraded  | fewer than ``recover_after`` in a row         |
| degraded  | success_recovers        | healthy   | ``recover_after`` successes in a row          |
| degraded  | failure                 | degraded  |                                               |
| degraded  | deployment_breaker_open | degraded  |                                               |
| degraded  | provider_breaker_open   | unhealthy |                                               |
| degraded  | probe_failed            | degraded  | fewer than ``unhealthy_after`` in a row       |
| degraded  | probe_condemns          | unhealthy | ``unhealthy_after`` failed probes in a row    |
| degraded  | report_healthy          | healthy   |                                               |
| degraded  | report_degraded         | degraded  |                                               |
| degraded  | report_unhealthy        | unhealthy |                                               |
| unhealthy | success                 | degraded  | it answers again: routable, not yet trusted   |
| unhealthy | success_recovers        | healthy   | when ``recover_after`` is 1                   |
| unhealthy | failure                 | unhealthy | a late result of a request sent before        |
| unhealthy | deployment_breaker_open | unhealthy |                                               |
| unhealthy | provider_breaker_open   | unhealthy |                                               |
| unhealthy | probe_failed            | unhealthy |                                               |
| unhealthy | report_healthy          | healthy   |                                               |
| unhealthy | report_degraded         | degraded  |                                               |
| unhealthy | report_unhealthy        | unhealthy |                                               |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from router_agent.core.breaker import counts_against_deployment

HealthState = Literal["healthy", "degraded", "unhealthy"]
"""The values of ``ProviderState.health`` and of the ``provider_health`` signal's status."""

ROUTABLE: frozenset[str] = frozenset({"healthy", "degraded"})
"""States that count as up for ``uptime``: routing still sends traffic."""

MAX_DETAIL = 500
"""Longest detail or error text kept (the ``provider_health`` signal's limit)."""


class HealthError(Exception):
    """An event the health table does not allow, or a failure that is not the provider's."""


TRANSITIONS: dict[tuple[HealthState, str], HealthState] = {
    ("healthy", "success"): "healthy",
    ("healthy", "failure"): "healthy",
    ("healthy", "failure_degrades"): "degraded",
    ("healthy", "deployment_breaker_open"): "degraded",
    ("healthy", "provider_breaker_open"): "unhealthy",
    ("healthy", "probe_failed"): "degraded",
    ("healthy", "probe_condemns"): "unhealthy",
    ("healthy", "report_healthy"): "healthy",
    ("healthy", "report_degraded"): "degraded",
    ("healthy", "report_unhealthy"): "unhealthy",
    ("degraded", "success"): "degraded",
    ("degraded", "success_recovers"): "healthy",
    ("degraded", "failure"): "degraded",
    ("degraded", "deployment_breaker_open"): "degraded",
    ("degraded", "provider_breaker_open"): "unhealthy",
    ("degraded", "probe_failed"): "degraded",
    ("degraded", "probe_condemns"): "unhealthy",
    ("degraded", "report_healthy"): "healthy",
    ("degraded", "report_degraded"): "degraded",
    ("degraded", "report_unhealthy"): "unhealthy",
    ("unhealthy", "success"): "degraded",
    ("unhealthy", "success_recovers"): "healthy",
    ("unhealthy", "failure"): "unhealthy",
    ("unhealthy", "deployment_breaker_open"): "unhealthy",
    ("unhealthy", "provider_breaker_open"): "unhealthy",
    ("unhealthy", "probe_failed"): "unhealthy",
    ("unhealthy", "report_healthy"): "healthy",
    ("unhealthy", "report_degraded"): "degraded",
    ("unhealthy", "report_unhealthy"): "unhealthy",
}
"""``(state, event) -> next state``. A pair not listed is illegal and raises ``HealthError``."""


@dataclass(slots=True)
class ProviderHealth:
    """One provider's health. A slots dataclass: ``process_success`` runs on every request."""

    first_seen: float
    probe_interval_s: float = 30.0
    degraded_after: int = 3
    unhealthy_after: int = 2
    recover_after: int = 3

    state: HealthState = "healthy"
    detail: str = ""
    """Why it is not healthy (the latest reason), or what a report said; empty otherwise."""
    changed_at: float = field(init=False)
    last_evidence_at: float = field(init=False)
    """Own evidence (a result or a probe's) or a report: what keeps probes from being due."""
    last_probe_sent_at: float = field(init=False)
    failures_in_row: int = 0
    probe_failures_in_row: int = 0
    successes_in_row: int = 0
    last_error: str = ""
    last_error_code: str = ""
    last_error_at: float | None = None
    last_success_at: float | None = None
    reported: HealthState | None = None
    reported_at: float | None = None
    time_in: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("healthy", "degraded", "unhealthy"), 0.0))
    """Seconds spent in each state, up to ``changed_at`` (the current stint is added on read)."""

    def __post_init__(self) -> None:
        if self.probe_interval_s < 0:
            raise ValueError("probe_interval_s must be >= 0 (0 turns probes off)")
        for name in ("degraded_after", "unhealthy_after", "recover_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        self.changed_at = self.last_evidence_at = self.last_probe_sent_at = self.first_seen

    # ------------------------------------------------------------------ passive

    def process_success(self, now: float) -> None:
        """A real request succeeded."""
        self._succeeded(now)

    def process_failure(self, now: float, code: str, detail: str) -> None:
        """A real request failed with an error that counts against the provider."""
        if not counts_against_deployment(code):
            raise HealthError(f"{code!r} says nothing about the provider: do not report it as its failure")
        failures = self.failures_in_row + 1
        if self.state == "healthy" and failures >= self.degraded_after:
            event = "failure_degrades"
        else:
            event = "failure"
        state = self._next(event)
        self.failures_in_row = failures
        self.successes_in_row = 0
        self.last_evidence_at = now
        self._record_error(now, code, detail)
        self._enter(state, now, f"{failures} failures in a row, the last {code}: {detail}")

    def process_breaker_open(self, now: float, model: str | None) -> None:
        """A breaker opened: a deployment's (``model``) degrades, the provider's (None) condemns."""
        state = self._next("provider_breaker_open" if model is None else "deployment_breaker_open")
        self.successes_in_row = 0  # bad news: a recovery run starts over
        self._enter(state, now, "its circuit breaker is open" if model is None else f"the circuit of {model} is open")

    # ------------------------------------------------------------------ active

    def probe_due(self, now: float) -> bool:
        """Should the shell send a probe now? Read-only."""
        interval = self.probe_interval_s
        return interval > 0 and now - max(self.last_evidence_at, self.last_probe_sent_at) >= interval

    def process_probe_sent(self, now: float) -> None:
        """A probe went out: no other is due for one interval, whether or not it reports."""
        self.last_probe_sent_at = now

    def process_probe(self, now: float, ok: bool, detail: str = "") -> None:
        """A probe's result."""
        if ok:
            self._succeeded(now)
            return
        failures = self.probe_failures_in_row + 1
        condemns = failures >= self.unhealthy_after and self.state != "unhealthy"
        state = self._next("probe_condemns" if condemns else "probe_failed")
        self.probe_failures_in_row = failures
        self.successes_in_row = 0
        self.last_evidence_at = now
        self._record_error(now, "probe_failed", detail)
        self._enter(state, now, f"{failures} failed probes in a row: {detail}")

    # ------------------------------------------------------------------ external

    def process_report(self, now: float, status: HealthState, detail: str) -> None:
        """A ``provider_health`` signal from outside: it sets the state until fresher own
        evidence moves it."""
        state = self._next(f"report_{status}")
        self.failures_in_row = self.probe_failures_in_row = self.successes_in_row = 0
        self.reported, self.reported_at = status, now
        self.last_evidence_at = max(self.last_evidence_at, now)
        self._enter(state, now, "")
        self.detail = (f"reported {status}: {detail}" if detail else f"reported {status}")[:MAX_DETAIL]

    # ------------------------------------------------------------------ reading

    def time_in_states(self, now: float) -> dict[str, float]:
        """Seconds in each state since first seen, the current stint included. Read-only."""
        times = dict(self.time_in)
        times[self.state] += max(0.0, now - self.changed_at)
        return times

    def uptime(self, now: float) -> float:
        """Share of the time since first seen that the provider was healthy or degraded."""
        times = self.time_in_states(now)
        total = sum(times.values())
        if total <= 0:
            return 1.0 if self.state in ROUTABLE else 0.0
        return sum(times[s] for s in ROUTABLE) / total

    # ------------------------------------------------------------------ internals

    def _succeeded(self, now: float) -> None:
        successes = self.successes_in_row + 1
        if self.state == "healthy":
            event = "success"
        else:
            event = "success_recovers" if successes >= self.recover_after else "success"
        state = self._next(event)
        self.successes_in_row = 0 if state == "healthy" else successes
        if self.failures_in_row or self.probe_failures_in_row:
            self.failures_in_row = self.probe_failures_in_row = 0
        self.last_evidence_at = self.last_success_at = now
        self._enter(state, now, f"recovering: {successes} successes in a row")

    def _record_error(self, now: float, code: str, detail: str) -> None:
        self.last_error, self.last_error_code, self.last_error_at = detail[:MAX_DETAIL], code, now

    def _enter(self, state: HealthState, now: float, detail: str) -> None:
        # ``detail`` says why the provider is not healthy: the latest reason while it is not.
        if state != self.state:
            self.time_in[self.state] += max(0.0, now - self.changed_at)  # a late `now` adds nothing
            self.state, self.changed_at = state, max(now, self.changed_at)
        self.detail = detail[:MAX_DETAIL] if state != "healthy" else ""

    def _next(self, event: str) -> HealthState:
        try:
            return TRANSITIONS[self.state, event]
        except KeyError:
            raise HealthError(f"event {event!r} is not allowed in state {self.state!r}") from None
