"""The agent's state: one pydantic model, owned by the agent actor.

Field names follow the design (``providers``, ``provider_states``, ``model_capabilities``,
``routing_rules``, ``active_requests``, ``metrics``, ``load_balancing``,
``circuit_breakers``, ``rate_limiters``). The state is validated where it crosses a
boundary (built from config, changed by a control signal, dumped as a snapshot); the
per-request counters are plain attribute and dict updates, not re-validated every time.

Composite keys are tuples in memory (``(provider, model)``, ``(agent_id, request_id)``).
JSON has no tuple keys, so a snapshot nests them (``{provider: {model: ...}}``) and a
restore accepts that nesting back: no separator that an identifier might contain.

Secrets are not part of the state: API keys live in ``SecretStore`` beside it, so a state
dump can never contain one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer, field_validator

from router_agent.core.breaker import Breaker
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats
from router_agent.core.overrides import RoutingOverrides


class ProviderEntry(BaseModel):
    """A provider's configuration as the router uses it (never its key)."""

    name: str
    api: str
    type: Literal["cloud", "local"]
    base_url: str
    models: dict[str, Deployment]
    weight: float = Field(1.0, ge=0)
    enabled: bool = True
    timeout_ms: int = Field(60_000, ge=1)
    emulated: bool = False
    emulated_reason: str = ""
    has_key: bool = False
    source: Literal["config", "runtime"] = "config"


@dataclass(slots=True)
class ProviderState:
    """Run-time figures of a provider. A slots dataclass: it is written on every attempt
    (a pydantic field write costs ~0.4 us, a slot ~0.05 us); pydantic validates it where
    the state crosses a boundary, as a field of RouterState."""

    health: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    health_detail: str = ""
    last_error: str = ""
    """Message of the last failure counted against the provider, or of a failed probe (a
    request's is redacted when it arrives; ``provider_metrics`` redacts either on the way out)."""
    last_error_code: str = ""
    last_error_at: str = ""
    """Wall-clock time (ISO 8601, UTC) of that failure."""
    uptime: float = 1.0
    """Share of the time since the router first saw it that the provider was not unhealthy."""
    in_flight: int = 0
    requests: int = 0
    """Attempts the provider answered or failed; abandoned ones (the caller's deadline,
    a shutdown) are not the provider's doing and are not counted."""
    successes: int = 0
    failures: int = 0
    latency_ms_total: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    """Failed attempts by error class, those that do not count against it included."""
    retries: int = 0
    """Attempts that retried one of its deployments (bumped by the attempt chain, like
    ``metrics.retries``); ``failovers`` and ``hedges`` likewise, for attempts that came to
    it after another deployment failed, or as a hedge."""
    failovers: int = 0
    hedges: int = 0


@dataclass(slots=True)
class ActiveRequest:
    """One request in flight. A slots dataclass, not a BaseModel: one is made per request
    and lives for its whole wait (pydantic validates it when the state is dumped)."""

    request_id: str
    agent_id: str
    started: float
    provider: str = ""
    model: str = ""
    tokens: int = 0
    """Estimated tokens (prompt and completion), taken from each attempt's rate limiter."""
    input_tokens: int = 0
    """Estimated prompt tokens."""


@dataclass(slots=True)
class Metrics:
    """Counters of this instance (a slots dataclass, like ProviderState: written on every
    request). Invariant: total_requests == completed + failed + in_flight, whatever path a
    request took. Input that never decoded into a request is counted in ``invalid_inputs``
    only; the agent's own bugs in ``internal_errors``."""

    total_requests: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    invalid_inputs: int = 0
    invalid_by_code: dict[str, int] = field(default_factory=dict)
    internal_errors: int = 0
    oversized_signals: int = 0
    bus_reconnects: int = 0
    """Times the liveness watchdog found the NATS client deaf and reconnected it."""
    """Signals too large for the bus: each was replaced by an error or reported on router_error."""
    errors_by_code: dict[str, int] = field(default_factory=dict)
    requests_by_provider: dict[str, int] = field(default_factory=dict)
    avg_latency_by_provider: dict[str, float] = field(default_factory=dict)
    error_rates: dict[str, float] = field(default_factory=dict)
    total_cost: float = 0.0
    decisions_by_strategy: dict[str, int] = field(default_factory=dict)
    privacy_activations: int = 0
    """Decisions where privacy (privacy_level high or personal data) kept a request local."""
    shed: int = 0
    """Requests answered ``overloaded`` because in flight and queue were full."""
    slow_consumer_drops: int = 0
    """Messages nats-py dropped because a subscription's pending buffer was full."""
    retries: int = 0
    """Attempts that retried a deployment after a backoff."""
    failovers: int = 0
    """Attempts that went to another deployment after a failure."""
    hedges: int = 0
    """Second attempts started while the first was still running."""
    cache_hits: int = 0
    """Requests answered from the response cache."""
    cache_misses: int = 0
    """Cacheable requests the cache did not hold (answered by a provider, then stored)."""


@dataclass(slots=True)
class LoadBalancing:
    strategy: str = "round_robin"
    weights: dict[str, float] = field(default_factory=dict)
    cursor: int = 0


def _nest(table: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for (outer, inner), value in table.items():
        nested.setdefault(outer, {})[inner] = value
    return nested


def _unnest(value: Any) -> Any:
    """Accept ``{outer: {inner: v}}`` (a snapshot) as well as tuple keys (in memory)."""
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return {(outer, inner): v for outer, table in value.items() for inner, v in table.items()}
    return value


class RouterState(BaseModel):
    providers: dict[str, ProviderEntry] = {}
    provider_states: dict[str, ProviderState] = {}
    model_capabilities: dict[str, list[str]] = {}
    routing_rules: list[dict[str, str]] = []
    active_requests: dict[tuple[str, str], ActiveRequest] = {}
    """By ``(agent_id, request_id)``."""
    metrics: Metrics = Field(default_factory=Metrics)
    load_balancing: LoadBalancing = Field(default_factory=LoadBalancing)
    circuit_breakers: dict[tuple[str, str], Breaker] = {}
    """By ``(provider, model)``."""
    provider_breakers: dict[str, Breaker] = {}
    """By provider: failures that condemn the whole endpoint (refused connections, bad keys)."""
    rate_limiters: dict[tuple[str, str], DeploymentLimiter] = {}
    """By ``(provider, model)``: the deployments that are rate limited (configured limits, or
    a provider's Retry-After); token buckets in ``core/limiter.py``."""
    deployment_stats: dict[tuple[str, str], DeploymentStats] = {}
    """What each deployment has shown (latency, error rate, load, rate window), by
    ``(provider, model)``: the routing engine reads it on every decision."""
    routing_overrides: RoutingOverrides = Field(default_factory=RoutingOverrides)
    """Run-time changes from the control service (``core/overrides.py``); the routing engine
    reads them on every request. Expiry times are on the agent's monotonic clock."""

    @field_validator("active_requests", "circuit_breakers", "rate_limiters", "deployment_stats", mode="before")
    @classmethod
    def _tuple_keys(cls, value: Any) -> Any:
        return _unnest(value)

    @field_serializer("active_requests", "circuit_breakers", "rate_limiters", "deployment_stats", when_used="json")
    def _nested_keys(self, table: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
        return _nest(table)


class SecretStore:
    """API keys by provider, kept out of the state and out of every repr."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def set(self, provider: str, key: str | None) -> None:
        if key:
            self._keys[provider] = key
        else:
            self._keys.pop(provider, None)

    def get(self, provider: str) -> str | None:
        return self._keys.get(provider)

    def known(self) -> list[str]:
        """Every key held, for redaction of text that leaves the agent (never for output)."""
        return list(self._keys.values())

    def __repr__(self) -> str:
        return f"SecretStore({len(self._keys)} keys)"
