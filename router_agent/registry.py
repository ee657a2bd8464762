"""The provider registry: the only writer of ``providers``, ``provider_states``,
``circuit_breakers``, ``rate_limiters``, ``model_capabilities`` and the provider weights in
``load_balancing``, and the one place a ``Deployment`` is built.

It also keeps what routing reads on every request, derived from the state after any change
(models by name, the default pool, the provider views), the adapters by wire format, and
the keys (in a ``SecretStore`` beside the state, never in it; a key is read and checked
here, ``read_key`` / ``read_key_file``, and never appears in an error message).

Outcomes of attempts come back here: the caller hands back the breaker's admission, and
only outcomes the provider is responsible for are counted (an attempt abandoned because the
caller's deadline passed or the agent is stopping is not the provider's failure).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from router_agent.config import Config, ProviderConfig
from router_agent.core.breaker import Breaker, new_breaker
from router_agent.core.endpoints import endpoint_host, endpoint_origin
from router_agent.core.health import HealthState, ProviderHealth
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment, DeploymentKey
from router_agent.core.observed import DeploymentStats
from router_agent.core.routing import ProviderView
from router_agent.http import HttpClient
from router_agent.keys import read_key
from router_agent.provider_stats import provider_stats, wall_iso
from router_agent.providers import ADAPTERS
from router_agent.providers.base import Adapter
from router_agent.state import ProviderEntry, ProviderState, RouterState, SecretStore
from signals import ProviderStats

log = logging.getLogger("router_agent")

EMULATOR_PATHS = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta", "ollama": ""}
"""Where the emulator serves each wire format, under its root URL: an emulated provider is
called through its own vendor's adapter, so the adapter code runs against the emulator."""


def emulated_base_url(emulator_url: str, api: str) -> str:
    """The base URL an emulated provider of ``api`` is called at. ``emulator_url`` may be the
    emulator's root or its OpenAI base (``.../v1``)."""
    root = emulator_url.rstrip("/").removesuffix("/v1")
    return root + EMULATOR_PATHS[api]


class ModelSpecLike(Protocol):
    """What ``models.yaml`` entries and ``provider_register`` model specs have in common."""

    model_id: str | None
    capabilities: list[str]
    context_window: int | None

    @property
    def cost_per_1k_tokens(self) -> Any: ...

    @property
    def rate_limits(self) -> Any: ...


def build_deployment(
    provider: str, name: str, spec: ModelSpecLike, *, api: str, type: str, base_url: str, enabled: bool = True
) -> Deployment:
    """The one conversion from a model description (config or signal) to a Deployment."""
    return Deployment(
        provider=provider,
        model=name,
        model_id=spec.model_id or name,
        api=api,
        type=type,
        base_url=base_url.rstrip("/"),
        capabilities=frozenset(spec.capabilities),
        price_in=spec.cost_per_1k_tokens.input,
        price_out=spec.cost_per_1k_tokens.output,
        price_cached_in=spec.cost_per_1k_tokens.cached_input,
        context_window=spec.context_window,
        requests_per_minute=spec.rate_limits.requests_per_minute,
        tokens_per_minute=spec.rate_limits.tokens_per_minute,
        tokens_per_second=(getattr(spec, "performance", None) or {}).get("tokens_per_second"),
        enabled=enabled,
    )


class ProviderRegistry:
    def __init__(
        self,
        config: Config,
        state: RouterState,
        http: HttpClient,
        emulator_url: str | None = None,
        adapters: Mapping[str, Adapter] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.clock = clock
        self.wall_offset = time.time() - clock()
        """Wall clock minus the agent's clock, taken once: reports turn monotonic times into dates with it."""
        self.settings = config.router
        self.state = state
        self.emulator_url = emulator_url.rstrip("/") if emulator_url else None
        self.secrets = SecretStore()
        self.adapters: dict[str, Adapter] = (
            dict(adapters) if adapters is not None else {api: make(http) for api, make in ADAPTERS.items()}
        )
        # Derived for routing; rebuilt after every change.
        self.deployments_by_model: dict[str, list[Deployment]] = {}
        """Every model name some provider serves (config and run time) -> its deployments."""
        self.default_pool: list[str] = []
        """What a request naming no model (and no agent preference) chooses from: the names
        configured providers serve, plus run-time ones only when
        ``security.runtime_models_in_default_pool`` says so. A registration therefore cannot
        add work to every such request."""
        self.pool_deployments: list[Deployment] = []
        """The deployments of ``default_pool``, flat: routing reads it for requests that say nothing."""
        self.runtime_local_hosts: set[str] = set()
        """Hosts of runtime providers trusted as local: every connection must stay local."""
        self.views: dict[str, ProviderView] = {}
        self.stats = state.deployment_stats
        """What each deployment has shown (latency, errors, load): routing reads it."""
        self.limiters = state.rate_limiters
        """Rate limiters of the deployments that are limited (configured, or blocked by a
        provider's Retry-After): routing and the attempt chain read them."""
        self.provider_breakers = state.provider_breakers
        self.tripped: dict[DeploymentKey, Breaker] = {}
        """The deployment breakers that are not closed, what routing reads: a closed breaker
        lets every request through, so a decision over many models need not look at each.
        Kept in step by ``breaker_changed`` (every crossing to or from closed is an attempt's
        outcome) and rebuilt with the routing view."""
        self.health: dict[str, ProviderHealth] = {}
        self.on_circuit_change: Callable[[Deployment, tuple[str, str], tuple[str, str]], None] | None = None
        """Told of every breaker state change (the agent publishes it on ``provider_health``)."""
        self.on_health_change: Callable[[str, str, str], None] | None = None
        """Told of every provider health change (likewise)."""

    # ------------------------------------------------------------------ reading

    def adapter(self, deployment: Deployment) -> Adapter:
        return self.adapters[deployment.api]

    def timeout_s(self, provider: str) -> float:
        return self.state.providers[provider].timeout_ms / 1000

    def provider_stats(self, name: str) -> ProviderStats:
        """What ``provider_metrics`` says of the provider now (``provider_stats.py``)."""
        return provider_stats(self, name, self.clock())

    # ------------------------------------------------------------------ configured providers

    async def load_configured(self) -> None:
        """Providers from models.yaml; each is real, emulated (and says why) or disabled."""
        cfg = self.config
        names = list(cfg.providers)
        decisions = await asyncio.gather(*(self._emulation_for(name, cfg.providers[name]) for name in names))
        for name, (emulated, reason) in zip(names, decisions):
            provider = cfg.providers[name]
            key = read_key(provider.api_key_env, provider.api_key_file)
            enabled = provider.enabled
            api = provider.api
            if emulated:
                if self.emulator_url is None:
                    reason, enabled = f"{reason}; no emulator available", False
                key = None
            elif reason:
                enabled = False
            models = {
                model_name: build_deployment(
                    name, model_name, model, api=api, type=model.type,
                    base_url=self._config_url(provider, model.endpoint, emulated), enabled=model.enabled,
                )
                for model_name, model in cfg.models.items()
                if model.provider == name
            }
            self.add(
                ProviderEntry(
                    name=name,
                    api=api,
                    type=provider.type,
                    base_url=(provider.base_url or "").rstrip("/"),
                    models=models,
                    weight=provider.weight,
                    enabled=enabled,
                    timeout_ms=provider.timeout_ms,
                    emulated=emulated,
                    emulated_reason=reason if emulated else "",
                    has_key=key is not None,
                    source="config",
                ),
                key,
            )
            if reason and not emulated:
                self.state.provider_states[name].health_detail = reason

    def _config_url(self, provider: ProviderConfig, endpoint: str | None, emulated: bool) -> str:
        if emulated and self.emulator_url is not None:
            return emulated_base_url(self.emulator_url, provider.api)
        return endpoint or provider.base_url or ""

    async def _emulation_for(self, name: str, provider: ProviderConfig) -> tuple[bool, str]:
        """(emulated, why) for a configured provider; why without emulation means disabled."""
        mode = self.config.emulation.mode
        if provider.api not in self.adapters:  # only when a test hands in a partial set
            return False, f"no adapter for the {provider.api!r} API"
        if mode == "always":
            return True, "emulation mode is 'always'"
        if provider.type == "cloud":
            if read_key(provider.api_key_env, provider.api_key_file) is None:
                why = f"no API key in ${provider.api_key_env}" if provider.api_key_env else "no API key"
                return (mode == "auto"), why
            return False, ""
        if mode == "never":
            return False, ""
        urls = sorted({
            (model.endpoint or provider.base_url or "").rstrip("/")
            for model in self.config.models.values() if model.provider == name
        })
        results = await asyncio.gather(*(self.probe(provider.api, url, None) for url in urls))
        down = [detail for ok, detail, _ in results if not ok]
        if down:
            return True, f"local endpoint not reachable ({down[0]})"
        return False, ""

    async def probe(self, api: str, base_url: str, key: str | None) -> tuple[bool, str, bool]:
        """(reachable, detail, emulated) for an endpoint, bounded by ``probe_timeout_ms``."""
        try:
            async with asyncio.timeout(self.settings.probe_timeout_ms / 1000):
                return await self.adapters[api].probe(base_url, key)
        except TimeoutError:
            return False, f"{base_url} did not answer within {self.settings.probe_timeout_ms} ms", False

    def runtime_model_count(self, *, besides: str) -> int:
        """Models of every run-time provider except ``besides`` (which a registration replaces)."""
        return sum(
            len(e.models) for n, e in self.state.providers.items() if e.source == "runtime" and n != besides
        )

    def key_sent_elsewhere(self, key: str, base_url: str) -> bool:
        """Whether ``key`` is a configured provider's key and ``base_url`` is not one of that
        provider's own endpoints (same scheme, host and port)."""
        origin = endpoint_origin(base_url)
        for name, provider in self.config.providers.items():
            theirs = read_key(provider.api_key_env, provider.api_key_file, quiet=True)
            if theirs is None or not hmac.compare_digest(theirs.encode(), key.encode()):
                continue
            own = {provider.base_url or ""} | {
                m.endpoint or provider.base_url or "" for m in self.config.models.values() if m.provider == name
            }
            if origin is None or origin not in {endpoint_origin(url) for url in own}:
                return True
        return False

    # ------------------------------------------------------------------ changes

    def add(self, entry: ProviderEntry, key: str | None) -> None:
        """Add or replace a provider; breakers of models it keeps survive a replacement."""
        name = entry.name
        previous = self.state.providers.get(name)
        if previous is not None:
            for model in previous.models.keys() - entry.models.keys():
                self.state.circuit_breakers.pop((name, model), None)
                self.limiters.pop((name, model), None)
                self.stats.pop((name, model), None)
        self.secrets.set(name, key)
        self.state.providers[name] = entry
        self.state.provider_states.setdefault(name, ProviderState())
        now = self.clock()
        self.health.setdefault(name, ProviderHealth(now, probe_interval_s=self.settings.health.probe_interval_s))
        self.provider_breakers.setdefault(name, new_breaker(self.settings.circuit_breaker))
        for deployment in entry.models.values():
            dkey = deployment.key
            self.state.circuit_breakers.setdefault(dkey, new_breaker(self.settings.circuit_breaker))
            self.stats.setdefault(dkey, DeploymentStats())
            rpm, tpm = deployment.requests_per_minute, deployment.tokens_per_minute
            limiter = self.limiters.get(dkey)
            if limiter is not None:
                limiter.reconfigure(rpm, tpm, now)  # what was used this minute carries over
            elif rpm or tpm:
                self.limiters[dkey] = DeploymentLimiter.per_minute(rpm, tpm, now)
        self._rebuild()

    def breaker_changed(self, key: DeploymentKey) -> None:
        """A deployment's breaker changed state: ``tripped`` follows."""
        breaker = self.state.circuit_breakers.get(key)
        if breaker is None or breaker.state == "closed":
            self.tripped.pop(key, None)
        else:
            self.tripped[key] = breaker

    def reset_state(self, name: str) -> None:
        """A provider registered anew starts with fresh run-time state."""
        self.state.provider_states.pop(name, None)
        self.health.pop(name, None)
        self.provider_breakers.pop(name, None)

    # ------------------------------------------------------------------ health

    def report_health(self, name: str, status: HealthState, detail: str) -> None:
        """A ``provider_health`` report from outside: it holds until fresher own evidence."""
        self.health[name].process_report(self.clock(), status, detail)
        self.sync_health(name)

    def probe_result(self, name: str, ok: bool, detail: str) -> None:
        health = self.health.get(name)
        if health is not None:  # the provider may have gone meanwhile
            health.process_probe(self.clock(), ok, detail)
            self.sync_health(name)

    def sync_health(self, name: str) -> None:
        """Copy the provider's health machine into the state and the routing view; announce
        a change."""
        health = self.health[name]
        state = self.state.provider_states[name]
        state.uptime = round(health.uptime(self.clock()), 6)
        if health.last_error_at is not None:
            state.last_error, state.last_error_code = health.last_error, health.last_error_code
            state.last_error_at = wall_iso(health.last_error_at, self.wall_offset)
        before = state.health
        if health.state == before:
            return
        state.health = health.state
        state.health_detail = health.detail[:500]
        self.views[name].health = health.state
        if self.on_health_change is not None:
            self.on_health_change(name, before, health.state)

    def _rebuild(self) -> None:
        """Derive the routing view from the state after any provider change."""
        by_model: dict[str, list[Deployment]] = {}
        capabilities: dict[str, set[str]] = {}
        views: dict[str, ProviderView] = {}
        pool: dict[str, None] = {}
        local_hosts: set[str] = set()
        runtime_in_pool = self.config.security.runtime_models_in_default_pool
        for name, entry in self.state.providers.items():
            if entry.source == "config" or runtime_in_pool:
                pool.update(dict.fromkeys(entry.models))
            if entry.source == "runtime" and entry.type == "local":
                local_hosts.update(endpoint_host(d.base_url) for d in entry.models.values())
            pstate = self.state.provider_states[name]
            views[name] = ProviderView(enabled=entry.enabled, health=pstate.health, weight=entry.weight)
            for model_name, deployment in entry.models.items():
                by_model.setdefault(model_name, []).append(deployment)
                capabilities.setdefault(model_name, set()).update(deployment.capabilities)
        self.deployments_by_model = by_model
        self.default_pool = [m for m in by_model if m in pool]
        self.pool_deployments = [d for m in self.default_pool for d in by_model[m]]
        self.runtime_local_hosts = local_hosts
        self.views = views
        self.tripped = {k: b for k, b in self.state.circuit_breakers.items() if b.state != "closed"}
        self.state.model_capabilities = {m: sorted(c) for m, c in capabilities.items()}
        self.state.load_balancing.weights = {n: e.weight for n, e in self.state.providers.items()}
