"""What the router has observed of each deployment: latency, errors, load (pure).

One ``DeploymentStats`` per ``(provider, model)``, written by the registry on every attempt
and read by the routing engine on every decision, so both sides are a few slot writes and
reads. Time is passed in (the agent's monotonic clock), never read here.

- ``latency_ms``: an exponentially weighted moving average (EWMA) of successful attempts;
  ``None`` until the first one (the engine then uses a prior). ``baseline_ms`` is a slow
  EWMA of the same: the model's normal, against which ``adaptive`` sees degradation.
- ``error_rate``: an EWMA of outcomes (1 = the provider failed, 0 = it answered); an
  abandoned attempt (the caller's deadline, a shutdown) is not the provider's doing.
- ``in_flight``: attempts started and not yet ended.
- ``latency_dev_ms``: an EWMA of the absolute deviation from the latency EWMA, so that
  ``p95_ms()`` (mean + 2 deviations, about the 95th percentile of a normal spread)
  says when a hedge should start without keeping a window of samples.

Rate limits are the limiter's (``core/limiter.py``), not kept here.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENCY_WEIGHT = 0.2
"""Weight of the newest attempt in the latency EWMA (about the last ten attempts count)."""
BASELINE_WEIGHT = 0.02
"""Weight in the slow latency EWMA, the model's normal: the fast one above it is degradation."""
ERROR_WEIGHT = 0.1
"""Weight of the newest outcome in the error-rate EWMA (about the last twenty count)."""
P95_DEVIATIONS = 2.0
"""Mean absolute deviations above the mean taken as the p95 (1.645 standard deviations of a
normal spread are ~2.06 mean absolute deviations)."""


@dataclass(slots=True)
class DeploymentStats:
    latency_ms: float | None = None
    baseline_ms: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    latency_dev_ms: float = 0.0

    def started(self) -> None:
        self.in_flight += 1

    def succeeded(self, latency_ms: float) -> None:
        self.in_flight -= 1
        self.successes += 1
        seen = self.latency_ms
        if seen is None:
            self.latency_ms = latency_ms
        else:
            self.latency_ms = seen + LATENCY_WEIGHT * (latency_ms - seen)
            self.latency_dev_ms += LATENCY_WEIGHT * (abs(latency_ms - seen) - self.latency_dev_ms)
        base = self.baseline_ms
        self.baseline_ms = latency_ms if base is None else base + BASELINE_WEIGHT * (latency_ms - base)
        self.error_rate -= ERROR_WEIGHT * self.error_rate

    def failed(self) -> None:
        self.in_flight -= 1
        self.failures += 1
        self.error_rate += ERROR_WEIGHT * (1.0 - self.error_rate)

    def abandoned(self) -> None:
        self.in_flight -= 1

    def p95_ms(self) -> float | None:
        """About the 95th percentile of successful attempts' latency; None before the first."""
        seen = self.latency_ms
        return None if seen is None else seen + P95_DEVIATIONS * self.latency_dev_ms
