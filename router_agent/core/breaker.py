"""Circuit breaker, one per deployment (provider + model), as a sans-io state machine.

Theory of operation: a breaker counts consecutive failures. At ``failure_threshold`` it
opens and refuses traffic for ``cooldown_s``; the first request after the cooldown is let
through as a probe (half-open). The probe's success closes the breaker, its failure opens
it for another cooldown. Time is passed in (``now``, monotonic seconds); nothing sleeps.

| state     | event                          | next      |
|-----------|--------------------------------|-----------|
| closed    | success                        | closed (failures = 0) |
| closed    | failure, failures < threshold  | closed    |
| closed    | failure, failures >= threshold | open      |
| open      | allow, cooldown not over       | open (refused) |
| open      | allow, cooldown over           | half_open (probe let through) |
| half_open | allow while probe in flight    | half_open (refused) |
| half_open | success                        | closed    |
| half_open | failure                        | open      |
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
            return now - self.opened_at >= self.cooldown_s
        return not self.probe_in_flight

    def process_attempt(self, now: float) -> bool:
        """Claim passage for one request; False means the breaker refuses it."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
        if self.probe_in_flight:
            return False
        self.probe_in_flight = True
        return True

    def process_success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.probe_in_flight = False

    def process_failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self.state = "open"
            self.opened_at = now
        self.probe_in_flight = False
