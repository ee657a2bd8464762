"""The response cache's pure part: the key (stable where the answer cannot change, different
wherever it can, scoped to the agent for private requests), who may use the cache (the table
against its docstring), what is stored and what a hit answers, and the in-process LRU/TTL
store against a small reference model.

Time is always injected (``now``); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_agent.core import cache as cache_module
from router_agent.core.cache import (
    INELIGIBLE,
    KEY_FIELDS,
    NOT_IN_KEY,
    CachedAnswer,
    CacheStats,
    LruTtl,
    cache_key,
    cached_response,
    eligibility,
    split_pieces,
    storable,
    to_cached,
)
from signals import (
    AssistantMessage,
    Attempt,
    ChatMessage,
    ErrorInfo,
    FunctionCall,
    FunctionDef,
    FunctionName,
    ImagePart,
    ImageUrl,
    JsonObjectFormat,
    LlmRequest,
    LlmResponse,
    Params,
    Requirements,
    Task,
    TextPart,
    Tool,
    ToolCall,
    ToolChoiceFunction,
    Usage,
    Verification,
)

TARGET = "gpt-4-turbo"


def request(**changes) -> LlmRequest:
    base = LlmRequest(request_id="r1", agent_id="alpha",
                      messages=[ChatMessage(role="system", content="Be brief."),
                                ChatMessage(role="user", content="What is a monad?")],
                      params=Params(temperature=0.0))
    return msgspec.structs.replace(base, **changes)


def key(req: LlmRequest, *, target: str = TARGET, private: bool = False, shared: bool = True) -> str:
    return cache_key(req, target=target, private=private, shared=shared)


# --------------------------------------------------------------------------- the key


def test_every_request_field_is_either_in_the_key_or_said_not_to_be():
    fields = set(LlmRequest.__struct_fields__)
    assert not set(KEY_FIELDS) & set(NOT_IN_KEY)
    assert set(KEY_FIELDS) <= fields
    assert fields <= set(KEY_FIELDS) | set(NOT_IN_KEY), "a new LlmRequest field: does it change the answer?"


def test_the_key_is_a_stable_hex_digest():
    k = key(request())
    assert k == key(request()) and len(k) == 64 and int(k, 16) >= 0


@pytest.mark.parametrize("changes", [
    {"request_id": "r2"},
    {"agent_id": "beta"},
    {"metadata": {"user": "u-17"}},
    {"timeout_ms": 1234},
    {"stream": True},
    {"model": "fast"},
    {"task": Task(type="chat", complexity=9, privacy_level="low")},
    {"requirements": Requirements(max_cost_usd=0.01)},
], ids=lambda c: next(iter(c)))
def test_what_cannot_change_the_answer_does_not_change_the_key(changes):
    assert key(request(**changes)) == key(request())


def test_an_integer_temperature_is_the_same_request_as_its_float():
    assert key(request(params=Params(temperature=0))) == key(request(params=Params(temperature=0.0)))


def test_one_text_part_is_the_same_message_as_its_string():
    parts = [ChatMessage(role="system", content="Be brief."),
             ChatMessage(role="user", content=[TextPart(text="What is a monad?")])]
    assert key(request(messages=parts)) == key(request())


def test_the_order_of_keys_in_a_tool_schema_does_not_matter():
    a = Tool(function=FunctionDef(name="f", parameters={"type": "object", "properties": {"x": {}, "y": {}}}))
    b = Tool(function=FunctionDef(name="f", parameters={"properties": {"y": {}, "x": {}}, "type": "object"}))
    assert key(request(tools=[a])) == key(request(tools=[b]))


TOOL = Tool(function=FunctionDef(name="lookup", parameters={"type": "object"}))
ANSWER_CHANGING = {
    "temperature": {"params": Params(temperature=0.5)},
    "top_p": {"params": Params(temperature=0.0, top_p=0.9)},
    "max_tokens": {"params": Params(temperature=0.0, max_tokens=64)},
    "stop": {"params": Params(temperature=0.0, stop=["\n"])},
    "seed": {"params": Params(temperature=0.0, seed=7)},
    "presence_penalty": {"params": Params(temperature=0.0, presence_penalty=0.5)},
    "frequency_penalty": {"params": Params(temperature=0.0, frequency_penalty=0.5)},
    "tools": {"tools": [TOOL]},
    "tool_choice": {"tool_choice": "none"},
    "tool_choice_function": {"tools": [TOOL], "tool_choice": ToolChoiceFunction(function=FunctionName(name="lookup"))},
    "response_format": {"response_format": JsonObjectFormat()},
    "content_whitespace": {"messages": [ChatMessage(role="system", content="Be brief."),
                                        ChatMessage(role="user", content="What is a monad? ")]},
    "content_inner_whitespace": {"messages": [ChatMessage(role="system", content="Be brief."),
                                              ChatMessage(role="user", content="What is a  monad?")]},
    "role": {"messages": [ChatMessage(role="developer", content="Be brief."),
                          ChatMessage(role="user", content="What is a monad?")]},
    "name": {"messages": [ChatMessage(role="system", content="Be brief."),
                          ChatMessage(role="user", content="What is a monad?", name="ann")]},
    "two_text_parts": {"messages": [ChatMessage(role="system", content="Be brief."),
                                    ChatMessage(role="user", content=[TextPart(text="What is a "),
                                                                      TextPart(text="monad?")])]},
    "tool_call": {"messages": [
        ChatMessage(role="user", content="What is a monad?"),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", function=FunctionCall(name="lookup"))]),
        ChatMessage(role="tool", tool_call_id="c1", content="a monoid in the category of endofunctors"),
    ]},
    "tool_call_arguments": {"messages": [  # the exchange above with other arguments
        ChatMessage(role="user", content="What is a monad?"),
        ChatMessage(role="assistant", tool_calls=[
            ToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"q": 1}'))]),
        ChatMessage(role="tool", tool_call_id="c1", content="a monoid in the category of endofunctors"),
    ]},
    "message_order": {"messages": [ChatMessage(role="user", content="What is a monad?"),
                                   ChatMessage(role="system", content="Be brief.")]},
}


@pytest.mark.parametrize("name", list(ANSWER_CHANGING))
def test_whatever_changes_the_answer_changes_the_key(name):
    assert key(request(**ANSWER_CHANGING[name])) != key(request())


def test_every_change_above_is_a_key_of_its_own():
    keys = {key(request(**changes)) for changes in ANSWER_CHANGING.values()} | {key(request())}
    assert len(keys) == len(ANSWER_CHANGING) + 1


def test_every_sampling_parameter_is_covered_above():
    assert set(Params.__struct_fields__) <= set(ANSWER_CHANGING)


def test_the_target_is_in_the_key():
    assert key(request(), target="llama-3-70b") != key(request())


def test_a_private_key_is_the_agents_own():
    a, b = request(agent_id="alpha"), request(agent_id="beta")
    assert key(a, private=True) != key(b, private=True)
    assert key(a, private=True) != key(a)  # a private request never hits a shared answer
    assert key(a) == key(b)  # a non-private one is shared by agents that opted in


def test_an_agent_that_does_not_share_keeps_its_entries():
    a, b = request(agent_id="alpha"), request(agent_id="beta")
    assert key(a, shared=False) != key(b, shared=False)
    assert key(a, shared=False) != key(a)
    assert key(a, shared=False) == key(a, private=True)


texts = st.text(max_size=40)


@settings(max_examples=150, deadline=None)
@given(texts, texts)
def test_any_two_different_prompts_have_different_keys(one, other):
    def ask(text: str) -> LlmRequest:
        return request(messages=[ChatMessage(role="user", content=text)])
    assert (key(ask(one)) == key(ask(other))) == (one == other)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True), st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
       st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3), st.booleans())
def test_ids_delivery_and_metadata_never_reach_a_shared_key(request_id, agent_id, metadata, stream):
    other = request(request_id=request_id, agent_id=agent_id, metadata=metadata, stream=stream)
    assert key(other) == key(request())


# --------------------------------------------------------------------------- eligibility


class OptIn(msgspec.Struct):
    enabled: bool = True
    sampled: bool = False
    shared: bool = True


def test_the_docstring_table_is_the_reason_table():
    rows = [line for line in (cache_module.__doc__ or "").splitlines() if line.startswith("| ")]
    table = {cells[0]: cells[1] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[1:])}
    assert table == INELIGIBLE


REMOTE = [ChatMessage(role="user", content=[TextPart(text="what is this?"),
                                            ImagePart(image_url=ImageUrl(url="https://example.com/a.png"))])]
INLINE = [ChatMessage(role="user", content=[TextPart(text="what is this?"),
                                            ImagePart(image_url=ImageUrl(url="data:image/png;base64,AAAA"))])]
ELIGIBILITY = [
    # (what, agent's cache block, strategy caches, request changes, expected)
    ("no opt-in", None, False, {}, "not_opted_in"),
    ("the strategy opts in", None, True, {}, None),
    ("the agent opts in", OptIn(), False, {}, None),
    ("the agent opts out under a caching strategy", OptIn(enabled=False), True, {}, "opted_out"),
    ("temperature above 0", OptIn(), False, {"params": Params(temperature=0.7)}, "sampled"),
    ("no temperature: the vendor samples", OptIn(), False, {"params": Params()}, "sampled"),
    ("a strategy does not opt in to sampled", None, True, {"params": Params(temperature=1.0)}, "sampled"),
    ("the agent opts in to sampled", OptIn(sampled=True), False, {"params": Params(temperature=1.0)}, None),
    ("a greedy seed-free request with tools", OptIn(), False, {"tools": [TOOL]}, None),
    ("an image by URL", OptIn(), False, {"messages": REMOTE}, "remote_image"),
    ("an inline image", OptIn(), False, {"messages": INLINE}, None),
    ("a streamed request", OptIn(), False, {"stream": True}, None),
]


@pytest.mark.parametrize(("what", "agent", "strategy", "changes", "expected"), ELIGIBILITY,
                         ids=[row[0] for row in ELIGIBILITY])
def test_eligibility(what, agent, strategy, changes, expected):
    assert eligibility(request(**changes), agent, strategy) == expected


def test_every_reason_is_reachable():
    assert {row[-1] for row in ELIGIBILITY} - {None} == set(INELIGIBLE)


# --------------------------------------------------------------------------- stored answers


def answer_to(req: LlmRequest, **changes) -> LlmResponse:
    base = LlmResponse(
        request_id=req.request_id, agent_id=req.agent_id, status="ok",
        message=AssistantMessage(content="A monoid.", tool_calls=[ToolCall(id="c9", function=FunctionCall(name="f"))]),
        model=TARGET, provider="openai", finish_reason="tool_calls", emulated=True,
        usage=Usage(input_tokens=20, output_tokens=5), cost_usd=0.0012, latency_ms=850.0,
        attempts=[Attempt(provider="openai", model=TARGET, outcome="ok", latency_ms=850.0)],
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, None),
    ({"finish_reason": "stop"}, None),
    ({"finish_reason": "length"}, None),
    ({"status": "error", "error": ErrorInfo(code="timeout", message="late")}, "error"),
    ({"finish_reason": "error"}, "finish_reason"),
    ({"finish_reason": "content_filter"}, "finish_reason"),
    ({"cached": True}, "cached"),
    ({"verification": Verification(status="failed", draft_model="a", draft_provider="p", verifier_model="b",
                                   verifier_provider="p")}, "unverified"),
    ({"verification": Verification(status="verified", draft_model="a", draft_provider="p", verifier_model="b",
                                   verifier_provider="p")}, None),
])
def test_only_clean_completions_are_stored(changes, expected):
    assert storable(answer_to(request(), **changes)) == expected


def test_a_hit_is_marked_free_and_has_no_attempts_and_no_ids_of_the_first_request():
    first, repeat = request(), request(request_id="r2", agent_id="beta")
    stored = to_cached(answer_to(first), stored_at=1000.0)
    wire = msgspec.json.encode(stored)
    assert b"r1" not in wire and b"alpha" not in wire
    hit = cached_response(msgspec.json.decode(wire, type=CachedAnswer), repeat, latency_ms=0.1234)
    assert (hit.request_id, hit.agent_id, hit.status, hit.cached) == ("r2", "beta", "ok", True)
    assert hit.cost_usd == 0 and hit.usage == Usage() and hit.attempts == [] and hit.latency_ms == 0.123
    assert (hit.model, hit.provider, hit.emulated, hit.finish_reason) == (TARGET, "openai", True, "tool_calls")
    assert hit.message == answer_to(first).message
    assert msgspec.json.decode(msgspec.json.encode(hit))["cached"] is True


def test_a_hit_does_not_share_its_lists_with_the_store():
    stored = to_cached(answer_to(request()), stored_at=1.0)
    hit = cached_response(stored, request(), 0.0)
    assert hit.message is not None
    hit.message.tool_calls.clear()
    assert len(stored.tool_calls) == 1


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300), st.integers(1, 50))
def test_pieces_spell_the_text(text, size):
    pieces = split_pieces(text, size)
    assert "".join(pieces) == text
    assert all(0 < len(p) <= size for p in pieces)


def test_the_hit_rate():
    stats = CacheStats()
    assert stats.hit_rate == 0.0
    stats.hits, stats.misses = 3, 1
    assert stats.hit_rate == 0.75
    stats.bypass("sampled")
    stats.bypass("sampled")
    assert stats.bypassed == {"sampled": 2}


# --------------------------------------------------------------------------- the local layer


def test_an_entry_lives_until_its_ttl_and_not_at_it():
    store: LruTtl[str, str] = LruTtl(max_entries=10, max_bytes=100, ttl_s=5.0)
    store.put("k", "v", 1, now=100.0)
    assert store.get("k", 104.999) == "v"
    assert store.get("k", 105.0) is None
    assert (store.hits, store.misses, store.expirations, len(store), store.bytes) == (1, 1, 1, 0, 0)


def test_the_least_recently_used_goes_first():
    store: LruTtl[str, str] = LruTtl(max_entries=2, max_bytes=100, ttl_s=60.0)
    store.put("a", "A", 1, 0.0)
    store.put("b", "B", 1, 0.0)
    assert store.get("a", 1.0) == "A"  # b is now the oldest use
    store.put("c", "C", 1, 2.0)
    assert "b" not in store and store.get("a", 3.0) == "A" and store.get("c", 3.0) == "C"
    assert store.evictions == 1


def test_bytes_bound_the_store_and_a_value_larger_than_it_is_not_kept():
    store: LruTtl[str, str] = LruTtl(max_entries=100, max_bytes=10, ttl_s=60.0)
    store.put("a", "A", 6, 0.0)
    store.put("b", "B", 6, 0.0)
    assert "a" not in store and store.bytes == 6
    assert store.put("huge", "H", 11, 0.0) is False and "huge" not in store and "b" in store


def test_an_expired_entry_pushed_out_is_an_expiry_not_an_eviction():
    store: LruTtl[str, str] = LruTtl(max_entries=1, max_bytes=10, ttl_s=1.0)
    store.put("a", "A", 1, 0.0)
    store.put("b", "B", 1, 5.0)
    assert (store.evictions, store.expirations) == (0, 1)


def test_a_shorter_ttl_per_entry_and_never_a_longer_one():
    store: LruTtl[str, str] = LruTtl(max_entries=10, max_bytes=100, ttl_s=10.0)
    store.put("short", "S", 1, 0.0, ttl_s=2.0)
    store.put("long", "L", 1, 0.0, ttl_s=99.0)
    store.put("none", "N", 1, 0.0, ttl_s=0.0)
    assert store.get("short", 2.0) is None and store.get("long", 9.9) == "L" and store.get("long", 10.0) is None
    assert "none" not in store


def test_a_sweep_drops_what_is_expired():
    store: LruTtl[str, str] = LruTtl(max_entries=10, max_bytes=100, ttl_s=10.0)
    store.put("a", "A", 3, 0.0)
    store.put("b", "B", 4, 5.0)
    assert store.evict_expired(12.0) == 1 and "a" not in store and store.bytes == 4
    assert store.discard("b") and not store.discard("b") and store.bytes == 0


def test_bad_bounds_and_sizes_raise():
    with pytest.raises(ValueError):
        LruTtl(max_entries=0, max_bytes=10, ttl_s=1.0)
    with pytest.raises(ValueError):
        LruTtl(max_entries=1, max_bytes=10, ttl_s=0.0)
    with pytest.raises(ValueError):
        LruTtl(max_entries=1, max_bytes=10, ttl_s=1.0).put("k", "v", -1, 0.0)
    with pytest.raises(ValueError):
        split_pieces("abc", 0)


class Reference:
    """The store's meaning, spelled slowly: a list in recency order (oldest first)."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self.items: list[tuple[str, int, int, float]] = []  # key, value, size, expires_at

    def get(self, key: str, now: float) -> int | None:
        for i, (k, v, size, expires_at) in enumerate(self.items):
            if k == key:
                del self.items[i]
                if now >= expires_at:
                    return None
                self.items.append((k, v, size, expires_at))
                return v
        return None

    def put(self, key: str, value: int, size: int, now: float) -> None:
        self.items = [item for item in self.items if item[0] != key]
        if size > self.max_bytes:
            return
        while self.items and (len(self.items) >= self.max_entries
                              or sum(i[2] for i in self.items) + size > self.max_bytes):
            self.items.pop(0)
        self.items.append((key, value, size, now + self.ttl_s))


operations = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.sampled_from("abcdef"), st.integers(0, 12),
              st.floats(0, 4, allow_nan=False)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 20), st.floats(0.5, 10, allow_nan=False), operations)
def test_the_store_behaves_like_its_reference(max_entries, max_bytes, ttl_s, ops):
    store: LruTtl[str, int] = LruTtl(max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl_s)
    ref = Reference(max_entries, max_bytes, ttl_s)
    now, gets = 0.0, 0
    for value, (op, k, size, step) in enumerate(ops):
        now += step
        if op == "get":
            gets += 1
            assert store.get(k, now) == ref.get(k, now)
        else:
            kept = store.put(k, value, size, now)
            ref.put(k, value, size, now)
            assert kept == (size <= max_bytes)
            assert store.get(k, now) == (value if kept else None)
            gets += 1
            ref.get(k, now)
        assert len(store) <= max_entries and 0 <= store.bytes <= max_bytes
        assert store.bytes == sum(item[2] for item in ref.items)
        assert store.hits + store.misses == gets
