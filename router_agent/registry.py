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
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from router_agent.config import Config, ProviderConfig
from router_agent.core.breaker import Admission, Breaker
from router_agent.core.endpoints import endpoint_host, endpoint_origin
from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats
from router_agent.core.routing import ProviderView
from router_agent.http import HttpClient
from router_agent.providers import ADAPTERS
from router_agent.providers.base import Adapter
from router_agent.state import ProviderEntry, ProviderState, RateLimiter, RouterState, SecretStore
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
        context_window=spec.context_window,
        requests_per_minute=spec.rate_limits.requests_per_minute,
        tokens_per_minute=spec.rate_limits.tokens_per_minute,
        tokens_per_second=(getattr(spec, "performance", None) or {}).get("tokens_per_second"),
        enabled=enabled,
    )


MAX_KEY_LENGTH = 4096
"""Longest API key accepted (vendors' keys are ~50-200 characters)."""


class KeyProblem(ValueError):
    """A key reference that cannot be used. The message says why and never holds the key."""


def check_key_text(value: str) -> str:
    """The key ``value`` holds: one line of printable ASCII (it becomes an HTTP header),
    surrounding whitespace removed; else ``KeyProblem``."""
    key = value.strip()
    if not key:
        raise KeyProblem("is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyProblem(f"is longer than {MAX_KEY_LENGTH} characters")
    if not (key.isascii() and key.isprintable()):
        raise KeyProblem("must hold one line of printable ASCII (the key), nothing else")
    return key


def read_key_file(path: str | Path) -> str:
    """The key in a regular file of one line; ``KeyProblem`` otherwise. Reads at most a few KB
    and never blocks on a FIFO or device (``/proc/self/fd/0``, ``/dev/stdin``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise KeyProblem(f"cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyProblem("is not a regular file")
        data = b""
        while len(data) <= MAX_KEY_LENGTH + 2:
            chunk = os.read(fd, MAX_KEY_LENGTH + 3 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise KeyProblem(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem("must hold one line of printable ASCII (the key), nothing else") from None
    return check_key_text(text)


def read_key(env_name: str | None, file_name: str | None, *, quiet: bool = False) -> str | None:
    """A configured provider's key, or None when there is none or it is unusable (then the
    provider counts as keyless, and is emulated or disabled, rather than failing every call)."""
    try:
        if env_name:
            value = os.environ.get(env_name)
            if value:
                return check_key_text(value)
        if file_name:
            return read_key_file(file_name)
    except KeyProblem as exc:
        if not quiet:
            log.warning("the key in %s %s", f"${env_name}" if env_name else file_name, exc)
    return None


class ProviderRegistry:
    def __init__(
        self,
        config: Config,
        state: RouterState,
        http: HttpClient,
        emulator_url: str | None = None,
        adapters: Mapping[str, Adapter] | None = None,
    ):
        self.config = config
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
        """What each deployment has shown (latency, errors, load, rate): routing reads it."""

    # ------------------------------------------------------------------ reading

    def adapter(self, deployment: Deployment) -> Adapter:
        return self.adapters[deployment.api]

    def timeout_s(self, provider: str) -> float:
        return self.state.providers[provider].timeout_ms / 1000

    def provider_stats(self, name: str) -> ProviderStats:
        entry = self.state.providers[name]
        p = self.state.provider_states[name]
        breakers = self.state.circuit_breakers
        states = {breakers[(name, model)].state for model in entry.models if (name, model) in breakers}
        circuit = "open" if "open" in states else "half_open" if "half_open" in states else "closed"
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
        )

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
                self.state.rate_limiters.pop((name, model), None)
                self.stats.pop((name, model), None)
        self.secrets.set(name, key)
        self.state.providers[name] = entry
        self.state.provider_states.setdefault(name, ProviderState())
        cb = self.settings.circuit_breaker
        for deployment in entry.models.values():
            self.state.circuit_breakers.setdefault(
                deployment.key, Breaker(threshold=cb.failure_threshold, cooldown_s=cb.cooldown_s)
            )
            self.stats.setdefault(deployment.key, DeploymentStats())
            self.state.rate_limiters[deployment.key] = RateLimiter(
                requests_per_minute=deployment.requests_per_minute,
                tokens_per_minute=deployment.tokens_per_minute,
            )
        self._rebuild()

    def reset_state(self, name: str) -> None:
        """A provider registered anew starts with fresh run-time state."""
        self.state.provider_states.pop(name, None)

    def set_health(self, name: str, status: str, detail: str) -> None:
        state = self.state.provider_states[name]
        state.health = status  # type: ignore[assignment]  # validated by the signal's type
        state.health_detail = detail[:500]
        self.views[name].health = status

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
        self.state.model_capabilities = {m: sorted(c) for m, c in capabilities.items()}
        self.state.load_balancing.weights = {n: e.weight for n, e in self.state.providers.items()}

    # ------------------------------------------------------------------ outcomes of attempts

    def attempt_started(self, deployment: Deployment, now: float, tokens: int) -> None:
        self.state.provider_states[deployment.provider].in_flight += 1
        self.stats[deployment.key].started(now, tokens)

    def record_success(
        self, deployment: Deployment, admission: Admission, latency_ms: float,
        tokens_in: int, tokens_out: int, cost: float,
    ) -> None:
        self.state.circuit_breakers[deployment.key].process_success(admission)
        p = self._finished(deployment, latency_ms)
        p.successes += 1
        p.input_tokens += tokens_in
        p.output_tokens += tokens_out
        p.cost_usd += cost
        self.stats[deployment.key].succeeded(latency_ms)

    def record_failure(self, deployment: Deployment, admission: Admission, latency_ms: float, now: float) -> None:
        """A failure the provider is responsible for: counted, and the breaker learns of it."""
        self.state.circuit_breakers[deployment.key].process_failure(admission, now)
        self._finished(deployment, latency_ms).failures += 1
        self.stats[deployment.key].failed()

    def record_abandon(self, deployment: Deployment, admission: Admission) -> None:
        """The attempt ended for a reason that is not the provider's: nothing is counted."""
        self.state.circuit_breakers[deployment.key].process_abandon(admission)
        self.state.provider_states[deployment.provider].in_flight -= 1
        self.stats[deployment.key].abandoned()

    def _finished(self, deployment: Deployment, latency_ms: float) -> ProviderState:
        p = self.state.provider_states[deployment.provider]
        p.in_flight -= 1
        p.requests += 1
        p.latency_ms_total += latency_ms
        self.state.metrics.requests_by_provider[deployment.provider] = p.requests
        return p
