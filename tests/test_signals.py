"""The wire contract: every signal survives the envelope, and every bad input gets its code.

These tests only import ``signals``: another agent must be able to use the contract without
the router, so nothing here may need ``router_agent``.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import signals
from signals import (
    QUEUE_GROUP,
    SignalError,
    Subjects,
    decode_data,
    decode_event,
    encode_event,
    event_type,
    token,
)
from signals.subjects import untoken
from signals.types import (
    SIGNAL_TYPES,
    AssistantMessage,
    Attempt,
    Candidate,
    ChatMessage,
    CostLine,
    CostReport,
    ErrorInfo,
    LlmChunk,
    LlmRequest,
    LlmResponse,
    ModelPrice,
    ModelSpec,
    ModelUpdate,
    Params,
    ProviderHealth,
    ProviderMetrics,
    ProviderRegister,
    ProviderRegistered,
    ProviderStats,
    ProviderUpdate,
    RateLimits,
    Rejection,
    Requirements,
    RouterError,
    RoutingDecision,
    Task,
    ToolCallFragment,
    Usage,
)

# --------------------------------------------------------------------------- one of each

ERROR = ErrorInfo(code="invalid_request", message="bad role", field="$.data.messages[0].role")

# Non-default values almost everywhere, so that a field dropped by the encoder (or decoded
# into the wrong member of a union) makes the round trip fail.
SAMPLES: dict[str, msgspec.Struct] = {
    "llm_request": LlmRequest(
        request_id="req-1",
        agent_id="cto_agent",
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Pick a database. ✓", name="alice"),
        ],
        model="opus",
        params=Params(temperature=0.2, top_p=0.9, max_tokens=256, stop=["\n\n"], seed=7),
        task=Task(
            type="architecture",
            complexity=9,
            privacy_level="high",
            critical=True,
            tags={"team": "core", "priority": 2, "weight": 0.5, "urgent": True},
        ),
        requirements=Requirements(
            capabilities=["complex_reasoning"],
            max_cost_usd=0.5,
            max_latency_ms=9000,
            model_type="local",
        ),
        stream=True,
        timeout_ms=30_000,
        metadata={"trace": "abc"},
    ),
    "llm_response": LlmResponse(
        request_id="req-1",
        status="ok",
        agent_id="cto_agent",
        message=AssistantMessage(content="Postgres."),
        model="llama-3-70b",
        provider="local",
        emulated=True,
        finish_reason="stop",
        usage=Usage(input_tokens=12, output_tokens=3),
        cost_usd=0.0001,
        latency_ms=81.5,
        attempts=[
            Attempt(
                provider="openai", model="gpt-4-turbo", outcome="error", latency_ms=3.0, error=ERROR
            ),
            Attempt(provider="local", model="llama-3-70b", outcome="ok", latency_ms=78.0),
        ],
    ),
    "llm_chunk": LlmChunk(
        request_id="req-1",
        agent_id="cto_agent",
        seq=3,
        content="Post",
        tool_calls=[ToolCallFragment(index=0, id="call_1", name="lookup", arguments='{"q":')],
    ),
    "routing_decision": RoutingDecision(
        request_id="req-1",
        agent_id="cto_agent",
        strategy="cost_optimized",
        reason="rule task.privacy_level == 'high'",
        chosen=Candidate(provider="local", model="llama-3-70b", score=0.9, estimated_cost_usd=0.0),
        fallbacks=[Candidate(provider="local", model="qwen-2-72b", score=0.4)],
        rejected=[
            Rejection(provider="openai", model="gpt-4-turbo", constraint="privacy", detail="cloud")
        ],
        emulated=True,
    ),
    "provider_register": ProviderRegister(
        provider="vllm-1",
        base_url="http://10.0.0.5:8000/v1",
        type="local",
        models=[
            ModelSpec(
                name="mistral-7b",
                model_id="mistralai/Mistral-7B-Instruct",
                capabilities=["code_generation"],
                cost_per_1k_tokens=ModelPrice(input=0.0001, output=0.0002),
                context_window=32_768,
                rate_limits=RateLimits(requests_per_minute=600, tokens_per_minute=100_000),
            )
        ],
        api_key_env="VLLM_KEY",
        weight=2.0,
        enabled=False,
        timeout_ms=5_000,
    ),
    "provider_registered": ProviderRegistered(
        provider="vllm-1", accepted=False, action="update", models=["mistral-7b"], errors=[ERROR]
    ),
    "provider_update": ProviderUpdate(
        provider="vllm-1",
        enabled=True,
        weight=0.5,
        timeout_ms=1_000,
        models=[
            ModelUpdate(name="mistral-7b", cost_per_1k_tokens=ModelPrice(input=1.0), enabled=False)
        ],
    ),
    "provider_health": ProviderHealth(
        provider="openai", status="degraded", latency_ms=950.0, detail="slow"
    ),
    "provider_metrics": ProviderMetrics(
        instance_id="router-a",
        window_s=10.0,
        stats=ProviderStats(
            provider="openai",
            health="healthy",
            circuit="closed",
            enabled=True,
            emulated=False,
            in_flight=3,
            requests=100,
            successes=98,
            failures=2,
            error_rate=0.02,
            avg_latency_ms=420.0,
            input_tokens=1000,
            output_tokens=500,
            cost_usd=0.25,
        ),
    ),
    "cost_report": CostReport(
        instance_id="router-a",
        since="2025-01-01T00:00:00Z",
        total=CostLine(requests=3, input_tokens=30, output_tokens=20, cost_usd=0.01),
        by_agent={"cto_agent": CostLine(requests=3, cost_usd=0.01)},
        by_model={"gpt-4-turbo": CostLine(requests=1)},
        by_provider={"openai": CostLine(requests=1)},
        by_day={"2025-01-01": CostLine(requests=3, cached_input_tokens=10, cost_usd=0.01, cost_micros=10_000)},
        day="2025-01-01", time_zone="Europe/Paris", shared=True, projected_day_usd=0.5,
        budgets=[signals.BudgetStatus(scope="cloud", limit_usd=500.0, used_usd=0.01, remaining_usd=499.99,
                                      local_only_at_usd=400.0)],
    ),
    "cost_event": signals.CostEvent(
        instance_id="router-a", day="2025-01-01", batch="1a2b-7",
        entries=[signals.CostEntry(agent_id="cto_agent", provider="openai", model="gpt-4-turbo", cloud=True,
                                   requests=2, input_tokens=300, output_tokens=40, cached_input_tokens=100,
                                   cost_micros=3_700)],
    ),
    "router_error": RouterError(subject="provider_health", error=ERROR),
    "control_set_primary": signals.ControlSetPrimary(
        agent_id="cto_agent", model="llama-3-70b", reason="cost review", duration_s=3600.0, requested_by="ops"
    ),
    "control_override_strategy": signals.ControlOverrideStrategy(
        strategy="privacy_first", reason="audit", agent_id="qa_agent", duration_s=7200.0
    ),
    "control_force_model": signals.ControlForceModel(task_id="task-9", model="gpt-4-turbo", reason="repro"),
    "control_clear": signals.ControlClear(kind="strategy", reason="audit over"),
    "control_table": signals.ControlTable(agent_id="cto_agent"),
    "cost_query": signals.CostQuery(refresh=False),
    "control_result": signals.ControlResult(
        accepted=True, action="override_strategy", instance_id="router-a", changed=True,
        change=signals.RoutingChange(action="set", kind="strategy", strategy="privacy_first", duration_s=7200.0,
                                     reason="audit"),
        expires_at="2025-01-01T14:00:00+00:00",
    ),
    "routing_table": signals.RoutingTable(
        instance_id="router-a", default_strategy="round_robin", strategy="privacy_first",
        strategies=["privacy_first", "round_robin"],
        agents={"cto_agent": signals.AgentRouting(
            strategy="privacy_first", strategy_source="global_override", primary="claude-3-opus",
            primary_source="config", model_preferences={"primary": "claude-3-opus"}, routing_rules=3,
        )},
        overrides=[signals.OverrideInfo(kind="strategy", strategy="privacy_first", reason="audit", expires_in_s=60.0)],
    ),
    "routing_control": signals.RoutingControl(
        instance_id="router-a",
        change=signals.RoutingChange(action="clear", kind="forced", key="task-9", requested_by="ops"),
    ),
}


def test_package_exports_the_contract() -> None:
    """``import signals`` alone must give every Struct, so other agents need no router code."""
    for name, obj in vars(signals.types).items():
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj is not msgspec.Struct:
            assert getattr(signals, name) is obj, name
    assert signals.SIGNAL_TYPES is SIGNAL_TYPES


def test_every_signal_has_a_sample() -> None:
    """A new signal in SIGNAL_TYPES must get a sample here, or it is never round-tripped."""
    assert SAMPLES.keys() == SIGNAL_TYPES.keys()
    for name, sample in SAMPLES.items():
        assert type(sample) is SIGNAL_TYPES[name]


@pytest.mark.parametrize("name", list(SIGNAL_TYPES))
def test_round_trip(name: str) -> None:
    sample = SAMPLES[name]
    payload = encode_event(name, sample, source="tests", event_id="ev-1")
    raw, data = decode_event(payload, name)
    assert data == sample
    assert (raw.id, raw.source, raw.type, raw.specversion) == (
        "ev-1",
        "tests",
        event_type(name),
        "1.0",
    )
    assert decode_data(payload, name) == sample


def test_envelope_shape_on_the_wire() -> None:
    """The body is CloudEvents structured JSON; trace context is a header, never a body field."""
    body = json.loads(encode_event("llm_request", SAMPLES["llm_request"], source="tests"))
    assert set(body) == {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
    assert body["type"] == "io.llmrouter.llm_request.v1"
    assert body["time"].endswith("Z")
    assert body["data"]["request_id"] == "req-1"


def test_omitted_optional_fields_take_their_defaults() -> None:
    minimal = {"request_id": "r", "agent_id": "a", "messages": [{"role": "user", "content": "hi"}]}
    _, data = decode_event(_event(data=minimal), "llm_request")
    assert data.params == Params() and data.task == Task() and data.stream is False
    assert data.model is None and data.metadata == {}


# --------------------------------------------------------------------------- decode errors


def _event(signal: str = "llm_request", **fields: Any) -> bytes:
    """A valid envelope for ``signal`` with some fields replaced (``data=...`` included)."""
    body = json.loads(encode_event(signal, SAMPLES[signal], source="tests", event_id="ev-1"))
    body.update(fields)
    return json.dumps(body).encode()


def _error(payload: bytes, signal: str = "llm_request") -> SignalError:
    with pytest.raises(SignalError) as info:
        decode_event(payload, signal)
    return info.value


def _request_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(msgspec.json.encode(SAMPLES["llm_request"]))
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"not json", b'{"specversion": "1.0",}', _event() + b" x"]
)
def test_malformed_json(payload: bytes) -> None:
    assert _error(payload).code == "malformed_json"


def test_malformed_json_inside_data() -> None:
    payload = _event().replace(b'"data": {', b'"data": {{', 1)
    assert _error(payload).code == "malformed_json"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_request_data(messages=[]), "$.data.messages"),
        (_request_data(messages="hi"), "$.data.messages"),
        (_request_data(messages=[{"role": "robot", "content": "x"}]), "$.data.messages[0].role"),
        (_request_data(params={"temperature": 3}), "$.data.params.temperature"),
        (_request_data(task={"complexity": 11}), "$.data.task.complexity"),
        (_request_data(timeout_ms=0), "$.data.timeout_ms"),
        (_request_data(request_id="has space"), "$.data.request_id"),
    ],
)
def test_invalid_data_names_the_key_path(data: dict[str, Any], field: str) -> None:
    error = _error(_event(data=data))
    assert error.code == "invalid_request"
    assert error.field == field
    assert f"`{field}`" in error.message


def test_unknown_nested_field_is_named() -> None:
    """A typo in a nested object is refused, naming the typo and where it is."""
    error = _error(_event(data=_request_data(params={"temprature": 0.1})))
    assert error.code == "invalid_request"
    assert "unknown field `temprature`" in error.message
    assert error.field is not None and error.field.startswith("$.data.params")


def test_invalid_envelope_field_names_the_key_path() -> None:
    error = _error(_event(specversion=1))
    assert (error.code, error.field) == ("invalid_request", "$.specversion")
    assert error.message.startswith("not a CloudEvent")


@pytest.mark.parametrize("payload", [b"[]", b'"event"', json.dumps({"id": "x"}).encode()])
def test_not_a_cloudevent(payload: bytes) -> None:
    error = _error(payload)
    assert error.code == "invalid_request"
    assert "not a CloudEvent" in error.message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"request_id": "r", "agent_id": "a"}, "missing required field `messages`"),
        ({**_request_data(), "colour": "red"}, "unknown field `colour`"),
        (None, "got `null`"),
    ],
)
def test_errors_at_the_root_of_data_name_a_path_under_data(data: Any, words: str) -> None:
    """msgspec writes no path for errors at the root of what it decodes; the caller needs one."""
    error = _error(_event(data=data))
    assert error.code == "invalid_request"
    assert words in error.message
    assert error.field is not None and error.field.startswith("$.data")


def test_missing_field_path_names_the_field() -> None:
    assert _error(_event(data={"request_id": "r", "agent_id": "a"})).field == "$.data.messages"


def test_unknown_field_starting_with_dollar_is_reported_verbatim() -> None:
    error = _error(_event(data={**_request_data(), "$ref": "x"}))
    assert "`$ref`" in error.message


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "io.llmrouter.llm_request.v2"},
        {"type": "io.llmrouter.llm_request.v10"},
        {"specversion": "0.3"},
        {"specversion": "2.0"},
    ],
)
def test_unsupported_version(changes: dict[str, str]) -> None:
    error = _error(_event(**changes))
    assert error.code == "unsupported_version"
    assert next(iter(changes.values())) in error.message


def test_version_is_checked_before_data() -> None:
    """A v2 sender gets told about the version, not about a field v1 does not know."""
    payload = _event(type="io.llmrouter.llm_request.v2", data={"new_v2_field": 1})
    assert _error(payload).code == "unsupported_version"


@pytest.mark.parametrize("event_type_", ["io.llmrouter.llm_response.v1", "com.example.other", ""])
def test_wrong_type_on_a_subject(event_type_: str) -> None:
    error = _error(_event(type=event_type_))
    assert error.code == "invalid_request"
    assert "on a llm_request subject" in error.message


def test_a_response_is_not_accepted_as_a_request() -> None:
    payload = encode_event("llm_response", SAMPLES["llm_response"])
    assert _error(payload, "llm_request").code == "invalid_request"
    assert decode_data(payload, "llm_response") == SAMPLES["llm_response"]


# --------------------------------------------------------------------------- Identifier


def _with_request_id(value: str) -> bytes:
    return _event(data=_request_data(request_id=value))


@pytest.mark.parametrize("value", ["has space", "tab\there", "", "x" * 129, "semi;colon", "ünï"])
def test_identifier_rejects(value: str) -> None:
    error = _error(_with_request_id(value))
    assert (error.code, error.field) == ("invalid_request", "$.data.request_id")


@pytest.mark.parametrize("value", ["x" * 128, "a", "agent.v2:eu-west/1@prod", "A_b-C"])
def test_identifier_accepts(value: str) -> None:
    assert decode_data(_with_request_id(value), "llm_request").request_id == value


# --------------------------------------------------------------------------- subjects


def test_subjects_without_prefix() -> None:
    s = Subjects()
    assert (s.llm_request, s.provider_register, s.cost_report) == (
        "llm_request",
        "provider_register",
        "cost_report",
    )
    assert s.llm_response("cto_agent") == "llm_response.cto_agent"
    assert s.routing_decision("cto_agent") == "routing_decision.cto_agent"
    assert s.provider_registered("openai") == "provider_registered.openai"
    assert s.provider_metrics("openai") == "provider_metrics.openai"
    assert s.watch("llm_response") == ["llm_response", "llm_response.>"]
    assert QUEUE_GROUP == "router"


@pytest.mark.parametrize("prefix", ["acme", "acme."])
def test_subjects_with_prefix(prefix: str) -> None:
    s = Subjects(prefix)
    assert s.llm_request == "acme.llm_request"
    assert s.provider_update == "acme.provider_update"
    assert s.provider_health == "acme.provider_health"
    assert s.router_error == "acme.router_error"
    assert s.llm_response("qa_agent") == "acme.llm_response.qa_agent"
    assert s.watch("provider_metrics") == ["acme.provider_metrics", "acme.provider_metrics.>"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cto_agent", "cto_agent"),
        ("a-b", "a-b"),
        ("agent.v2:eu-west/1@prod", "agent%2Ev2:eu-west/1@prod"),
        ("team.agent", "team%2Eagent"),
        ("all*", "all%2A"),
        ("x>", "x%3E"),
        ("my agent", "my%20agent"),
        ("100%", "100%25"),
        ("ü", "%C3%BC"),
        ("", "%"),
    ],
)
def test_token(value: str, expected: str) -> None:
    assert token(value) == expected
    assert untoken(expected) == value


def test_an_agent_id_cannot_widen_a_subscription() -> None:
    """An agent id with wildcards or dots must stay one literal token of the subject."""
    subject = Subjects("p").llm_response("a.*.>")
    assert subject == "p.llm_response.a%2E%2A%2E%3E"
    assert subject.count(".") == 2


def test_ids_that_differ_get_different_subjects() -> None:
    """``a.b`` and ``a_b`` once shared ``llm_response.a_b``: each heard the other's answers."""
    ids = ["a.b", "a_b", "a:b", "a@b", "a/b", "a-b", "ab", "a%2Eb", "a%b", "a b", "a*b", "a>b"]
    assert len({Subjects().llm_response(i) for i in ids}) == len(ids)


# --------------------------------------------------------------------------- property


_ID_ALPHABET = string.ascii_letters + string.digits + "_.:@/-"
identifiers = st.text(_ID_ALPHABET, min_size=1, max_size=128)
capabilities = st.text(_ID_ALPHABET, min_size=1, max_size=64)
short_text = st.text(max_size=40)


def finite(low: float | None = None, high: float | None = None) -> st.SearchStrategy[float]:
    """Floats JSON can carry: msgspec writes NaN and infinity as null, which is not a float."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


requests = st.builds(
    LlmRequest,
    request_id=identifiers,
    agent_id=identifiers,
    messages=st.lists(
        st.builds(
            ChatMessage,
            # "tool" needs a tool_call_id: tests/test_canonical_signals.py round-trips those.
            role=st.sampled_from(["system", "user", "assistant", "developer"]),
            content=st.text(max_size=200),
            name=_optional(short_text),
        ),
        min_size=1,
        max_size=4,
    ),
    model=_optional(identifiers),
    params=st.builds(
        Params,
        temperature=_optional(finite(0, 2)),
        top_p=_optional(finite(0, 1)),
        max_tokens=_optional(st.integers(1, 1_000_000)),
        stop=_optional(st.lists(short_text, max_size=3)),
        seed=_optional(int64),
        presence_penalty=_optional(finite(-2, 2)),
        frequency_penalty=_optional(finite(-2, 2)),
    ),
    task=st.builds(
        Task,
        type=_optional(short_text),
        complexity=_optional(st.integers(0, 10)),
        privacy_level=_optional(st.sampled_from(["low", "normal", "high"])),
        critical=st.booleans(),
        involves_ui_design=st.booleans(),
        requires_reasoning=st.booleans(),
        tags=st.dictionaries(
            short_text, short_text | int64 | finite(-9.2e18, 9.2e18) | st.booleans(), max_size=4
        ),
    ),
    requirements=st.builds(
        Requirements,
        capabilities=st.lists(capabilities, max_size=3),
        max_cost_usd=_optional(finite(0, 1e6)),
        max_latency_ms=_optional(st.integers(1, 3_600_000)),
        model_type=_optional(st.sampled_from(["cloud", "local"])),
    ),
    stream=st.booleans(),
    timeout_ms=_optional(st.integers(1, 3_600_000)),
    metadata=st.dictionaries(short_text, short_text, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_any_valid_request_round_trips(request: LlmRequest) -> None:
    _, data = decode_event(encode_event("llm_request", request), "llm_request")
    assert data == request
    # Equality of floats says 1 == 1.0 == True; the wire must keep the JSON type too.
    assert [type(v) for v in data.task.tags.values()] == [
        type(v) for v in request.task.tags.values()
    ]


# A subject token may hold anything but '.', '*' and '>' (wildcards when alone) and
# whitespace; tokens starting with '$' are the server's by convention.
_NOT_IN_A_TOKEN = re.compile(r"[.*>\s]|^\$")


@settings(max_examples=500, deadline=None)
@given(identifiers, identifiers)
def test_token_is_injective_over_identifiers(a: str, b: str) -> None:
    assert (token(a) == token(b)) == (a == b)
    assert untoken(token(a)) == a
    assert not _NOT_IN_A_TOKEN.search(token(a))
    if "." not in a:
        assert token(a) == a, "an id without dots is its own token"


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_token_is_injective_over_any_text(value: str) -> None:
    """Invalid input is answered on a subject built from what could be read: any string."""
    result = token(value)
    assert untoken(result) == value
    assert result and not _NOT_IN_A_TOKEN.search(result)
