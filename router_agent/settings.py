"""The agent's own runtime settings (``config/router.yaml``): limits and timeouts, the bus,
security, emulation, telemetry, logging. Part of ``router_agent.config.Config`` (and
re-exported there); kept apart so that each file stays one concern.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    failure_threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class RouterSettings(Strict):
    instance_id: str | None = None
    subject_prefix: str = ""
    queue_group: str = "router"
    max_concurrent_requests: int = Field(10_000, ge=1)
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
    enabled: bool = False
    exporter: Literal["console", "otlp", "none"] = "console"


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
