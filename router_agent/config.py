"""Configuration: the YAML files in ``config/`` loaded into pydantic models.

``load_config(dir, environment)`` reads ``models.yaml``, ``agents.yaml``, ``routing.yaml``
and ``router.yaml``, deep-merges ``environments/<environment>.yaml`` (and any extra overlay
files) over them, and validates the result. Any problem raises ``ConfigError`` naming the
file, the key path and what is wrong, so a bad file fails at start, never mid-request.

Secrets are never read from YAML: a provider names the environment variable (or file)
holding its key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from router_agent.core.policy import Policy, PolicyError, build_policy
from router_agent.settings import (  # noqa: F401 - re-exported: router_agent.config is where callers look
    CacheConfig,
    CircuitBreakerConfig,
    EmbeddedNats,
    EmulationConfig,
    EndpointPolicy,
    LoggingConfig,
    NatsConfig,
    RouterSettings,
    SecurityConfig,
    TelemetryConfig,
    TlsConfig,
)
from signals import ProviderApi
from signals.types import (
    MAX_CONTEXT_WINDOW,
    MAX_PRICE_PER_1K_TOKENS_USD,
    MAX_RATE_PER_MINUTE,
    MAX_WEIGHT,
)

BUNDLED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
BASE_FILES = ("models.yaml", "agents.yaml", "routing.yaml", "router.yaml")
ENV_VARIABLE = "ROUTER_ENV"


class ConfigError(Exception):
    """A config file is missing, unreadable or invalid; the message says where and why."""


class UnresolvedReferences(ValueError):
    """Names that point at nothing, as (key path, message) pairs, so each names its file."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


class _Strict(BaseModel):
    """Unknown keys are errors (as in ``settings.Strict``)."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- models.yaml


class Price(_Strict):
    input: float = Field(0.0, ge=0, le=MAX_PRICE_PER_1K_TOKENS_USD)
    output: float = Field(0.0, ge=0, le=MAX_PRICE_PER_1K_TOKENS_USD)
    cached_input: float = Field(0.0, ge=0, le=MAX_PRICE_PER_1K_TOKENS_USD)
    """Input tokens read from the provider's prompt cache; 0: they cost ``input``."""


class RateLimitConfig(_Strict):
    requests_per_minute: int | None = Field(None, ge=1, le=MAX_RATE_PER_MINUTE)
    tokens_per_minute: int | None = Field(None, ge=1, le=MAX_RATE_PER_MINUTE)


class ProviderConfig(_Strict):
    api: ProviderApi = "openai"
    type: Literal["cloud", "local"] = "cloud"
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    weight: float = Field(1.0, ge=0, le=MAX_WEIGHT)
    enabled: bool = True
    timeout_ms: int = Field(60_000, ge=1)


class ModelConfig(_Strict):
    provider: str
    type: Literal["cloud", "local"] = "cloud"
    model_id: str | None = None
    model_path: str | None = None
    endpoint: str | None = None
    capabilities: list[str] = []
    cost_per_1k_tokens: Price = Price()
    rate_limits: RateLimitConfig = RateLimitConfig()
    context_window: int | None = Field(None, ge=1, le=MAX_CONTEXT_WINDOW)
    resource_requirements: dict[str, float] = {}
    performance: dict[str, float] = {}
    enabled: bool = True


# --------------------------------------------------------------------------- agents.yaml


class RoutingRule(_Strict):
    condition: str = Field(min_length=1)
    model: str


class AgentCacheConfig(_Strict):
    """An agent's opt-in to the response cache (``core/cache.py`` has the rules). The block
    opts the agent in; without one, a strategy with ``cache_responses: true`` does."""

    enabled: bool = True
    """False: never cached, also under a strategy that caches."""
    sampled: bool = False
    """Also cache requests sampled at ``temperature > 0`` or with no temperature (a repeat
    then gets the first draw again)."""
    shared: bool = True
    """Share answers to non-private requests with other agents that opted in (the key is
    over what the model saw); false keeps every entry to this agent. Private requests are
    never shared."""


class AgentConfig(_Strict):
    name: str = ""
    description: str = ""
    model_preferences: dict[str, str] = {}
    """Role -> model; ``primary`` leads when no rule decides and no strategy is chosen for
    the agent; all of them are the agent's candidates."""
    routing_rules: list[RoutingRule] = []
    capabilities_required: list[str] = []
    """Describes the agent: ranks candidates (capability match), does not filter them."""
    strategy: str | None = None
    """A strategy for this agent's requests instead of ``routing.default_strategy``."""
    pii_detection: bool = True
    """Scan this agent's prompts for personal data (always on where the environment sets
    ``require_local_for_pii``)."""
    local_only: bool = False
    """Only local models may serve this agent."""
    cache: AgentCacheConfig | None = None
    """The response cache for this agent's requests (``AgentCacheConfig``); none: the
    strategy's ``cache_responses`` decides."""


# --------------------------------------------------------------------------- routing.yaml


class HybridWeights(_Strict):
    cost_weight: float = Field(0.0, ge=0, le=1)
    latency_weight: float = Field(0.0, ge=0, le=1)
    reliability_weight: float = Field(0.0, ge=0, le=1)


class StrategyConfig(_Strict):
    description: str = ""
    base: str | None = None
    """The building block it orders with (``core.policy.BUILDING_BLOCKS``); defaults to the
    strategy's own name or, for routing.yaml's named strategies, their documented base."""
    rules: list[dict[str, Any]] = []
    weights: HybridWeights | None = None
    """``hybrid``: the weights of cost, latency and reliability."""
    model_weights: dict[str, float] = Field(default_factory=dict)
    """``weighted``: model -> weight (an A/B split); models not listed get 0 (fallback only)."""
    sticky_key: str | None = None
    """``weighted``: a ``metadata`` key (``user``): the same value always draws the same arm."""

    @model_validator(mode="after")
    def _weights_in_range(self) -> StrategyConfig:
        for model, weight in self.model_weights.items():
            if not 0 <= weight <= MAX_WEIGHT:
                raise ValueError(f"model_weights.{model}: must be within 0-{MAX_WEIGHT:g}")
        return self


class GlobalOverrides(_Strict):
    """Environment modes (``environments/*.yaml``)."""

    force_local_models: bool = False
    """Only local models serve any request."""
    require_local_for_pii: bool = False
    """A prompt with personal data goes to local models only, whatever the global rules say,
    and no agent can switch PII detection off."""
    max_cloud_spend_per_day: float | None = Field(None, ge=0)
    """USD of cloud spend per day: the ``budget`` of rules; at it, cloud models are removed."""
    verbose_routing_logs: bool = False
    """Log every routing decision (INFO): the choice, the rule, the rejections."""


class GlobalRule(_Strict):
    name: str
    condition: str
    action: str


class RoutingFactor(_Strict):
    name: str
    weight: float = Field(ge=0, le=1)
    calculation: str = ""


class RoutingConfig(_Strict):
    default_strategy: str = "round_robin"
    strategies: dict[str, StrategyConfig] = {"round_robin": StrategyConfig()}
    global_rules: list[GlobalRule] = []
    routing_factors: list[RoutingFactor] = []
    global_overrides: GlobalOverrides = GlobalOverrides()


# --------------------------------------------------------------------------- the whole


class Config(_Strict):
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    aliases: dict[str, str] = {}
    agents: dict[str, AgentConfig] = {}
    routing: RoutingConfig = RoutingConfig()
    router: RouterSettings = RouterSettings()
    nats: NatsConfig = NatsConfig()
    security: SecurityConfig = SecurityConfig()
    emulation: EmulationConfig = EmulationConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()
    _policy: Policy = PrivateAttr(default_factory=Policy)

    @property
    def policy(self) -> Policy:
        """The routing policy compiled from agents.yaml and routing.yaml (``core.policy``)."""
        return self._policy

    @model_validator(mode="after")
    def _references_resolve(self) -> Config:
        problems: list[tuple[str, str]] = []
        for name, model in self.models.items():
            if model.provider not in self.providers:
                problems.append((
                    f"models.{name}.provider",
                    f"unknown provider {model.provider!r} (known: {sorted(self.providers)})",
                ))
            elif model.endpoint is None and self.providers[model.provider].base_url is None:
                problems.append((
                    f"models.{name}.endpoint",
                    f"provider {model.provider!r} has no base_url, so the model needs its own endpoint",
                ))
        for alias, target in self.aliases.items():
            if target not in self.models:
                problems.append((f"aliases.{alias}", f"unknown model {target!r}"))
        for agent_id, agent in self.agents.items():
            for role, model in agent.model_preferences.items():
                if model not in self.models:
                    problems.append((f"agents.{agent_id}.model_preferences.{role}", f"unknown model {model!r}"))
            for i, rule in enumerate(agent.routing_rules):
                if rule.model not in self.models:
                    problems.append((f"agents.{agent_id}.routing_rules[{i}].model", f"unknown model {rule.model!r}"))
        if problems:
            raise UnresolvedReferences(problems)
        try:
            self._policy = build_policy(
                {a: agent.model_dump() for a, agent in self.agents.items()},
                self.routing.model_dump(), self.models,
            )
        except PolicyError as exc:
            raise UnresolvedReferences(exc.problems) from None
        return self


# --------------------------------------------------------------------------- loading

# Which base file a top-level key belongs to, to name the file in error messages.
_KEY_FILES = {
    "providers": "models.yaml",
    "models": "models.yaml",
    "aliases": "models.yaml",
    "agents": "agents.yaml",
    "routing": "routing.yaml",
}


def load_config(
    config_dir: str | Path | None = None,
    environment: str | None = None,
    overlays: list[str | Path] | None = None,
) -> Config:
    """Load and validate the config directory; the environment defaults to $ROUTER_ENV."""
    directory = Path(config_dir) if config_dir else BUNDLED_CONFIG_DIR
    if not directory.is_dir():
        raise ConfigError(f"{directory}: config directory not found")
    environment = environment if environment is not None else os.environ.get(ENV_VARIABLE) or None

    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in BASE_FILES:
        path = directory / name
        if not path.exists():
            continue
        document = _read_yaml(path)
        for key in document:
            if key in merged:
                raise ConfigError(f"{path}: key {key!r} is already defined in {origin[key]}")
            origin[key] = str(path)
        merged.update(document)

    overlay_paths: list[Path] = []
    if environment:
        env_path = directory / "environments" / f"{environment}.yaml"
        if not env_path.exists():
            known = sorted(p.stem for p in (directory / "environments").glob("*.yaml"))
            raise ConfigError(f"{env_path}: unknown environment {environment!r} (known: {known})")
        overlay_paths.append(env_path)
    overlay_paths += [Path(p) for p in overlays or []]
    for path in overlay_paths:
        _deep_merge(merged, _read_yaml(path), origin, str(path))

    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, directory)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(document).__name__}")
    return document


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any], origin: dict[str, str], source: str) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, origin, source)
        else:
            base[key] = value
        origin.setdefault(key, source)
        if origin[key] != source and source not in origin[key]:
            origin[key] = f"{origin[key]} (with overlay {source})"


def _describe(exc: ValidationError, origin: dict[str, str], directory: Path) -> str:
    def file_of(top: str) -> str:
        return origin.get(top) or str(directory / _KEY_FILES.get(top, "router.yaml"))

    lines = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, UnresolvedReferences):
            lines += [f"{file_of(path.split('.', 1)[0])}: {path}: {message}" for path, message in cause.problems]
            continue
        loc = [str(part) for part in error["loc"]]
        top = loc[0] if loc else ""
        where = file_of(top)
        path = _format_path(error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{where}: {path}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
