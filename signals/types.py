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

# --------------------------------------------------------------------------- limits
#
# Every number a caller or operator sends is bounded, so that arithmetic on it stays finite
# (a price of 1.7e308 once made costs infinite, which JSON writes as null) and an upstream
# API can take what is forwarded to it; every string and list that is copied into signals,
# logs or upstream requests is bounded, so that one small message cannot make much work.
# The limits are far beyond what a real deployment sends. Config loaders may import them.

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_PRICE_PER_1K_TOKENS_USD = 1_000.0
MAX_CONTEXT_WINDOW = 100_000_000
MAX_RATE_PER_MINUTE = 1_000_000_000
MAX_WEIGHT = 1_000.0
MAX_COST_USD = 1_000_000.0
MAX_LATENCY_MS = 3_600_000
MAX_MODELS_PER_PROVIDER = 256
MAX_CAPABILITIES = 64

# --------------------------------------------------------------------------- shared pieces

# Patterns end in ``\Z``, not ``$``: in Python ``$`` also matches before a final newline, so
# ``"rid\n"`` passed. The exported JSON Schema writes ``$``, which in an ECMA-262 regex (what
# JSON Schema uses) already means the very end (``signals.schema``).

Identifier = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+\Z")]
"""An id chosen by a caller or operator: request ids, agent ids, provider and model names.
No spaces or line breaks, so it can be logged as it is; ``signals.subjects.token`` maps it to
one subject token, one token per id."""

Capability = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@/-]+\Z")]
"""A capability name (``code_generation``): the characters of an Identifier, at most 64."""

Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
Price = Annotated[float, Meta(ge=0, le=MAX_PRICE_PER_1K_TOKENS_USD)]
RatePerMinute = Annotated[int, Meta(ge=1, le=MAX_RATE_PER_MINUTE)]
Weight = Annotated[float, Meta(ge=0, le=MAX_WEIGHT)]

ProviderApi = Literal["openai", "anthropic", "gemini"]
"""Wire formats the contract knows; ``openai`` covers vLLM, llama.cpp, LM Studio and Ollama's
OpenAI-compatible endpoint. The router says which it has an adapter for."""

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
    """Bounded only by the router's ``max_payload_bytes``."""
    name: Annotated[str, Meta(max_length=128)] | None = None


class Params(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Sampling parameters passed to the provider."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    stop: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=16)] | None = None
    """At most 16 stop sequences of at most 256 characters each."""
    seed: Int64 | None = None
    """A signed 64-bit integer."""
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None


class Task(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What the caller says about the work; routing rules in ``config/agents.yaml`` read it."""

    id: Identifier | None = None
    """The caller's id for the task (several requests may serve one task); the control
    service can force a model for a task id."""
    type: Annotated[str, Meta(max_length=128)] | None = None
    complexity: Annotated[int, Meta(ge=0, le=10)] | None = None
    privacy_level: Literal["low", "normal", "high"] | None = None
    critical: bool = False
    involves_ui_design: bool = False
    requires_reasoning: bool = False
    tags: Annotated[
        dict[
            Annotated[str, Meta(max_length=64)],
            Annotated[str, Meta(max_length=256)]
            | Int64
            | Annotated[float, Meta(ge=float(INT64_MIN), le=float(INT64_MAX))]
            | bool,
        ],
        Meta(max_length=32),
    ] = {}
    """At most 32 tags; keys up to 64 characters, text values up to 256, numbers within the
    64-bit integer range."""


class Requirements(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Hard constraints: a candidate that misses one is removed, never ranked."""

    capabilities: Annotated[list[Capability], Meta(max_length=MAX_CAPABILITIES)] = []
    """At most 64 capability names, every one required of a candidate."""
    max_cost_usd: Annotated[float, Meta(ge=0, le=MAX_COST_USD)] | None = None
    """The estimated cost of the request, in USD, above which a candidate is removed (at most
    1,000,000)."""
    max_latency_ms: Annotated[int, Meta(ge=1, le=MAX_LATENCY_MS)] | None = None
    """Removes deployments whose observed latency (an average of their successful
    attempts) is above it; a deployment not yet observed is kept. At most 3,600,000 (an hour)."""
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
    metadata: Annotated[
        dict[Annotated[str, Meta(max_length=128)], Annotated[str, Meta(max_length=2048)]],
        Meta(max_length=64),
    ] = {}
    """At most 64 entries; keys up to 128 characters, values up to 2,048."""


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
    """Candidates a hard constraint removed, each with the constraint; at most
    ``MAX_REJECTIONS_LISTED`` (the rest are counted in ``rejected_omitted``)."""
    rejected_omitted: int = 0
    emulated: bool = False


MAX_REJECTIONS_LISTED = 32
"""A decision lists this many rejected candidates at most, so its size does not grow with
the registry."""


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
    """USD per 1,000 tokens; at most 1,000, so that every cost the router computes is finite."""

    input: Price = 0.0
    output: Price = 0.0


class RateLimits(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Per minute, at most 1,000,000,000."""

    requests_per_minute: RatePerMinute | None = None
    tokens_per_minute: RatePerMinute | None = None


class ModelSpec(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One model a provider serves."""

    name: Identifier
    """The router's name for the model (what callers and agents.yaml say)."""
    model_id: Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[!-~]+\Z")] | None = None
    """The provider's own id for it (``mistralai/Mistral-7B-Instruct``); defaults to ``name``.
    Printable ASCII without spaces, at most 256 characters."""
    capabilities: Annotated[list[Capability], Meta(max_length=MAX_CAPABILITIES)] = []
    """At most 64 capability names."""
    cost_per_1k_tokens: ModelPrice = msgspec.field(default_factory=ModelPrice)
    context_window: Annotated[int, Meta(ge=1, le=MAX_CONTEXT_WINDOW)] | None = None
    """In tokens, at most 100,000,000."""
    rate_limits: RateLimits = msgspec.field(default_factory=RateLimits)


class ProviderRegister(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Adds a provider (and its models) at run time."""

    provider: Identifier
    api: ProviderApi = "openai"
    """Wire format spoken by the endpoint; a router without an adapter for it refuses the
    registration (``invalid_provider_config``)."""
    base_url: Annotated[str, Meta(min_length=1, max_length=2048)]
    type: Literal["cloud", "local"] = "local"
    models: Annotated[list[ModelSpec], Meta(min_length=1, max_length=MAX_MODELS_PER_PROVIDER)]
    """At most 256 models per provider."""
    api_key_env: Annotated[str, Meta(max_length=256)] | None = None
    """Name of the environment variable holding the key (preferred)."""
    api_key_file: Annotated[str, Meta(max_length=4096)] | None = None
    api_key: Annotated[str, Meta(max_length=4096)] | None = None
    """A raw key: accepted only where config allows it; never echoed or stored in dumps."""
    weight: Weight = 1.0
    """Share of first choices relative to the other candidates of a request (round robin is
    weighted by it), at most 1,000; 0 makes the provider a fallback only."""
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
    weight: Weight | None = None
    """Share of first choices relative to the other candidates of a request (round robin is
    weighted by it), at most 1,000; 0 makes the provider a fallback only."""
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] | None = None
    """One attempt's timeout; when it passes, the attempt counts as the provider's failure
    and the request moves on to its next candidate (the request's deadline still bounds it)."""
    models: Annotated[list[ModelUpdate], Meta(max_length=MAX_MODELS_PER_PROVIDER)] = []
    """At most 256 models."""


class ProviderHealth(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A health check result about a provider, from the router itself or an outside monitor."""

    provider: Identifier
    status: Literal["healthy", "degraded", "unhealthy"]
    latency_ms: Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)] | None = None
    """At most 3,600,000 (an hour)."""
    detail: Annotated[str, Meta(max_length=500)] = ""
    """At most 500 characters."""


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
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CAPABILITIES",
    "MAX_CONTEXT_WINDOW",
    "MAX_COST_USD",
    "MAX_LATENCY_MS",
    "MAX_MODELS_PER_PROVIDER",
    "MAX_PRICE_PER_1K_TOKENS_USD",
    "MAX_RATE_PER_MINUTE",
    "MAX_WEIGHT",
    "SIGNAL_TYPES",
    "AssistantMessage",
    "Attempt",
    "Candidate",
    "Capability",
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
