"""The agent's state: one pydantic model, owned by the agent actor.

Field names follow the design (``providers``, ``provider_states``, ``model_capabilities``,
``routing_rules``, ``active_requests``, ``metrics``, ``load_balancing``,
``circuit_breakers``, ``rate_limiters``). The state is validated where it crosses a
boundary (built from config, changed by a control signal, dumped as a snapshot); the
per-request counters are plain attribute and dict updates, not re-validated every time.

Secrets are not part of the state: API keys live in ``SecretStore`` beside it, so a state
dump can never contain one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from router_agent.core.breaker import Breaker


class ModelEntry(BaseModel):
    """A model as one provider serves it."""

    model_id: str
    type: Literal["cloud", "local"]
    base_url: str
    capabilities: list[str] = []
    price_in: float = Field(0.0, ge=0)
    price_out: float = Field(0.0, ge=0)
    context_window: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    enabled: bool = True


class ProviderEntry(BaseModel):
    """A provider's configuration as the router uses it (never its key)."""

    name: str
    api: str
    type: Literal["cloud", "local"]
    base_url: str
    models: dict[str, ModelEntry]
    weight: float = Field(1.0, ge=0)
    enabled: bool = True
    timeout_ms: int = 60_000
    emulated: bool = False
    emulated_reason: str = ""
    has_key: bool = False
    source: Literal["config", "runtime"] = "config"


class ProviderState(BaseModel):
    health: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    health_detail: str = ""
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    latency_ms_total: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class ActiveRequest:
    """One request in flight. A slots dataclass, not a BaseModel: one is made per request
    and lives for its whole wait (pydantic validates it when the state is dumped)."""

    request_id: str
    agent_id: str
    started: float
    provider: str = ""
    model: str = ""


class Metrics(BaseModel):
    total_requests: int = 0
    completed: int = 0
    failed: int = 0
    invalid_inputs: int = 0
    invalid_by_code: dict[str, int] = {}
    errors_by_code: dict[str, int] = {}
    requests_by_provider: dict[str, int] = {}
    avg_latency_by_provider: dict[str, float] = {}
    error_rates: dict[str, float] = {}
    total_cost: float = 0.0


class LoadBalancing(BaseModel):
    strategy: str = "round_robin"
    weights: dict[str, float] = {}
    cursor: int = 0


class RateLimiter(BaseModel):
    """Configured limits of a deployment (enforcement is a later issue's engine)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


class RouterState(BaseModel):
    providers: dict[str, ProviderEntry] = {}
    provider_states: dict[str, ProviderState] = {}
    model_capabilities: dict[str, list[str]] = {}
    routing_rules: list[dict[str, str]] = []
    active_requests: dict[str, ActiveRequest] = {}
    metrics: Metrics = Metrics()
    load_balancing: LoadBalancing = LoadBalancing()
    circuit_breakers: dict[str, Breaker] = {}
    rate_limiters: dict[str, RateLimiter] = {}


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

    def values(self) -> list[str]:
        return list(self._keys.values())

    def __repr__(self) -> str:
        return f"SecretStore({len(self._keys)} keys)"
