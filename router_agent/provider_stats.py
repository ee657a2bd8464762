"""What ``provider_metrics`` says of one provider: assembled from what the registry keeps.

Reads only (``provider_states``, the breakers, the limiters, ``deployment_stats`` and the
health machines); writes nothing. It runs per provider per ``metrics_interval_s`` (and when
a caller asks the agent), not per request, so the request path keeps its plain counters and
everything derived (ratios, seconds left, redaction, wall-clock times) is computed here.

The health machine keeps monotonic time; ``wall_iso`` turns it into wall-clock time with
an offset the registry captured once (so a clock step shifts nothing already kept).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from router_agent.core.health import ROUTABLE
from router_agent.core.redact import redact
from signals import DeploymentMetrics, ProviderStats
from signals.envelope import iso_ms

if TYPE_CHECKING:
    from router_agent.registry import ProviderRegistry

MAX_LAST_ERROR = 200
"""Longest ``last_error`` reported."""


def wall_iso(monotonic: float, wall_offset: float) -> str:
    """``monotonic`` (the agent's clock) as ISO 8601 UTC with milliseconds, like the envelope's ``time``."""
    return iso_ms(math.floor((monotonic + wall_offset) * 1000))


def provider_stats(registry: ProviderRegistry, name: str, now: float) -> ProviderStats:
    """The provider's figures at ``now`` (monotonic seconds)."""
    state = registry.state
    entry = state.providers[name]
    p = state.provider_states[name]
    deployments = [_deployment(registry, name, model, now) for model in entry.models]
    circuits = {d.circuit for d in deployments}
    circuit = "open" if "open" in circuits else "half_open" if "half_open" in circuits else "closed"
    health = registry.health.get(name)
    uptime_ratio, uptime_s = 1.0, 0.0
    if health is not None:
        times = health.time_in_states(now)
        uptime_ratio, uptime_s = health.uptime(now), sum(times[s] for s in ROUTABLE)
    provider_breaker = registry.provider_breakers.get(name)
    return ProviderStats(
        provider=name,
        health=p.health,
        circuit=circuit,
        enabled=entry.enabled,
        emulated=entry.emulated,
        in_flight=p.in_flight,
        requests=p.requests,
        successes=p.successes,
        failures=p.failures,
        error_rate=round(p.failures / p.requests, 6) if p.requests else 0.0,
        avg_latency_ms=round(p.latency_ms_total / p.requests, 3) if p.requests else 0.0,
        input_tokens=p.input_tokens,
        output_tokens=p.output_tokens,
        cost_usd=round(p.cost_usd, 10),
        provider_circuit=provider_breaker.state if provider_breaker is not None else "closed",
        uptime_ratio=round(uptime_ratio, 6),
        uptime_s=round(uptime_s, 3),
        last_error_code=p.last_error_code,
        # Redacted again here: a probe's detail did not pass through the attempt's redaction.
        last_error=redact(p.last_error, registry.secrets.known())[:MAX_LAST_ERROR] if p.last_error else "",
        last_error_at=p.last_error_at,
        errors_by_code=dict(p.errors_by_code),
        retries=p.retries,
        failovers=p.failovers,
        hedges=p.hedges,
        deployments=deployments,
    )


def _deployment(registry: ProviderRegistry, provider: str, model: str, now: float) -> DeploymentMetrics:
    key = (provider, model)
    breaker = registry.state.circuit_breakers.get(key)
    circuit = breaker.state if breaker is not None else "closed"
    retry_in_s = None
    if breaker is not None and circuit == "open":
        at = breaker.retry_at(now)
        if not math.isinf(at):  # every probe slot taken: only a probe's result says when
            retry_in_s = round(max(0.0, at - now), 3)
    limiter = registry.limiters.get(key)
    observed = registry.stats.get(key)
    latency = observed.latency_ms if observed is not None else None
    p95 = observed.p95_ms() if observed is not None else None
    return DeploymentMetrics(
        model=model,
        circuit=circuit,
        retry_in_s=retry_in_s,
        headroom=round(limiter.headroom(now), 4) if limiter is not None else None,
        latency_ms=round(latency, 3) if latency is not None else None,
        p95_ms=round(p95, 3) if p95 is not None else None,
        in_flight=observed.in_flight if observed is not None else 0,
    )
