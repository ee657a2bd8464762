"""The response cache's pure part: the key, who may use the cache, what is stored, the
in-process LRU/TTL store, and the answer a hit becomes.

Rules
-----
1. Exact match. The key is a hash over a canonical encoding of everything that changes the
   answer: the normalised messages, the routing target (the model that answers) and every
   field in ``KEY_FIELDS`` (sampling parameters, tools, tool choice, response format). The
   fields in ``NOT_IN_KEY`` (ids, stream, timeout, priority, metadata, and the routing inputs
   task, requirements and the model the caller named, for which the target stands) never
   change it; the tests check that the two sets together are every field of ``LlmRequest``,
   so a new field must be placed in one. Text is hashed as sent: whitespace counts.
2. Private answers stay with their agent. A private request (privacy level high or personal
   data found) has its agent id in the key, so no other agent can ever hit it, and a private
   request never hits a shared entry. A non-private answer is shared by every agent that
   opted in (the key is over what the model saw, so the answer fits any of them), unless
   the agent's ``shared: false`` scopes all its entries to itself.
3. Opt-in. An agent's ``cache`` block in agents.yaml opts it in (``enabled: false`` opts it
   out); an agent without one is opted in by its strategy's ``cache_responses: true``
   (routing.yaml's ``performance_optimized``), which never overrides an explicit opt-out.
4. Greedy only, unless asked. A request sampled at ``temperature > 0``, or with no
   temperature (every vendor then samples, OpenAI and Anthropic at 1.0), is cacheable only
   for an agent with ``sampled: true``: otherwise a repeat would be served one draw forever.
5. Only clean completions are stored: ``status: ok`` with ``finish_reason`` ``stop``,
   ``length`` or ``tool_calls``; never an error, a stream cut short, or a draft whose
   verification failed. A hit is marked ``cached``, costs 0 and reports zero usage: no
   provider was called.

Theory of operation
-------------------
``eligibility(request, agent_cache, strategy_cache)`` returns ``None`` (cacheable) or the
first reason in ``INELIGIBLE`` that applies. For a cacheable request the shell computes
``cache_key(request, target=..., private=..., shared=...)`` once the plan is known (the target
is the model put first; privacy is the plan's), asks the store, and either answers
``cached_response(answer, request, latency_ms)`` or calls the providers and, when
``storable(response)`` is ``None``, stores ``to_cached(response, stored_at)``.

``LruTtl`` is the in-process layer: a dict in recency order bounded by entries and bytes,
each entry with its own expiry. Time is passed in (``now``, monotonic seconds); nothing here
reads a clock, sleeps or does I/O. An expired entry is dropped when it is next read or
reaches the old end, and counted as an expiry, not an eviction.

Reasons a request is not cached (``INELIGIBLE``; this table and the dict are checked against
each other by the tests):

| reason          | when                                                                    |
|-----------------|-------------------------------------------------------------------------|
| not_opted_in    | the agent has no cache block and its strategy does not cache            |
| opted_out       | the agent's cache block says enabled: false                             |
| sampled         | temperature unset or above 0, and the agent did not opt in to sampled   |
| remote_image    | an image by URL: what the URL serves may change, the key would not      |
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec

from signals import (
    AssistantMessage,
    ChatMessage,
    ImagePart,
    LlmRequest,
    LlmResponse,
    TextPart,
    ToolCall,
    Usage,
)

KEY_VERSION = 1
"""Part of every key: a change to the encoding or to ``CachedAnswer`` bumps it, so entries of
the old shape are never read as the new one."""

KEY_FIELDS = ("messages", "params", "tools", "tool_choice", "response_format")
"""Fields of ``LlmRequest`` that change the answer, so are in the key (with the target)."""
NOT_IN_KEY = (
    "request_id", "agent_id", "model", "task", "requirements", "stream", "timeout_ms", "priority", "metadata",
)
"""Fields that never change what a given model answers: ids, delivery, routing inputs (the
target stands for the model they chose; the agent id joins the key of private requests)."""

_FLOAT_PARAMS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
"""Written as floats whether a caller wrote ``0`` or ``0.0``: the same request, the same key."""

INELIGIBLE = {
    "not_opted_in": "the agent has no cache block and its strategy does not cache",
    "opted_out": "the agent's cache block says enabled: false",
    "sampled": "temperature unset or above 0, and the agent did not opt in to sampled",
    "remote_image": "an image by URL: what the URL serves may change, the key would not",
}
"""Why a request is not served from (nor stored in) the cache; see the table above."""

STORED_FINISH_REASONS = frozenset({"stop", "length", "tool_calls"})


class AgentCacheOptIn(Protocol):
    """An agent's ``cache`` block (``config.AgentCacheConfig``), as the core reads it."""

    enabled: bool
    sampled: bool
    shared: bool


# --------------------------------------------------------------------------- the key


def _normalised(message: ChatMessage) -> ChatMessage:
    """A content list that is one text part says what the plain string says."""
    content = message.content
    if type(content) is list and len(content) == 1 and type(content[0]) is TextPart:
        return msgspec.structs.replace(message, content=content[0].text)
    return message


def _params(request: LlmRequest) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in msgspec.structs.asdict(request.params).items():
        if value is None:
            continue
        out[name] = float(value) if name in _FLOAT_PARAMS else value
    return out


def cache_key(request: LlmRequest, *, target: str, private: bool, shared: bool = True) -> str:
    """The hex key of ``request`` answered by ``target``; scoped to the agent when the
    request is private or the agent does not share (rule 2)."""
    scope = request.agent_id if private or not shared else None
    canonical = (
        KEY_VERSION,
        target,
        scope,
        [_normalised(m) for m in request.messages],
        _params(request),
        request.tools,
        request.tool_choice,
        request.response_format,
    )
    # deterministic: dict keys sorted (tool schemas), struct fields in their fixed order.
    payload = msgspec.json.encode(canonical, order="deterministic")
    return hashlib.blake2b(payload, digest_size=32).hexdigest()


# --------------------------------------------------------------------------- who may use it


def eligibility(request: LlmRequest, agent_cache: AgentCacheOptIn | None, strategy_cache: bool) -> str | None:
    """``None`` when the request may be served from and stored in the cache, else the first
    reason of ``INELIGIBLE`` that applies (rules 3 and 4)."""
    if agent_cache is None:
        if not strategy_cache:
            return "not_opted_in"
    elif not agent_cache.enabled:
        return "opted_out"
    temperature = request.params.temperature
    if (temperature is None or temperature > 0) and not (agent_cache is not None and agent_cache.sampled):
        return "sampled"
    for message in request.messages:
        content = message.content
        if type(content) is list and any(
            type(part) is ImagePart and not part.image_url.url.startswith("data:") for part in content
        ):
            return "remote_image"
    return None


# --------------------------------------------------------------------------- what is stored


class CachedAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One stored answer: what the caller is given back, and where it came from. Never the
    request, its ids, or any key."""

    content: str = ""
    tool_calls: list[ToolCall] = []
    finish_reason: str = "stop"
    model: str = ""
    provider: str = ""
    emulated: bool = False
    usage: Usage = msgspec.field(default_factory=Usage)
    """What the original call spent (for information; a hit reports zero usage)."""
    stored_at: float = 0.0
    """Wall-clock seconds (Unix) when it was stored: another instance reading it from the
    bucket keeps it locally only for the rest of its TTL."""


def storable(response: LlmResponse) -> str | None:
    """``None`` when the answer may be stored (rule 5), else why not."""
    if response.status != "ok" or response.error is not None or response.message is None:
        return "error"
    if response.cached:
        return "cached"
    if response.finish_reason not in STORED_FINISH_REASONS:
        return "finish_reason"
    if response.verification is not None and response.verification.status != "verified":
        return "unverified"
    return None


def to_cached(response: LlmResponse, stored_at: float) -> CachedAnswer:
    """What of an answer is stored (check ``storable`` first)."""
    message = response.message or AssistantMessage()
    return CachedAnswer(
        content=message.content, tool_calls=list(message.tool_calls), finish_reason=response.finish_reason,
        model=response.model, provider=response.provider, emulated=response.emulated, usage=response.usage,
        stored_at=stored_at,
    )


def cached_response(answer: CachedAnswer, request: LlmRequest, latency_ms: float) -> LlmResponse:
    """The answer a hit gives: ``cached``, free, zero usage, no attempts."""
    return LlmResponse(
        request_id=request.request_id,
        agent_id=request.agent_id,
        status="ok",
        message=AssistantMessage(content=answer.content, tool_calls=list(answer.tool_calls)),
        model=answer.model,
        provider=answer.provider,
        emulated=answer.emulated,
        finish_reason=answer.finish_reason,  # type: ignore[arg-type]  # only STORED_FINISH_REASONS are stored
        cached=True,
        cost_usd=0.0,
        latency_ms=round(latency_ms, 3),
    )


def split_pieces(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, in order (none for empty text)."""
    if size < 1:
        raise ValueError(f"piece size must be at least 1, not {size}")
    return [text[i:i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------- counters


@dataclass(slots=True)
class CacheStats:
    """Request-level counters of one instance's cache (a hit from the bucket is a hit)."""

    hits: int = 0
    local_hits: int = 0
    """Of ``hits``, those the in-process layer answered."""
    misses: int = 0
    stores: int = 0
    oversize: int = 0
    """Answers too large to store (``cache.max_entry_bytes``)."""
    kv_errors: int = 0
    """Bucket reads or writes that failed or timed out (each read counted as a miss)."""
    kv_writes_dropped: int = 0
    """Bucket writes skipped because too many were already on their way."""
    bypassed: dict[str, int] = field(default_factory=dict)
    """Requests not looked up, by reason (``INELIGIBLE``)."""

    @property
    def hit_rate(self) -> float:
        """Hits over lookups, 0-1 (0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def bypass(self, reason: str) -> None:
        self.bypassed[reason] = self.bypassed.get(reason, 0) + 1


# --------------------------------------------------------------------------- the local layer

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruTtl(Generic[K, V]):
    """At most ``max_entries`` values totalling at most ``max_bytes`` (their sizes as given),
    each for at most ``ttl_s`` seconds; the least recently used goes first."""

    __slots__ = ("_entries", "bytes", "evictions", "expirations", "hits", "max_bytes", "max_entries", "misses",
                 "ttl_s")

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float):
        if max_entries < 1 or max_bytes < 1 or not ttl_s > 0:
            raise ValueError("max_entries and max_bytes must be at least 1, ttl_s above 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[K, tuple[V, int, float]] = OrderedDict()  # oldest use first
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        """Live entries dropped to make room."""
        self.expirations = 0
        """Entries dropped because their time was up."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K, now: float) -> V | None:
        """The live value of ``key`` (it becomes the most recently used), else ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        value, size, expires_at = entry
        if now >= expires_at:
            self._drop(key, size)
            self.expirations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V, size: int, now: float, ttl_s: float | None = None) -> bool:
        """Store ``value`` (``size`` bytes) for ``ttl_s`` (at most the store's); False when
        it is larger than the whole store, or has no time left, and so is not kept."""
        if size < 0:
            raise ValueError(f"size must not be negative, not {size}")
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes or ttl <= 0:
            return False
        while self._entries and (len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            oldest, (_, oldest_size, expires_at) = next(iter(self._entries.items()))
            self._drop(oldest, oldest_size)
            if now >= expires_at:
                self.expirations += 1
            else:
                self.evictions += 1
        self._entries[key] = (value, size, now + ttl)
        self.bytes += size
        return True

    def discard(self, key: K) -> bool:
        """Forget ``key``; whether it was there."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry[1]
        return True

    def evict_expired(self, now: float) -> int:
        """Drop every entry whose time is up (a sweep; reads and puts need none); how many."""
        expired = [k for k, (_, _, expires_at) in self._entries.items() if now >= expires_at]
        for key in expired:
            self.bytes -= self._entries.pop(key)[1]
        self.expirations += len(expired)
        return len(expired)

    def _drop(self, key: K, size: int) -> None:
        del self._entries[key]
        self.bytes -= size
