"""The agent's own runtime settings (``config/router.yaml``): limits and timeouts, the bus,
security, emulation, telemetry, logging. Part of ``router_agent.config.Config`` (and
re-exported there); kept apart so that each file stays one concern.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    field_validator,
    model_validator,
)


def _check_networks(label: str, networks: list[str]) -> None:
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"{label}{net!r} is not a network: {exc}") from None


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- router.yaml


class CircuitBreakerConfig(Strict):
    """Every breaker's settings (``core/breaker.py``, built by ``new_breaker``): per deployment,
    and per provider for failures that condemn the whole endpoint."""

    failure_threshold: int = Field(5, ge=1)
    """Consecutive failures that open a closed breaker."""
    failure_ratio: float = Field(0.5, ge=0, le=1)
    """Failed share of the last ``window_s`` that opens it (with ``min_requests``); 0: off."""
    window_s: float = Field(30.0, gt=0)
    min_requests: int = Field(20, ge=1)
    half_open_probes: int = Field(1, ge=1)
    """Probes admitted at once while half-open."""
    success_threshold: int = Field(1, ge=1)
    """Probe successes that close it again."""
    cooldown_s: float = Field(30.0, gt=0)
    cooldown_multiplier: float = Field(2.0, ge=1)
    """Each failed recovery multiplies the next cooldown, up to ``max_cooldown_s``; a close
    resets it."""
    max_cooldown_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _cap_above_cooldown(self) -> CircuitBreakerConfig:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(f"max_cooldown_s ({self.max_cooldown_s}) is below cooldown_s ({self.cooldown_s})")
        return self


class CacheConfig(Strict):
    """The response cache (``response_cache.py``): an in-process layer in front of a
    JetStream key-value bucket that every instance shares. Nothing is cached unless an agent
    (agents.yaml ``cache``) or its strategy (``cache_responses``) opts in."""

    enabled: bool = True
    """False: no cache at all, whatever agents and strategies say."""
    ttl_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600)
    """How long an answer is served, in both layers (the bucket's max age)."""
    max_entries: int = Field(10_000, ge=1)
    """In-process layer: answers kept (the least recently used goes first)."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """In-process layer: their encoded size together."""
    max_entry_bytes: int = Field(256 * 1024, ge=256)
    """One answer, encoded: a larger one is not cached (in either layer)."""
    bucket: str | None = Field("response_cache", pattern=r"^[A-Za-z0-9_-]+$")
    """The key-value bucket shared by instances, prefixed with ``router.subject_prefix``
    (dots as underscores) so routers on different prefixes never share answers; null: the
    in-process layer only."""
    bucket_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """The bucket's size; when it is full the oldest answers go."""
    storage: Literal["memory", "file"] = "memory"
    """The bucket's storage. Memory by default: a cache needs no disk, and answers to
    private requests are then never written to one."""
    kv_timeout_ms: float = Field(50.0, gt=0, le=10_000)
    """A bucket read slower than this counts as a miss: the cache must never slow a request
    down by more than this."""
    max_pending_writes: int = Field(1000, ge=1)
    """Bucket writes queued or not yet acknowledged; beyond it a write is skipped (the answer
    stays in the in-process layer)."""
    replay_piece_chars: int = Field(64, ge=1, le=65_536)
    """A cached answer to a streamed request is replayed as pieces of this many characters."""


class HedgingConfig(Strict):
    """``parallel_requests`` (routing.yaml): when a second attempt starts."""

    delay: Literal["p95", "immediately"] = "p95"
    """``p95``: once the first has not answered within its deployment's observed p95 latency."""
    unobserved_delay_ms: float = Field(1000.0, ge=0)
    """The delay for a deployment without observed latency yet."""
    min_delay_ms: float = Field(10.0, ge=0)


class HealthConfig(Strict):
    """Active health checks: a cheap probe per provider, skipped while real traffic proves it."""

    probe_interval_s: float = Field(30.0, ge=0)
    """0 turns active probes off."""


class RetryConfig(Strict):
    """Retries of a failed attempt on the same deployment (``core/retry.py``): exponential
    backoff with full jitter, honouring Retry-After, never past the request's deadline; and
    the retry budget: ``retries + 1 <= max(budget_ratio * requests, budget_min_per_s *
    budget_window_s)`` over the last ``budget_window_s``."""

    initial_s: float = Field(0.2, gt=0)
    max_s: float = Field(10.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    max_retries: int = Field(2, ge=0, le=10)
    """Retries per deployment per request (the fallback chain is ``max_attempts``'s)."""
    min_attempt_s: float = Field(0.25, ge=0)
    """No retry whose wait leaves less than this of the deadline for the call itself."""
    budget_ratio: float = Field(0.2, ge=0, le=1)
    """Retries at most this share of recent requests..."""
    budget_min_per_s: float = Field(5.0, ge=0)
    """...or this many per second of the window, whichever is more (so a quiet router retries)."""
    budget_window_s: float = Field(10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ceiling_above_start(self) -> RetryConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) is below initial_s ({self.initial_s})")
        return self


class RateWaitConfig(Strict):
    """Requests no candidate can take for its rate limits wait (``core/limiter.py``,
    ``WaitQueue``), by priority then deadline; beyond ``max_waiting`` they are answered
    ``rate_limited`` at once."""

    max_waiting: int = Field(1000, ge=0)


class BudgetConfig(Strict):
    """Daily budgets and the cost ledger (``ledger_service.py``; ``core/budget.py`` has the
    rules and the bound on overshooting a cap). Caps are USD per day; none by default."""

    time_zone: str = "UTC"
    """The IANA time zone (``Europe/Paris``) whose midnight starts a budget day."""
    daily_usd: float | None = Field(None, ge=0)
    """Every billed call (cloud models and priced local ones)."""
    cloud_daily_usd: float | None = Field(None, ge=0)
    """Cloud models; ``routing.global_overrides.max_cloud_spend_per_day`` is such a cap too
    (the lower wins). At a cap, cloud calls are refused (``budget_exceeded``, or a local
    candidate serves)."""
    per_agent_usd: dict[str, NonNegativeFloat] = {}
    per_provider_usd: dict[str, NonNegativeFloat] = {}
    local_only_share: float | None = Field(None, gt=0, le=1)
    """From this share of the overall, cloud or agent cap, routing keeps to local models
    (the routing.yaml rule ``cost_circuit_breaker`` does it for the cloud budget by itself)."""
    store: Literal["jetstream", "memory"] = "jetstream"
    """``jetstream``: one ledger for every instance on the bus, kept over restarts; without
    JetStream the agent refuses to start. ``memory``: this process only (a warning says so)."""
    bucket: str = Field("router_ledger", pattern=r"^[A-Za-z0-9_-]+$")
    """Key-value bucket of spend records and leases, prefixed like the response cache's."""
    stream: str = Field("ROUTER_COST_EVENTS", pattern=r"^[A-Za-z0-9_-]+$")
    """Stream of ``cost_event`` signals (``<prefix>cost_event.<instance>``), prefixed too."""
    storage: Literal["file", "memory"] = "file"
    retention_days: int = Field(35, ge=1, le=3660)
    """How long spend records, leases and cost events are kept."""
    report_days: int = Field(7, ge=1, le=366)
    """Days a ``cost_report`` covers, today included."""
    flush_interval_s: float = Field(0.2, gt=0, le=60)
    """How often spend is shipped to the shared ledger and leases renewed."""
    refresh_interval_s: float = Field(10.0, gt=0)
    """How often the other instances' spend is read for the report."""
    lease_share: float = Field(0.1, gt=0, le=1)
    """A lease claims this share of the budget nobody holds..."""
    lease_min_usd: float = Field(0.01, ge=0)
    """...and at least this much (when that much is left)."""
    lease_ttl_s: float = Field(300.0, ge=1)
    """A lease is used for half of this after its last renewal; others reclaim it after all of it."""
    store_timeout_s: float = Field(2.0, gt=0, le=60)
    estimator_alpha: float = Field(0.2, gt=0, le=1)
    """Weight of the newest call in the learned per-model correction of estimates."""

    @field_validator("time_zone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (like UTC or Europe/Paris)") from None
        return value


class RouterSettings(Strict):
    instance_id: str | None = None
    subject_prefix: str = ""
    queue_group: str = "router"
    max_concurrent_requests: int = Field(10_000, ge=1)
    """Requests served at once; more wait for a slot, within their deadline."""
    max_queued_requests: int = Field(1_000, ge=0)
    """Requests admitted beyond ``max_concurrent_requests`` to wait for a slot; beyond them a
    request is answered ``overloaded`` at once (with a retry-after hint)."""
    pending_messages_limit: int = Field(65_536, ge=1)
    """NATS's buffer of received, not yet handled messages per subscription (nats-py's
    ``pending_msgs_limit``); what overflows it is dropped by the client and counted in
    ``metrics.slow_consumer_drops``."""
    pending_bytes_limit: int = Field(256 * 1024 * 1024, ge=1024)
    attempt_timeout_share: float = Field(0.5, gt=0, le=1)
    """While other candidates are left, one attempt may use at most this share of what remains
    of the request's deadline (for a stream: until its first token)."""
    hedging: HedgingConfig = HedgingConfig()
    health: HealthConfig = HealthConfig()
    max_payload_bytes: int = Field(1_048_576, ge=1024)
    default_timeout_ms: int = Field(60_000, ge=1)
    """A request's deadline when it sets no ``timeout_ms``: bounds its whole attempt chain."""
    default_provider_timeout_ms: int = Field(60_000, ge=1)
    """An attempt's timeout for a runtime provider that sets no ``timeout_ms``."""
    max_attempts: int = Field(3, ge=1, le=10)
    stream_coalesce_ms: float = Field(2.0, ge=0, le=1000)
    """Streaming: pieces arriving within this long after the last chunk are sent together in
    the next one (the first piece is never held). 0 sends every piece as its own chunk. 2 ms
    holds no piece of a stream paced up to ~200 pieces/s and merges pieces that arrive
    together (README, Streaming)."""
    metrics_interval_s: float = Field(10.0, gt=0)
    cost_report_interval_s: float = Field(30.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)
    probe_timeout_ms: int = Field(3000, ge=1)
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    budgets: BudgetConfig = BudgetConfig()
    """Daily budgets and the shared cost ledger (``BudgetConfig``)."""
    retry: RetryConfig = RetryConfig()
    rate_wait: RateWaitConfig = RateWaitConfig()
    cache: CacheConfig = CacheConfig()
    """The response cache (``CacheConfig``)."""


class TlsConfig(Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class EmbeddedNats(Strict):
    host: str = "127.0.0.1"
    port: int = Field(4222, ge=0, le=65535)
    data_dir: str = ".router-data/nats"


class NatsConfig(Strict):
    url: str | None = None
    user_env: str | None = "NATS_USER"
    password_env: str | None = "NATS_PASSWORD"
    token_env: str | None = "NATS_TOKEN"
    nkeys_seed_file: str | None = None
    creds_file: str | None = None
    tls: TlsConfig | None = None
    embedded: EmbeddedNats = EmbeddedNats()
    inbox_prefix_env: str | None = "NATS_INBOX_PREFIX"  # "_INBOX.<user>" under config/nats/permissions.conf
    # Liveness (docs/operations.md): nats-py pings, and the watchdog (liveness_*: 0 turns it off).
    ping_interval_s: float = Field(5.0, gt=0)
    max_outstanding_pings: int = Field(3, ge=1)
    liveness_interval_s: float = Field(1.0, ge=0)
    liveness_timeout_s: float = Field(5.0, ge=0)


class EndpointPolicy(Strict):
    """Which endpoints a run-time registration may name (``core/endpoints.py`` applies it)."""

    allowed_schemes: list[str] = ["http", "https"]
    allowed_hosts: list[str] = ["*"]
    allowed_networks: list[str] = []
    """Not empty: every address must lie in one of these (an allow list)."""
    private_networks_allowed: list[str] = []
    """Non-public networks (loopback, RFC 1918, ULA, CGNAT...) registrations may reach; none by default."""
    denied_hosts: list[str] = []
    denied_networks: list[str] = ["169.254.0.0/16", "fe80::/10"]

    @model_validator(mode="after")
    def _networks_parse(self) -> EndpointPolicy:
        _check_networks("", [*self.allowed_networks, *self.private_networks_allowed, *self.denied_networks])
        return self


class SecurityConfig(Strict):
    allow_inline_api_keys: bool = False
    secret_files_dir: str | None = None
    """A run-time ``api_key_file`` must lie under it; unset, every one is refused."""
    runtime_key_envs: list[str] = []
    """Variables a run-time ``api_key_env`` may name; empty, every one is refused."""
    runtime_may_serve_config_models: bool | list[str] = False
    """May a run-time provider serve names (or aliases) config defines: no, any, or these."""
    local_networks: list[str] = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    """A run-time ``type: local`` is accepted only when all its addresses lie in these."""
    max_models_per_provider: int = Field(256, ge=1)
    max_runtime_models: int = Field(2048, ge=0)
    """Models of all run-time providers together (0 closes run-time registration)."""
    runtime_models_in_default_pool: bool = False
    """May a request naming no model (nor agent preference) go to run-time models."""
    endpoints: EndpointPolicy = EndpointPolicy()

    @model_validator(mode="after")
    def _networks_parse(self) -> SecurityConfig:
        _check_networks("local_networks: ", self.local_networks)
        return self


class EmulationConfig(Strict):
    mode: Literal["auto", "always", "never"] = "auto"
    url: str | None = None
    latency_ms: float = Field(40.0, ge=0)


class TelemetryConfig(Strict):
    """OpenTelemetry traces and metrics (``router_agent/telemetry.py`` says what is emitted).
    Off by default. The standard variables win over ``enabled``/``exporter``:
    ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (console, otlp, none; metrics also
    prometheus), ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``;
    ``OTEL_SDK_DISABLED=true`` turns everything off."""

    enabled: bool = False
    exporter: Literal["console", "otlp", "none"] = "console"
    prometheus_port: int | None = Field(None, ge=0, le=65535)
    """Serve ``/metrics`` for Prometheus on this port (0: any free port); None: no endpoint.
    Setting it turns metrics on even when ``enabled`` is false."""
    prometheus_host: str = "127.0.0.1"


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
