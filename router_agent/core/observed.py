"""What the router has observed of each deployment: latency, errors, load, rate (pure).

One ``DeploymentStats`` per ``(provider, model)``, written by the registry on every attempt
and read by the routing engine on every decision, so both sides are a few slot writes and
reads. Time is passed in (the agent's monotonic clock), never read here.

- ``latency_ms``: an exponentially weighted moving average (EWMA) of successful attempts;
  ``None`` until the first one (the engine then uses a prior). ``baseline_ms`` is a slow
  EWMA of the same: the model's normal, against which ``adaptive`` sees degradation.
- ``error_rate``: an EWMA of outcomes (1 = the provider failed, 0 = it answered); an
  abandoned attempt (the caller's deadline, a shutdown) is not the provider's doing.
- ``in_flight``: attempts started and not yet ended.
- The rate window: requests and tokens started in the current minute (a fixed window
  aligned on the agent's clock). It says whether a configured rate limit is near
  (``APPROACHING`` of it used) or exhausted; the enforcing limiter with queues is the
  reliability layer's.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENCY_WEIGHT = 0.2
"""Weight of the newest attempt in the latency EWMA (about the last ten attempts count)."""
BASELINE_WEIGHT = 0.02
"""Weight in the slow latency EWMA, the model's normal: the fast one above it is degradation."""
ERROR_WEIGHT = 0.1
"""Weight of the newest outcome in the error-rate EWMA (about the last twenty count)."""
APPROACHING = 0.8
"""Share of a per-minute limit used at which the limit counts as approaching."""
WINDOW_S = 60.0


@dataclass(slots=True)
class DeploymentStats:
    latency_ms: float | None = None
    baseline_ms: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    window_start: float = 0.0
    window_requests: int = 0
    window_tokens: int = 0

    def started(self, now: float, tokens: int) -> None:
        self.in_flight += 1
        if now - self.window_start >= WINDOW_S:
            self.window_start = now - (now - self.window_start) % WINDOW_S if self.window_start else now
            self.window_requests = 0
            self.window_tokens = 0
        self.window_requests += 1
        self.window_tokens += tokens

    def succeeded(self, latency_ms: float) -> None:
        self.in_flight -= 1
        self.successes += 1
        seen = self.latency_ms
        self.latency_ms = latency_ms if seen is None else seen + LATENCY_WEIGHT * (latency_ms - seen)
        base = self.baseline_ms
        self.baseline_ms = latency_ms if base is None else base + BASELINE_WEIGHT * (latency_ms - base)
        self.error_rate -= ERROR_WEIGHT * self.error_rate

    def failed(self) -> None:
        self.in_flight -= 1
        self.failures += 1
        self.error_rate += ERROR_WEIGHT * (1.0 - self.error_rate)

    def abandoned(self) -> None:
        self.in_flight -= 1

    def used_share(self, now: float, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """Share of the tighter per-minute limit this minute has used, counting ``tokens``
        more (the request being routed); 0.0 when no limit is configured. The definition:
        ``routing.filter_candidates`` runs the same arithmetic inline (it is per candidate),
        and the property tests hold the two to each other."""
        if now - self.window_start >= WINDOW_S:
            return 0.0 if tokens == 0 or tpm is None else tokens / tpm
        share = 0.0
        if rpm is not None:
            share = self.window_requests / rpm
        if tpm is not None:
            share = max(share, (self.window_tokens + tokens) / tpm)
        return share
