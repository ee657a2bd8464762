"""Circuit breaker, one per deployment (provider + model), as a sans-io state machine.

Theory of operation: a breaker counts consecutive failures. At ``failure_threshold`` it
opens and refuses traffic for ``cooldown_s``; the first request after the cooldown is let
through as a probe (half-open). The probe's success closes the breaker, its failure opens
it for another cooldown. Time is passed in (``now``, monotonic seconds); nothing sleeps.

Only the probe's own result clears ``probe_in_flight``: a slow request admitted while the
breaker was closed may fail after the probe went out, and must not make room for a second
concurrent probe. A request admitted while half-open is the probe (the caller reads
``state == "half_open"`` right after ``process_attempt`` to know).

| state     | event                          | next      |
|-----------|--------------------------------|-----------|
| closed    | success                        | closed (failures = 0) |
| closed    | failure, failures < threshold  | closed    |
| closed    | failure, failures >= threshold | open      |
| open      | allow, cooldown not over       | open (refused) |
| open      | allow, cooldown over, no probe | half_open (probe let through) |
| open      | allow while probe in flight    | open (refused) |
| half_open | allow while probe in flight    | half_open (refused) |
| any       | success                        | closed (probe cleared) |
| half_open | failure                        | open      |
| any       | failure of the probe           | (as above) and probe cleared |
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

CircuitState = Literal["closed", "open", "half_open"]


class Breaker(BaseModel):
    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    threshold: int = 5
    cooldown_s: float = 30.0

    def allows(self, now: float) -> bool:
        """May a request go through now? (Read-only: does not claim the probe.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            return now - self.opened_at >= self.cooldown_s and not self.probe_in_flight
        return not self.probe_in_flight

    def process_attempt(self, now: float) -> bool:
        """Claim passage for one request; False means the breaker refuses it."""
        if self.state == "closed":
            return True
        if self.probe_in_flight or (self.state == "open" and now - self.opened_at < self.cooldown_s):
            return False
        self.state = "half_open"
        self.probe_in_flight = True
        return True

    def process_success(self, probe: bool = False) -> None:
        """Any success shows the deployment works: close (a closed breaker has no probe)."""
        del probe
        self.state = "closed"
        self.failures = 0
        self.probe_in_flight = False

    def process_failure(self, now: float, probe: bool = False) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self.opened_at = now
        if probe:
            self.probe_in_flight = False
