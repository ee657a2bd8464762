"""Every signal's payload (the CloudEvent ``data``) as a typed msgspec Struct.

Rules of this file:
- It is the wire contract. Another agent imports it without importing the router.
- Field names are snake_case JSON; optional fields default so that senders may omit them.
- Structs are ``kw_only`` and ``forbid_unknown_fields`` where a typo would silently change
  behaviour (requests, registrations); telemetry payloads stay open for additive change.
- JSON Schema and ``docs/signals.md`` are generated from these types (``signals.schema``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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

ProviderApi = Literal["openai", "anthropic", "gemini", "ollama"]
"""Wire formats the contract knows: OpenAI Chat Completions (also vLLM, llama.cpp, LM Studio
and Ollama's OpenAI-compatible endpoint), Anthropic Messages, Gemini ``generateContent`` and
Ollama's native ``/api/chat``."""

Probability = Annotated[float, Meta(ge=0, le=1)]

ErrorCode = Literal[
    "malformed_json",
    "invalid_request",
    "unsupported_version",
    "payload_too_large",
    "no_candidates",
    "all_providers_failed",
    "provider_error",
    "server_error",
    "connection_error",
    "auth_error",
    "bad_request",
    "context_length_exceeded",
    "content_filtered",
    "not_found",
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
    retry_after_ms: float | None = None
    """``overloaded`` / ``rate_limited``: how long to wait before asking again (for
    ``rate_limited``, the time the request would have needed)."""


class Usage(Struct, kw_only=True):
    """Tokens of one completion. ``input_tokens`` counts every input token, cached and
    cache-written ones included; ``output_tokens`` counts every output token, reasoning
    ones included (whatever each vendor's own split is)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    """Of ``input_tokens``, those read from the provider's prompt cache."""
    cache_creation_input_tokens: int = 0
    """Of ``input_tokens``, those written to the provider's prompt cache (Anthropic)."""
    reasoning_tokens: int = 0
    """Of ``output_tokens``, those spent on hidden reasoning."""
    estimated: bool = False
    """The provider reported no usage (some streams do not): the router estimated it."""


# --------------------------------------------------------------------------- llm_request


# The OpenAI chat shape, completed with what agents send in practice: content parts (text and
# images), tools and tool calls, response formats. Adapters translate it to each vendor's own.

MAX_TEXT_CHARS = 16_000_000
"""A text part, tool-call arguments, an image URL: far above ``max_payload_bytes``, which is
what really bounds them; the bound is there so no field is unbounded by accident."""
MAX_CONTENT_PARTS = 1024
MAX_TOOLS = 128
"""OpenAI's own limit on tools per request."""
MAX_SCHEMA_KEYS = 64

ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+\Z")]
"""A function name every vendor accepts (OpenAI's rule: letters, digits, ``_``, ``-``, 64 at most)."""
ToolCallId = Annotated[str, Meta(min_length=1, max_length=256)]
JsonSchema = Annotated[dict[Annotated[str, Meta(max_length=256)], Any], Meta(max_length=MAX_SCHEMA_KEYS)]
"""A JSON Schema object (its nesting is bounded by the envelope's depth limit)."""
LongText = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]


class ImageUrl(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_CHARS)]
    """``https://...`` or a data URL (``data:image/png;base64,...``)."""
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Struct, tag_field="type", tag="text", kw_only=True, forbid_unknown_fields=True):
    """``{"type": "text", "text": ...}``"""

    text: LongText


class ImagePart(Struct, tag_field="type", tag="image_url", kw_only=True, forbid_unknown_fields=True):
    """``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``"""

    image_url: ImageUrl


ContentPart = TextPart | ImagePart


class FunctionCall(Struct, kw_only=True, forbid_unknown_fields=True):
    name: ToolName
    arguments: LongText = "{}"
    """The arguments as a JSON text, as the model wrote them (it may not be valid JSON)."""


class ToolCall(Struct, kw_only=True, forbid_unknown_fields=True):
    """A call the assistant asked for; the caller answers it with a ``tool`` message."""

    id: ToolCallId
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One message in the OpenAI chat shape."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | Annotated[list[ContentPart], Meta(max_length=MAX_CONTENT_PARTS)] | None = None
    """A string, or a list of text and image parts; null only in an assistant message that
    carries ``tool_calls``. Bounded only by the router's ``max_payload_bytes``."""
    name: Annotated[str, Meta(max_length=128)] | None = None
    tool_calls: Annotated[list[ToolCall], Meta(max_length=MAX_TOOLS)] | None = None
    """Assistant messages only: the calls the assistant made."""
    tool_call_id: ToolCallId | None = None
    """``tool`` messages only, and required there: the call this message answers."""

    def __post_init__(self) -> None:
        # Cheap checks (this runs for every message decoded); msgspec reports them as
        # validation errors at the message's path.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only in an assistant message with tool_calls")
        if self.role == "tool":
            if self.tool_call_id is None:
                raise ValueError("a tool message needs tool_call_id")
        elif self.tool_call_id is not None:
            raise ValueError("tool_call_id belongs in tool messages only")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong in assistant messages only")


class FunctionDef(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: ToolName
    description: Annotated[str, Meta(max_length=100_000)] | None = None
    parameters: JsonSchema | None = None
    """A JSON Schema object for the arguments; none means the function takes none."""
    strict: bool | None = None
    """OpenAI's strict schema adherence; other vendors ignore it."""


class Tool(Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(Struct, kw_only=True, forbid_unknown_fields=True):
    name: ToolName


class ToolChoiceFunction(Struct, kw_only=True, forbid_unknown_fields=True):
    """Force a call to one named function."""

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["auto", "none", "required"] | ToolChoiceFunction


class JsonSchemaSpec(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    name: ToolName
    schema: JsonSchema
    description: Annotated[str, Meta(max_length=100_000)] | None = None
    strict: bool | None = None


class TextFormat(Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    """Free text (the default)."""


class JsonObjectFormat(Struct, tag_field="type", tag="json_object", forbid_unknown_fields=True):
    """Any JSON object (needs a model with ``json_mode``)."""


class JsonSchemaFormat(Struct, tag_field="type", tag="json_schema", kw_only=True, forbid_unknown_fields=True):
    """JSON that follows a schema (needs a model with ``structured_output``)."""

    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


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
    tools: Annotated[list[Tool], Meta(max_length=MAX_TOOLS)] = []
    """Functions the model may call (needs a model with ``tool_calling``); at most 128."""
    tool_choice: ToolChoice | None = None
    """``auto`` (the default with tools), ``none``, ``required`` or one named function."""
    response_format: ResponseFormat | None = None
    stream: bool = False
    """Stream the answer: ``llm_chunk`` signals as the provider generates it (on the reply
    subject, else on ``llm_chunk.<agent_id>``), then the one terminal ``llm_response``. A
    request a ``quality_assurance`` rule verifies is answered whole, with a warning."""
    timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] | None = None
    """The request's deadline: bounds routing, every attempt, retry and wait."""
    priority: Annotated[int, Meta(ge=0, le=9)] = 5
    """0-9, higher first: the order of requests waiting for a rate limit."""
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
    """The ``routing_factors`` score, 0-1: the weighted sum of task-complexity fit, cost
    efficiency, privacy fit, speed and availability (weights in ``routing.yaml``)."""
    estimated_cost_usd: float = 0.0
    suitability: int = 0
    """1-5: how well the model suits the task type (its capabilities, its strength for the
    complexity, its observed outcomes)."""


class Rejection(Struct, kw_only=True):
    provider: str
    model: str
    constraint: str
    """The hard constraint that removed it: ``disabled``, ``privacy``, ``capability``, ..."""
    detail: str = ""


class RoutingDecision(Struct, kw_only=True, omit_defaults=True):
    """What the router chose for a request, and why: enough to answer "why did my request
    go there?" without reading code."""

    request_id: str
    agent_id: str
    strategy: str
    """The strategy that ranked the candidates (an override, the agent's or the default)."""
    reason: str
    """Where the candidates came from, what chose the first, and how the strategy was chosen."""
    rule: str = ""
    """What put the first choice first: an agent rule (``agents.<id>.routing_rules[i]``),
    ``caller`` (the request named the model), ``forced`` (an operator forced it for the
    task), ``primary`` (the agent's primary model), ``strategy``, or a global rule's name."""
    confidence: float = 0.0
    """0-1: 1 when the caller or an operator named the model; else from the first choice's
    suitability and its score's margin over the runner-up."""
    complexity: int = 0
    """The task complexity (0-10) routing used."""
    complexity_source: Literal["request", "estimated", ""] = ""
    pii_kinds: list[str] = []
    """Kinds of personal data found in the prompt (``email``, ``payment_card``...), never
    the values."""
    privacy: str = ""
    """The local-only constraint applied, when one was (privacy, PII, environment, budget rule)."""
    chosen: Candidate | None = None
    fallbacks: list[Candidate] = []
    """In the order they will be tried; each passed every hard constraint."""
    estimated_cost_usd: float = 0.0
    """The chosen candidate's estimated cost."""
    verify_with: Candidate | None = None
    """A quality_assurance rule asked for a verification of the answer by this model."""
    notes: list[str] = []
    """Rules that matched but could not decide (their model was removed), rules that moved
    candidates, thresholds that switched the preferred model type."""
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
    """One try of one deployment. ``skipped``: not sent (a budget refused it);
    ``cancelled``: sent, then given up because another attempt (a hedge) answered first."""

    provider: str
    model: str
    outcome: Literal["ok", "error", "timeout", "skipped", "cancelled"]
    latency_ms: float = 0.0
    error: ErrorInfo | None = None
    retry: bool = False
    """The same deployment tried again after a backoff (not a fallback to another)."""
    hedge: bool = False
    """Started while an earlier attempt was still running (``parallel_requests``)."""
    cost_usd: float = 0.0
    """What this attempt was billed (a cancelled hedge: its estimated input)."""


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
"""Why generation ended, the same for every vendor: ``stop`` (natural end or a stop
sequence), ``length`` (max_tokens), ``tool_calls``, ``content_filter``, ``error``."""


class AssistantMessage(Struct, kw_only=True):
    """The OpenAI assistant-message shape; ``role`` and ``tool_calls`` are always on the wire."""

    role: Literal["assistant"] = "assistant"
    content: str = ""
    tool_calls: list[ToolCall] = []


class Verification(Struct, kw_only=True):
    """A quality_assurance verification: a draft by one model, checked by a stronger one.
    ``verified``: the answer is the verifier's; ``failed``: the verifier failed, the answer
    is the draft, unverified."""

    status: Literal["verified", "failed"]
    draft_model: str
    draft_provider: str
    verifier_model: str
    verifier_provider: str


class StreamSummary(Struct, kw_only=True):
    """What the ``llm_chunk`` signals of a streamed request delivered before its answer."""

    chunks: int = 0
    """Chunk signals sent; their ``seq`` ran from 0 to ``chunks - 1``."""
    chars: int = 0
    """Characters of content and tool-call arguments they carried."""
    first_chunk_ms: float = 0.0
    """From the request's arrival to the first chunk sent (0 when none was)."""


class LlmResponse(Struct, kw_only=True, omit_defaults=True):
    """The one terminal answer to an ``llm_request``: a completion or a typed error."""

    request_id: str
    status: Literal["ok", "error"]
    agent_id: str = ""
    message: AssistantMessage | None = None
    model: str = ""
    provider: str = ""
    emulated: bool = False
    cached: bool = False
    """Served from the router's response cache: no provider was called, so ``cost_usd`` is 0,
    ``usage`` is zero and ``attempts`` is empty; ``model`` and ``provider`` name what first
    produced the answer. Only agents that opted in are served from the cache, and a private
    request only ever gets an answer its own agent was given."""
    finish_reason: FinishReason | Literal[""] = ""
    """Set on every ``ok`` answer."""
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: list[Attempt] = []
    error: ErrorInfo | None = None
    warnings: list[str] = []
    """Things the caller asked for that this answer does not do as asked (for example
    ``stream: true`` on a request that is verified: the answer comes whole)."""
    verification: Verification | None = None
    """Set when a quality_assurance rule had the answer verified (both calls are billed)."""
    streamed: StreamSummary | None = None
    """Set on the answer to a streamed request: what its ``llm_chunk`` signals delivered.
    On an error after the first chunk, ``message`` holds that content (``finish_reason``
    ``error``) and no other provider is tried: the caller already has part of an answer."""


# --------------------------------------------------------------------------- llm_chunk


class ToolCallFragment(Struct, kw_only=True, omit_defaults=True):
    """A piece of tool call ``index`` (0, 1, ... in the order the calls appear): ``id`` and
    ``name`` come with its first piece, ``arguments`` is the next piece of its JSON text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class LlmChunk(Struct, kw_only=True, omit_defaults=True):
    """A piece of a streamed answer (``stream: true``), sent as the provider generates it: on
    the request's reply subject, else on ``llm_chunk.<agent_id>``. The content of all chunks,
    concatenated in ``seq`` order, is the answer's; the terminal ``llm_response`` follows the
    last chunk and carries the assembled message, usage and cost. Pieces that arrive within
    ``router.stream_coalesce_ms`` of the previous chunk are sent together in one chunk."""

    request_id: str
    agent_id: str = ""
    seq: int
    """0, 1, 2, ... for one request: a gap means a chunk was lost."""
    content: str = ""
    """More assistant text."""
    tool_calls: list[ToolCallFragment] = []
    """Pieces of tool calls: concatenate the ``arguments`` of each ``index``."""


# --------------------------------------------------------------------------- providers


class ModelPrice(Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per 1,000 tokens; at most 1,000, so that every cost the router computes is finite."""

    input: Price = 0.0
    output: Price = 0.0
    cached_input: Price = 0.0
    """Input tokens read from the provider's prompt cache; 0: they cost ``input``."""


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
    origin: Literal["monitor", "router"] = "monitor"
    """``monitor``: an outside health check, merged by every router instance into its view.
    ``router``: a router instance announcing a change it saw itself (a breaker opened or
    closed, its own probe); for observers, not merged by the other instances, which keep
    their own evidence."""
    model: Annotated[str, Meta(max_length=256)] | None = None
    """The deployment whose breaker changed (``origin: router``); none: the whole provider."""
    circuit: Literal["closed", "open", "half_open"] | None = None
    """That breaker's new state (``origin: router``)."""
    reporter: Annotated[str, Meta(max_length=256)] = ""
    """Who says so (a router's instance id, a monitor's name)."""


class DeploymentMetrics(Struct, kw_only=True, omit_defaults=True):
    """One model of a provider as one router instance sees it (``ProviderStats.deployments``):
    what routing reads of it when it filters and ranks candidates."""

    model: str
    circuit: Literal["closed", "open", "half_open"] = "closed"
    """The deployment's circuit breaker."""
    retry_in_s: float | None = None
    """While ``circuit`` is open: seconds until it admits a probe (0: the cooldown is over,
    the next attempt probes it). Absent when closed, half open, or while every probe slot is
    taken (only a probe's result frees one)."""
    headroom: float | None = None
    """Share of its rate limit left, 0 to 1 (the tighter of requests and tokens per minute;
    0 while the provider's Retry-After holds). Absent: the deployment is not rate limited."""
    latency_ms: float | None = None
    """Moving average (EWMA) of its successful attempts' latency; absent before the first."""
    p95_ms: float | None = None
    """About the 95th percentile of that latency (the hedging threshold); absent before the first."""
    in_flight: int = 0
    """Attempts started and not yet ended."""


class ProviderStats(Struct, kw_only=True, omit_defaults=True):
    """One provider's figures, as one router instance sees them. Counters run from when this
    instance learnt of the provider (a provider registered anew starts again)."""

    provider: str
    health: str
    """``healthy``, ``degraded`` or ``unhealthy`` (``provider_health`` announces changes)."""
    circuit: str
    """The worst of its deployments' breakers: ``open``, else ``half_open``, else ``closed``."""
    enabled: bool
    emulated: bool
    in_flight: int = 0
    requests: int = 0
    """Attempts the provider answered or failed (abandoned ones are not its doing)."""
    successes: int = 0
    failures: int = 0
    """Failed attempts that count against the provider (not a caller's bad request, not a 429)."""
    error_rate: float = 0.0
    avg_latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    provider_circuit: Literal["closed", "open", "half_open"] = "closed"
    """The provider's own breaker: failures that condemn the whole endpoint (refused
    connections, rejected keys) open it, and then none of its models is tried."""
    uptime_ratio: float = 1.0
    """Share of the time since this instance learnt of the provider that it was routable
    (healthy or degraded), 0 to 1."""
    uptime_s: float = 0.0
    """Seconds it was routable since this instance learnt of it."""
    last_error_code: str = ""
    """Code of the last failure counted against it (an error code, or ``probe_failed``)."""
    last_error: str = ""
    """That failure's message, secrets redacted, at most 200 characters."""
    last_error_at: str = ""
    """When it happened: ISO 8601, UTC (``2025-01-01T12:00:00.000Z``)."""
    errors_by_code: dict[str, int] = {}
    """Failed attempts by error code, those that do not count against it included."""
    retries: int = 0
    """Attempts that retried one of its deployments after a backoff."""
    failovers: int = 0
    """Attempts that came to it after another deployment failed the same request."""
    hedges: int = 0
    """Attempts sent to it as a hedge while an earlier one was still running."""
    deployments: list[DeploymentMetrics] = []
    """Each of its models."""


class ProviderMetrics(Struct, kw_only=True, omit_defaults=True):
    """Periodic snapshot of one provider as one router instance sees it."""

    instance_id: str
    window_s: float
    stats: ProviderStats


class CostLine(Struct, kw_only=True):
    """Spend of a group of calls: every attempt a provider billed counts (failed-over ones
    and losing hedges included)."""

    requests: int = 0
    """Billed attempts."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    """Of ``input_tokens``, those read from the provider's prompt cache."""
    cost_usd: float = 0.0
    cost_micros: int = 0
    """The same cost in integer micro-dollars (USD x 1,000,000), as the ledger accounts it."""


class BudgetStatus(Struct, kw_only=True, omit_defaults=True):
    """One daily cap (``router.budgets``), as the reporting instance knows it."""

    scope: Literal["all", "cloud", "agent", "provider"]
    """``all``: every billed call; ``cloud``: cloud models only (``max_cloud_spend_per_day``
    among them); ``agent`` / ``provider``: that agent's or provider's calls."""
    name: str = ""
    """The agent or provider, for those scopes."""
    limit_usd: float
    used_usd: float = 0.0
    """Settled spend of every instance today, as last read from the shared ledger."""
    reserved_usd: float = 0.0
    """Estimates of this instance's calls in flight, held against the cap until they settle."""
    remaining_usd: float = 0.0
    local_only_at_usd: float | None = None
    """Spend from which routing keeps to local models (``router.budgets.local_only_share``)."""
    state: Literal["ok", "local_only", "exceeded"] = "ok"


class CostReport(Struct, kw_only=True, omit_defaults=True):
    """The cost ledger: published every ``cost_report_interval_s`` and answered on demand
    (``router_control.cost_report``). With the shared ledger (JetStream) the figures are those
    of every router instance on the bus for the days reported; with the in-memory one, this
    instance's since it started."""

    instance_id: str
    since: str
    """When the reporting instance started."""
    day: str = ""
    """Today (``YYYY-MM-DD``) in ``time_zone``: budgets are daily and roll over at its midnight."""
    time_zone: str = ""
    shared: bool = False
    """The figures come from the ledger every instance shares, not this instance alone."""
    total: CostLine
    """Every day reported."""
    by_agent: dict[str, CostLine] = {}
    by_model: dict[str, CostLine] = {}
    by_provider: dict[str, CostLine] = {}
    by_day: dict[str, CostLine] = {}
    budgets: list[BudgetStatus] = []
    """Every configured cap: used, reserved, remaining."""
    projected_day_usd: float | None = None
    """Today's spend extrapolated to the day's end at today's average rate so far (the
    first hour counts as a whole hour)."""


class CostEntry(Struct, kw_only=True, omit_defaults=True):
    """Spend of one agent on one deployment (a line of ``cost_event``)."""

    agent_id: str
    provider: str
    model: str
    cloud: bool = False
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_micros: int = 0


class CostEvent(Struct, kw_only=True, omit_defaults=True):
    """Spend one router instance booked since its previous ``cost_event`` (a batch, sent
    every ``router.budgets.flush_interval_s`` while there is any). Kept in the JetStream
    stream of cost events (``cost_event.<instance_id>``): the sum of every event's entries is
    the ledger. ``Nats-Msg-Id`` is ``<instance_id>:<batch>``, so a batch sent again after a
    lost acknowledgement is dropped as a duplicate."""

    instance_id: str
    day: str
    """The day (in the ledger's time zone) the spend belongs to."""
    batch: str
    """Unique per instance; batches of one instance are sent in order."""
    entries: list[CostEntry] = []


class CostQuery(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Asks for the cost report now (``router_control.cost_report``; answered with ``cost_report``)."""

    refresh: bool = True
    """Read the other instances' spend from the shared ledger first (else: as of the last
    periodic read)."""


class RouterError(Struct, kw_only=True, omit_defaults=True):
    """Answer to bad input on a subject whose signal has no answer of its own."""

    subject: str
    error: ErrorInfo


# --------------------------------------------------------------------------- runtime control
#
# The control service (nats.micro ``llm-router-control``, endpoints under ``router_control.``)
# takes the ``control_*`` requests and answers ``control_result`` (or ``routing_table``);
# every accepted change is published as ``routing_control`` and applied by every instance.

MAX_OVERRIDE_DURATION_S = 30 * 24 * 3600.0
"""An override lasts at most 30 days; without a duration it lasts until cleared."""

OverrideDuration = Annotated[float, Meta(gt=0, le=MAX_OVERRIDE_DURATION_S)]
Reason = Annotated[str, Meta(min_length=1, max_length=500)]
OverrideKind = Literal["primary", "strategy", "forced"]
ControlAction = Literal["set_primary", "override_strategy", "force_model", "clear", "table", "cost_report"]


class ControlSetPrimary(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Sets an agent's primary model: its requests go to that model first (the hard
    constraints still apply; the agent's preferences stay as fallbacks)."""

    agent_id: Identifier
    """An agent configured in ``agents.yaml``."""
    model: Identifier
    """A model name or alias the router knows; an alias is stored as the model it names."""
    reason: Reason
    """Why (at most 500 characters); shown in the routing table and the event."""
    duration_s: OverrideDuration | None = None
    """Seconds until it reverts by itself (at most 30 days); omitted: until cleared."""
    requested_by: Annotated[str, Meta(max_length=128)] = ""
    """Who asked, as the sender says (the bus permissions decide who may send at all)."""


class ControlOverrideStrategy(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Overrides the routing strategy for one agent, or for every agent, for a while."""

    strategy: Identifier
    """A strategy the engine implements or a named strategy of ``routing.yaml``."""
    reason: Reason
    agent_id: Identifier | None = None
    """Any agent id (agents not in ``agents.yaml`` route too); omitted: the global override,
    which an agent's own override beats."""
    duration_s: OverrideDuration | None = None
    """Seconds until it reverts by itself (at most 30 days); omitted: until cleared."""
    requested_by: Annotated[str, Meta(max_length=128)] = ""


class ControlForceModel(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Forces a model for every request of one task (``task.id``); the hard constraints still
    apply, so a private request is never forced onto a cloud model."""

    task_id: Identifier
    model: Identifier
    """A model name or alias the router knows."""
    reason: Reason
    duration_s: OverrideDuration | None = None
    """Seconds until it reverts by itself (at most 30 days); omitted: until cleared."""
    requested_by: Annotated[str, Meta(max_length=128)] = ""


class ControlClear(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Removes one override at once."""

    kind: OverrideKind
    key: Identifier | None = None
    """The agent id (``primary``, ``strategy``) or task id (``forced``); omitted with
    ``strategy``: the global override."""
    reason: Annotated[str, Meta(max_length=500)] = ""
    requested_by: Annotated[str, Meta(max_length=128)] = ""


class ControlTable(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Asks for the current routing table (answered with ``routing_table``)."""

    agent_id: Identifier | None = None
    """Only this agent's row (and the overrides that concern it)."""


class RoutingChange(Struct, kw_only=True, omit_defaults=True):
    """One change to the routing overrides."""

    action: Literal["set", "clear"]
    kind: OverrideKind
    key: Identifier | None = None
    """Agent id (``primary``, ``strategy``; none: the global strategy) or task id (``forced``)."""
    model: Identifier | None = None
    strategy: Identifier | None = None
    duration_s: OverrideDuration | None = None
    """How long it lasts from when it is applied; none: until cleared."""
    reason: Annotated[str, Meta(max_length=500)] = ""
    requested_by: Annotated[str, Meta(max_length=128)] = ""


class ControlResult(Struct, kw_only=True, omit_defaults=True):
    """Answer of the control service: the change made, or every reason why not."""

    accepted: bool
    action: ControlAction
    instance_id: str = ""
    """The router instance that answered (and published the ``routing_control`` event)."""
    change: RoutingChange | None = None
    changed: bool = False
    """False when ``clear`` found nothing to remove (it is accepted all the same)."""
    expires_at: str | None = None
    """When the override reverts by itself (UTC, ISO 8601); none: until cleared."""
    errors: list[ErrorInfo] = []


class RoutingControl(Struct, kw_only=True, omit_defaults=True):
    """Event: a change to the routing overrides, published on ``routing_control`` by the
    instance that accepted it. Every other instance applies it; observers see it."""

    instance_id: Annotated[str, Meta(max_length=256)]
    change: RoutingChange
    expires_at: Annotated[str, Meta(max_length=64)] | None = None
    """When the override reverts by itself (UTC, ISO 8601), for observers; each instance
    counts ``change.duration_s`` from when it applies the change."""


class OverrideInfo(Struct, kw_only=True, omit_defaults=True):
    """One live override in the routing table."""

    kind: OverrideKind
    key: str | None = None
    """Agent id, task id, or none for the global strategy."""
    model: str | None = None
    strategy: str | None = None
    reason: str = ""
    expires_in_s: float | None = None
    """Seconds left; none: until cleared."""


class AgentRouting(Struct, kw_only=True, omit_defaults=True):
    """How one agent's requests are routed now."""

    strategy: str
    strategy_source: Literal["config", "global_override", "agent_override"]
    primary: str | None = None
    """The model tried first: the override, else the ``primary`` preference of ``agents.yaml``."""
    primary_source: Literal["config", "override", "none"] = "none"
    model_preferences: dict[str, str] = {}
    routing_rules: int = 0
    """How many routing rules ``agents.yaml`` gives the agent."""
    configured: bool = True
    """False for an agent that is not in ``agents.yaml`` but has an override."""


class RoutingTable(Struct, kw_only=True, omit_defaults=True):
    """Answer to ``control_table``: the routing as one instance applies it now."""

    instance_id: str
    default_strategy: str
    """The strategy of ``routing.yaml``."""
    strategy: str
    """What an agent without its own override gets now (the global override, else the default)."""
    strategies: list[str] = []
    """Every strategy name an override may use."""
    agents: dict[str, AgentRouting] = {}
    overrides: list[OverrideInfo] = []
    """Every live override, forced models included."""


# The registry below drives decoding, schema export and the docs. Keep it complete.
SIGNAL_TYPES: dict[str, type[Struct]] = {
    "llm_request": LlmRequest,
    "llm_response": LlmResponse,
    "llm_chunk": LlmChunk,
    "routing_decision": RoutingDecision,
    "provider_register": ProviderRegister,
    "provider_registered": ProviderRegistered,
    "provider_update": ProviderUpdate,
    "provider_health": ProviderHealth,
    "provider_metrics": ProviderMetrics,
    "cost_report": CostReport,
    "cost_event": CostEvent,
    "router_error": RouterError,
    "control_set_primary": ControlSetPrimary,
    "control_override_strategy": ControlOverrideStrategy,
    "control_force_model": ControlForceModel,
    "control_clear": ControlClear,
    "control_table": ControlTable,
    "cost_query": CostQuery,
    "control_result": ControlResult,
    "routing_table": RoutingTable,
    "routing_control": RoutingControl,
}

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CAPABILITIES",
    "MAX_CONTEXT_WINDOW",
    "MAX_COST_USD",
    "MAX_LATENCY_MS",
    "MAX_MODELS_PER_PROVIDER",
    "MAX_OVERRIDE_DURATION_S",
    "MAX_PRICE_PER_1K_TOKENS_USD",
    "MAX_RATE_PER_MINUTE",
    "MAX_WEIGHT",
    "SIGNAL_TYPES",
    "AgentRouting",
    "AssistantMessage",
    "Attempt",
    "BudgetStatus",
    "Candidate",
    "Capability",
    "ChatMessage",
    "ContentPart",
    "ControlAction",
    "ControlClear",
    "ControlForceModel",
    "ControlOverrideStrategy",
    "ControlResult",
    "ControlSetPrimary",
    "ControlTable",
    "CostEntry",
    "CostEvent",
    "CostLine",
    "CostQuery",
    "CostReport",
    "DeploymentMetrics",
    "ErrorCode",
    "ErrorInfo",
    "FinishReason",
    "FunctionCall",
    "FunctionDef",
    "FunctionName",
    "Identifier",
    "ImagePart",
    "ImageUrl",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "LlmChunk",
    "LlmRequest",
    "LlmResponse",
    "ModelPrice",
    "ModelSpec",
    "ModelUpdate",
    "OverrideDuration",
    "OverrideInfo",
    "OverrideKind",
    "Params",
    "ProviderApi",
    "ProviderHealth",
    "ProviderMetrics",
    "ProviderRegister",
    "ProviderRegistered",
    "ProviderStats",
    "ProviderUpdate",
    "RateLimits",
    "Reason",
    "Rejection",
    "Requirements",
    "ResponseFormat",
    "RouterError",
    "RoutingChange",
    "RoutingControl",
    "RoutingDecision",
    "RoutingTable",
    "StreamSummary",
    "Task",
    "TextFormat",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallFragment",
    "ToolChoice",
    "ToolChoiceFunction",
    "Usage",
    "Verification",
]
