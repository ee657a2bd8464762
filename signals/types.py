"""Every signal's payload (the CloudEvent ``data``) as a typed msgspec Struct.

Rules of this file:
- It is the wire contract. Another agent imports it without importing the router.
- Field names are snake_case JSON; optional fields default so that senders may omit them.
- Structs are ``kw_only`` and ``forbid_unknown_fields`` where a typo would silently change
  behaviour (requests, registrations); telemetry payloads stay open for additive change.
- JSON Schema and ``docs/signals.md`` are generated from these types (``signals.schema``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

# --------------------------------------------------------------------------- shared pieces

Identifier = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
"""An id chosen by a caller or operator: request ids, agent ids, provider and model names."""

ProviderApi = Literal["openai", "anthropic", "gemini"]
"""Wire formats the contract knows; ``openai`` covers vLLM, llama.cpp, LM Studio and Ollama's
OpenAI-compatible endpoint. The router says which it has an adapter for."""

NonNegative = Annotated[float, Meta(ge=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]

ErrorCode = Literal[
    "malformed_json",
    "invalid_request",
    "unsupported_version",
    "payload_too_large",
    "no_candidates",
    "all_providers_failed",
    "provider_error",
    "budget_exceeded",
    "rate_limited",
    "timeout",
    "overloaded",
    "shutting_down",
    "invalid_provider_config",
    "endpoint_not_allowed",
    "probe_failed",
    "unknown_provider",
    "internal",
]


class ErrorInfo(Struct, kw_only=True, omit_defaults=True):
    """The typed error carried by every failed answer."""

    code: ErrorCode
    message: str
    retryable: bool = False
    field: str | None = None
    """Key path of the offending field (``$.data.messages[0].role``) for validation errors."""


class Usage(Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0


# --------------------------------------------------------------------------- llm_request


class ChatMessage(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One message in the OpenAI chat shape."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None


class Params(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Sampling parameters passed to the provider."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None


class Task(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What the caller says about the work; routing rules in ``config/agents.yaml`` read it."""

    type: str | None = None
    complexity: Annotated[int, Meta(ge=0, le=10)] | None = None
    privacy_level: Literal["low", "normal", "high"] | None = None
    critical: bool = False
    involves_ui_design: bool = False
    requires_reasoning: bool = False
    tags: dict[str, str | int | float | bool] = {}


class Requirements(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Hard constraints: a candidate that misses one is removed, never ranked."""

    capabilities: list[str] = []
    max_cost_usd: NonNegative | None = None
    max_latency_ms: Annotated[int, Meta(ge=1)] | None = None
    """Removes deployments whose observed latency (an average of their successful
    attempts) is above it; a deployment not yet observed is kept."""
    model_type: Literal["cloud", "local"] | None = None


class LlmRequest(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A request for one chat completion."""

    request_id: Identifier
    agent_id: Identifier
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: Identifier | None = None
    """A model name or alias the caller insists on; routing then only picks the provider."""
    params: Params = msgspec.field(default_factory=Params)
    task: Task = msgspec.field(default_factory=Task)
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    stream: bool = False
    """Streaming is not supported yet: the answer comes as one final ``llm_response``
    carrying a warning that says so."""
    timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] | None = None
    metadata: dict[str, str] = {}


# --------------------------------------------------------------------------- routing_decision


class Candidate(Struct, kw_only=True, omit_defaults=True):
    provider: str
    model: str
    score: float = 0.0
    estimated_cost_usd: float = 0.0


class Rejection(Struct, kw_only=True):
    provider: str
    model: str
    constraint: str
    """The hard constraint that removed it: ``disabled``, ``privacy``, ``capability``, ..."""
    detail: str = ""


class RoutingDecision(Struct, kw_only=True, omit_defaults=True):
    """What the router chose for a request, and why."""

    request_id: str
    agent_id: str
    strategy: str
    reason: str
    chosen: Candidate | None = None
    fallbacks: list[Candidate] = []
    rejected: list[Rejection] = []
    emulated: bool = False


# --------------------------------------------------------------------------- llm_response


class Attempt(Struct, kw_only=True, omit_defaults=True):
    provider: str
    model: str
    outcome: Literal["ok", "error", "timeout", "skipped"]
    latency_ms: float = 0.0
    error: ErrorInfo | None = None


class AssistantMessage(Struct, kw_only=True):
    """The OpenAI assistant-message shape; ``role`` is always on the wire."""

    role: Literal["assistant"] = "assistant"
    content: str = ""


class LlmResponse(Struct, kw_only=True, omit_defaults=True):
    """The one terminal answer to an ``llm_request``: a completion or a typed error."""

    request_id: str
    status: Literal["ok", "error"]
    agent_id: str = ""
    message: AssistantMessage | None = None
    model: str = ""
    provider: str = ""
    emulated: bool = False
    finish_reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: list[Attempt] = []
    error: ErrorInfo | None = None
    warnings: list[str] = []
    """Things the caller asked for that this answer does not do as asked (for example
    ``stream: true`` before streaming lands: the answer comes as one final message)."""


# --------------------------------------------------------------------------- providers


class ModelPrice(Struct, kw_only=True, forbid_unknown_fields=True):
    input: NonNegative = 0.0
    output: NonNegative = 0.0


class RateLimits(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None


class ModelSpec(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One model a provider serves."""

    name: Identifier
    """The router's name for the model (what callers and agents.yaml say)."""
    model_id: str | None = None
    """The provider's own id for it; defaults to ``name``."""
    capabilities: list[str] = []
    cost_per_1k_tokens: ModelPrice = msgspec.field(default_factory=ModelPrice)
    context_window: Annotated[int, Meta(ge=1)] | None = None
    rate_limits: RateLimits = msgspec.field(default_factory=RateLimits)


class ProviderRegister(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Adds a provider (and its models) at run time."""

    provider: Identifier
    api: ProviderApi = "openai"
    """Wire format spoken by the endpoint; a router without an adapter for it refuses the
    registration (``invalid_provider_config``)."""
    base_url: Annotated[str, Meta(min_length=1, max_length=2048)]
    type: Literal["cloud", "local"] = "local"
    models: Annotated[list[ModelSpec], Meta(min_length=1)]
    api_key_env: str | None = None
    """Name of the environment variable holding the key (preferred)."""
    api_key_file: str | None = None
    api_key: str | None = None
    """A raw key: accepted only where config allows it; never echoed or stored in dumps."""
    weight: Annotated[float, Meta(ge=0)] = 1.0
    """Share of first choices relative to the other candidates of a request (round robin is
    weighted by it); 0 makes the provider a fallback only."""
    enabled: bool = True
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None
    """One attempt's timeout; when it passes, the attempt counts as the provider's failure
    and the request moves on to its next candidate (the request's deadline still bounds it)."""


class ProviderRegistered(Struct, kw_only=True, omit_defaults=True):
    """Answer to ``provider_register`` and ``provider_update``: accepted, or why not."""

    provider: str
    accepted: bool
    action: Literal["register", "update"] = "register"
    models: list[str] = []
    emulated: bool = False
    errors: list[ErrorInfo] = []


class ModelUpdate(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: Identifier
    cost_per_1k_tokens: ModelPrice | None = None
    rate_limits: RateLimits | None = None
    enabled: bool | None = None


class ProviderUpdate(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Changes a registered provider at run time; omitted fields stay as they are."""

    provider: Identifier
    enabled: bool | None = None
    weight: Annotated[float, Meta(ge=0)] | None = None
    """Share of first choices relative to the other candidates of a request (round robin is
    weighted by it); 0 makes the provider a fallback only."""
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None
    """One attempt's timeout; when it passes, the attempt counts as the provider's failure
    and the request moves on to its next candidate (the request's deadline still bounds it)."""
    models: list[ModelUpdate] = []


class ProviderHealth(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A health check result about a provider, from the router itself or an outside monitor."""

    provider: Identifier
    status: Literal["healthy", "degraded", "unhealthy"]
    latency_ms: NonNegative | None = None
    detail: str = ""


class ProviderStats(Struct, kw_only=True, omit_defaults=True):
    provider: str
    health: str
    circuit: str
    enabled: bool
    emulated: bool
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    error_rate: float = 0.0
    avg_latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class ProviderMetrics(Struct, kw_only=True, omit_defaults=True):
    """Periodic snapshot of one provider as one router instance sees it."""

    instance_id: str
    window_s: float
    stats: ProviderStats


class CostLine(Struct, kw_only=True):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class CostReport(Struct, kw_only=True, omit_defaults=True):
    """Periodic cost ledger of one router instance since it started."""

    instance_id: str
    since: str
    total: CostLine
    by_agent: dict[str, CostLine] = {}
    by_model: dict[str, CostLine] = {}
    by_provider: dict[str, CostLine] = {}


class RouterError(Struct, kw_only=True, omit_defaults=True):
    """Answer to bad input on a subject whose signal has no answer of its own."""

    subject: str
    error: ErrorInfo


# The registry below drives decoding, schema export and the docs. Keep it complete.
SIGNAL_TYPES: dict[str, type[Struct]] = {
    "llm_request": LlmRequest,
    "llm_response": LlmResponse,
    "routing_decision": RoutingDecision,
    "provider_register": ProviderRegister,
    "provider_registered": ProviderRegistered,
    "provider_update": ProviderUpdate,
    "provider_health": ProviderHealth,
    "provider_metrics": ProviderMetrics,
    "cost_report": CostReport,
    "router_error": RouterError,
}

__all__ = [
    "SIGNAL_TYPES",
    "AssistantMessage",
    "Attempt",
    "Candidate",
    "ChatMessage",
    "CostLine",
    "CostReport",
    "ErrorCode",
    "ErrorInfo",
    "Identifier",
    "LlmRequest",
    "LlmResponse",
    "ModelPrice",
    "ModelSpec",
    "ModelUpdate",
    "Params",
    "ProviderApi",
    "ProviderHealth",
    "ProviderMetrics",
    "ProviderRegister",
    "ProviderRegistered",
    "ProviderStats",
    "ProviderUpdate",
    "RateLimits",
    "Rejection",
    "Requirements",
    "RouterError",
    "RoutingDecision",
    "Task",
    "Usage",
]
