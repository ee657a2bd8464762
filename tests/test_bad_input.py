"""Bad input gets a typed error that names the problem, is counted, and never costs another
request its answer. Valid requests flow the whole time and every one must be answered."""

from __future__ import annotations

import asyncio
import json

import pytest

import signals as sig
from tests.conftest import decode_any

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 64 * 1024


def envelope(data, type_="io.llmrouter.llm_request.v1", specversion="1.0", **extra) -> bytes:
    event = {"specversion": specversion, "id": "x1", "source": "bad-actor", "type": type_, "time": "2026-01-01T00:00:00Z",
             "data": data, **extra}
    return json.dumps(event).encode()


def request_data(**changes) -> dict:
    data = {"request_id": "bad-1", "agent_id": "mallory", "messages": [{"role": "user", "content": "hi"}]}
    data.update(changes)
    return data


# (name, payload, expected error code, expected key path or None)
BAD_REQUESTS: list[tuple[str, bytes, str, str | None]] = [
    ("truncated json", b'{"specversion": "1.0", "id"', "malformed_json", None),
    ("empty payload", b"", "malformed_json", None),
    ("not utf-8", b"\xff\xfe\x00garbage", "malformed_json", None),
    ("json array", b"[1, 2, 3]", "invalid_request", None),
    ("json string", b'"hello"', "invalid_request", None),
    ("envelope without type", json.dumps({"specversion": "1.0", "id": "1", "source": "s", "data": {}}).encode(),
     "invalid_request", None),
    ("old specversion", envelope(request_data(), specversion="0.3"), "unsupported_version", None),
    ("future signal version", envelope(request_data(), type_="io.llmrouter.llm_request.v2"), "unsupported_version", None),
    ("wrong signal type", envelope(request_data(), type_="io.llmrouter.provider_register.v1"), "invalid_request", None),
    ("data is null", envelope(None), "invalid_request", "$.data"),
    ("missing request_id", envelope({"agent_id": "a", "messages": [{"role": "user", "content": "x"}]}),
     "invalid_request", "$.data.request_id"),
    ("request_id wrong type", envelope(request_data(request_id=42)), "invalid_request", "$.data.request_id"),
    ("request_id with spaces", envelope(request_data(request_id="a b c")), "invalid_request", "$.data.request_id"),
    ("agent_id too long", envelope(request_data(agent_id="a" * 200)), "invalid_request", "$.data.agent_id"),
    ("empty message list", envelope(request_data(messages=[])), "invalid_request", "$.data.messages"),
    ("messages not a list", envelope(request_data(messages="hi")), "invalid_request", "$.data.messages"),
    ("unknown role", envelope(request_data(messages=[{"role": "wizard", "content": "x"}])),
     "invalid_request", "$.data.messages[0].role"),
    ("content not a string", envelope(request_data(messages=[{"role": "user", "content": 7}])),
     "invalid_request", "$.data.messages[0].content"),
    ("unknown field", envelope(request_data(priority="urgent")), "invalid_request", "$.data.priority"),
    ("temperature out of range", envelope(request_data(params={"temperature": 5})),
     "invalid_request", "$.data.params.temperature"),
    ("max_tokens zero", envelope(request_data(params={"max_tokens": 0})), "invalid_request", "$.data.params.max_tokens"),
    ("complexity above 10", envelope(request_data(task={"complexity": 11})), "invalid_request", "$.data.task.complexity"),
    ("unknown privacy level", envelope(request_data(task={"privacy_level": "secret"})),
     "invalid_request", "$.data.task.privacy_level"),
    ("negative max cost", envelope(request_data(requirements={"max_cost_usd": -1})),
     "invalid_request", "$.data.requirements.max_cost_usd"),
    ("negative timeout", envelope(request_data(timeout_ms=-5)), "invalid_request", "$.data.timeout_ms"),
    ("stream not a bool", envelope(request_data(stream="yes")), "invalid_request", "$.data.stream"),
    ("oversize payload", envelope(request_data(messages=[{"role": "user", "content": "x" * (MAX_PAYLOAD + 10)}])),
     "payload_too_large", None),
]


async def test_bad_requests_get_typed_errors_while_valid_requests_are_all_answered(agents, client, subjects):
    agent = await agents.start({"router": {"max_payload_bytes": MAX_PAYLOAD}})
    assert len(BAD_REQUESTS) >= 20

    valid = [client.new_request(agent_id="good", content=f"valid {i}") for i in range(60)]
    rest = iter(valid[30:])
    valid_tasks = [asyncio.create_task(client.ask(r)) for r in valid[:30]]
    bad_answers = []
    for name, payload, _, _ in BAD_REQUESTS:  # interleaved with valid ones in flight
        bad_answers.append(await client.ask_raw(payload))
        valid_tasks.append(asyncio.create_task(client.ask(next(rest))))
    valid_tasks += [asyncio.create_task(client.ask(r)) for r in rest]
    valid_answers = await asyncio.gather(*valid_tasks)

    assert len(valid_answers) == len(valid)
    assert {a.request_id for a in valid_answers} == {r.request_id for r in valid}
    assert all(a.status == "ok" for a in valid_answers)

    for (name, _, code, field), answer in zip(BAD_REQUESTS, bad_answers):
        assert isinstance(answer, sig.LlmResponse), name
        assert answer.status == "error", name
        assert answer.error.code == code, (name, answer.error)
        assert answer.error.message, name
        if field is not None:
            assert answer.error.field == field, (name, answer.error)
    # The request id is echoed wherever it could be read.
    readable = dict(zip([b[0] for b in BAD_REQUESTS], bad_answers))
    assert readable["empty message list"].request_id == "bad-1"
    assert readable["unknown role"].agent_id == "mallory"

    assert agent.state.metrics.invalid_inputs == len(BAD_REQUESTS)
    assert sum(agent.state.metrics.invalid_by_code.values()) == len(BAD_REQUESTS)
    assert agent.state.metrics.completed == len(valid)


async def test_bad_request_without_reply_subject_is_answered_on_the_stream(agent, client, subjects):
    invalid_stream = await client.collect(subjects.llm_response(""))
    agent_stream = await client.collect(subjects.llm_response("mallory"))
    await client.nc.publish(subjects.llm_request, b"not json at all")
    await client.nc.publish(subjects.llm_request, envelope(request_data(messages=[])))
    unaddressed = await invalid_stream.wait_for(lambda r: r.status == "error")
    assert unaddressed.error.code == "malformed_json"
    addressed = await agent_stream.wait_for(lambda r: r.request_id == "bad-1")
    assert addressed.error.code == "invalid_request"


BAD_CONTROL: list[tuple[str, str, bytes, str]] = [
    ("register without models", "provider_register",
     envelope({"provider": "p", "base_url": "http://127.0.0.1:1/v1"}, type_="io.llmrouter.provider_register.v1"),
     "invalid_request"),
    ("register unsupported api", "provider_register",
     envelope({"provider": "p", "base_url": "http://127.0.0.1:1/v1", "api": "smoke-signals", "models": [{"name": "m"}]},
              type_="io.llmrouter.provider_register.v1"), "invalid_request"),
    ("register garbage", "provider_register", b"\x00\x01", "malformed_json"),
    ("register repeated models", "provider_register",
     envelope({"provider": "p", "base_url": "http://127.0.0.1:1/v1", "models": [{"name": "m"}, {"name": "m"}]},
              type_="io.llmrouter.provider_register.v1"), "invalid_provider_config"),
    ("update unknown field", "provider_update",
     envelope({"provider": "openai", "colour": "blue"}, type_="io.llmrouter.provider_update.v1"), "invalid_request"),
    ("update negative weight", "provider_update",
     envelope({"provider": "openai", "weight": -1}, type_="io.llmrouter.provider_update.v1"), "invalid_request"),
    ("update unknown model", "provider_update",
     envelope({"provider": "openai", "models": [{"name": "gpt-99"}]}, type_="io.llmrouter.provider_update.v1"),
     "invalid_provider_config"),
    ("health bad status", "provider_health",
     envelope({"provider": "openai", "status": "on fire"}, type_="io.llmrouter.provider_health.v1"), "invalid_request"),
    ("health unknown provider", "provider_health",
     envelope({"provider": "nobody", "status": "healthy"}, type_="io.llmrouter.provider_health.v1"), "unknown_provider"),
    ("health wrong version", "provider_health",
     envelope({"provider": "openai", "status": "healthy"}, type_="io.llmrouter.provider_health.v9"),
     "unsupported_version"),
]


@pytest.mark.parametrize(("name", "signal", "payload", "code"), BAD_CONTROL, ids=[c[0] for c in BAD_CONTROL])
async def test_bad_control_signals_get_typed_errors_and_change_nothing(agent, client, name, signal, payload, code):
    before = agent.snapshot()["providers"]
    msg = await client.nc.request(getattr(client.subjects, signal), payload, timeout=5)
    answer = decode_any(msg.data)
    errors = answer.errors if isinstance(answer, sig.ProviderRegistered) else [answer.error]
    if isinstance(answer, sig.ProviderRegistered):
        assert answer.accepted is False
    assert errors[0].code == code, errors
    assert agent.snapshot()["providers"] == before
    assert agent.state.metrics.invalid_inputs == 1
    # ...and the agent still serves.
    response = await client.ask(client.new_request())
    assert response.status == "ok"


# --------------------------------------------------------------------------- hostile bytes
#
# Found while hardening the input path: deep nesting raised RecursionError inside decoding
# (no answer at all, or "internal" with a traceback), a string that is not UTF-8 got
# "internal", and numbers or strings beyond any real use were accepted and forwarded.

DEPTH = 5_000
DEEP_ARRAY = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
HOLE = "@@hole@@"


def with_hole(raw: bytes, data=None, type_="io.llmrouter.llm_request.v1", **extra) -> bytes:
    """An envelope in which the JSON string ``"@@hole@@"`` is replaced by ``raw`` verbatim."""
    return envelope(request_data() if data is None else data, type_=type_, **extra).replace(
        json.dumps(HOLE).encode(), raw
    )


# (name, payload, expected code, the request id echoed: whatever could still be read)
HOSTILE_REQUESTS: list[tuple[str, bytes, str, str]] = [
    ("deep array at the top", DEEP_ARRAY, "invalid_request", ""),
    ("deep object at the top", DEEP_OBJECT, "malformed_json", ""),
    ("deep array as data", with_hole(DEEP_ARRAY, data=HOLE), "malformed_json", ""),
    ("deep object in a message's content",
     with_hole(DEEP_OBJECT, request_data(messages=[{"role": "user", "content": HOLE}])), "malformed_json", ""),
    ("deep array in metadata", with_hole(DEEP_ARRAY, request_data(metadata={"k": HOLE})), "malformed_json", ""),
    ("deep object as the request id", with_hole(DEEP_OBJECT, request_data(request_id=HOLE)), "malformed_json", ""),
    ("deep array in an extension attribute", with_hole(DEEP_ARRAY, ext=HOLE), "malformed_json", ""),
    ("not utf-8 in a message's content",
     with_hole(b'"\xff\xfe"', request_data(messages=[{"role": "user", "content": HOLE}])), "malformed_json", "bad-1"),
    ("not utf-8 in metadata", with_hole(b'"\xc3"', request_data(metadata={"k": HOLE})), "malformed_json", "bad-1"),
    ("not utf-8 in the request id", with_hole(b'"bad-\xed\xa0\x80"', request_data(request_id=HOLE)),
     "malformed_json", ""),
    ("not utf-8 in the envelope id", with_hole(b'"\xff"', id=HOLE), "malformed_json", "bad-1"),
    ("NaN max cost", with_hole(b"NaN", request_data(requirements={"max_cost_usd": HOLE})), "malformed_json", ""),
    ("max cost 1e999", with_hole(b"1e999", request_data(requirements={"max_cost_usd": HOLE})), "invalid_request", "bad-1"),
    ("seed beyond int64", envelope(request_data(params={"seed": 2**70})), "invalid_request", "bad-1"),
    ("max latency 2**64", envelope(request_data(requirements={"max_latency_ms": 2**64})), "invalid_request", "bad-1"),
    ("request id with a trailing newline", envelope(request_data(request_id="bad-1\n")), "invalid_request",
     "bad-1\n"),
    ("capability with a space", envelope(request_data(requirements={"capabilities": ["a b"]})), "invalid_request", "bad-1"),
    ("a thousand capabilities",
     envelope(request_data(requirements={"capabilities": [f"c{i}" for i in range(1000)]})), "invalid_request", "bad-1"),
    ("5,000-char metadata value", envelope(request_data(metadata={"k": "v" * 5000})), "invalid_request", "bad-1"),
    ("100 stop sequences", envelope(request_data(params={"stop": ["x"] * 100})), "invalid_request", "bad-1"),
]


async def test_hostile_requests_each_get_exactly_one_typed_answer_while_valid_requests_flow(agent, client):
    nc = client.nc
    inboxes = []
    valid_tasks = []
    for i, (_, payload, _, _) in enumerate(HOSTILE_REQUESTS):
        reply = nc.new_inbox()
        inboxes.append(await client.collect(reply))
        await nc.publish(client.subjects.llm_request, payload, reply=reply)
        valid_tasks.append(asyncio.create_task(client.ask(client.new_request(agent_id="good", content=f"v{i}"))))
    valid_answers = await asyncio.gather(*valid_tasks)
    assert all(a.status == "ok" for a in valid_answers)
    # The router answers bad input in its callback, before it reads the next message, and
    # NATS keeps one connection's order: once this is answered, every bad answer has come.
    assert (await client.ask(client.new_request(content="last"))).status == "ok"

    for (name, _, code, request_id), inbox in zip(HOSTILE_REQUESTS, inboxes):
        answer = await inbox.wait_for(lambda _: True, timeout=5)
        assert len(inbox.data) == 1, (name, inbox.data)
        assert isinstance(answer, sig.LlmResponse), name
        assert (answer.status, answer.error.code) == ("error", code), (name, answer.error)
        assert answer.error.message, name
        assert answer.request_id == request_id, (name, answer.request_id)

    metrics = agent.state.metrics
    assert metrics.invalid_inputs == len(HOSTILE_REQUESTS)
    assert metrics.internal_errors == 0
    assert metrics.completed == len(HOSTILE_REQUESTS) + 1


def control(data, signal: str) -> bytes:
    return envelope(data, type_=f"io.llmrouter.{signal}.v1")


def control_hole(raw: bytes, data, signal: str) -> bytes:
    return with_hole(raw, data, type_=f"io.llmrouter.{signal}.v1")


REGISTER = {"provider": "p", "base_url": "http://127.0.0.1:1/v1", "models": [{"name": "m"}]}
HOSTILE_CONTROL = [
    pytest.param("provider_register",
                 control({**REGISTER, "models": [{"name": "m", "cost_per_1k_tokens": {"input": 1.7e308}}]},
                         "provider_register"), "invalid_request", id="register price 1.7e308"),
    pytest.param("provider_register",
                 control({**REGISTER, "models": [{"name": "m", "context_window": 2**64}]}, "provider_register"),
                 "invalid_request", id="register context window 2**64"),
    pytest.param("provider_register",
                 control({**REGISTER, "models": [{"name": "m", "rate_limits": {"tokens_per_minute": 10**12}}]},
                         "provider_register"), "invalid_request", id="register rate limit 10**12"),
    pytest.param("provider_register", control({**REGISTER, "weight": 1e300}, "provider_register"),
                 "invalid_request", id="register weight 1e300"),
    pytest.param("provider_register",
                 control({**REGISTER, "models": [{"name": f"m{i}"} for i in range(1000)]}, "provider_register"),
                 "invalid_request", id="register a thousand models"),
    pytest.param("provider_register",
                 control({**REGISTER, "models": [{"name": "m", "model_id": "m\r\nX-Injected: 1"}]},
                         "provider_register"), "invalid_request", id="register model id with CRLF"),
    pytest.param("provider_register", control({**REGISTER, "provider": "p\n"}, "provider_register"),
                 "invalid_request", id="register provider name with a newline"),
    pytest.param("provider_update", control({"provider": "openai", "weight": 1.7e308}, "provider_update"),
                 "invalid_request", id="update weight 1.7e308"),
    pytest.param("provider_update",
                 control({"provider": "openai", "models": [{"name": "gpt-4-turbo",
                                                            "cost_per_1k_tokens": {"output": 1e300}}]},
                         "provider_update"), "invalid_request", id="update price 1e300"),
    pytest.param("provider_health", control({"provider": "openai", "status": "healthy", "latency_ms": 1e300},
                                            "provider_health"), "invalid_request", id="health latency 1e300"),
    pytest.param("provider_health", control({"provider": "openai", "status": "degraded", "detail": "d" * 5000},
                                            "provider_health"), "invalid_request", id="health detail 5000 chars"),
    pytest.param("provider_health",
                 control_hole(DEEP_ARRAY, {"provider": "openai", "status": "healthy", "detail": HOLE},
                              "provider_health"), "malformed_json", id="health deep array"),
    pytest.param("provider_health", control_hole(DEEP_OBJECT, {"provider": "openai", "status": HOLE},
                                                 "provider_health"), "malformed_json", id="health deep object"),
    pytest.param("provider_health",
                 control_hole(b'"\xff"', {"provider": "openai", "status": "healthy", "detail": HOLE},
                              "provider_health"), "malformed_json", id="health detail not utf-8"),
    pytest.param("provider_register", control_hole(DEEP_ARRAY, {**REGISTER, "models": HOLE}, "provider_register"),
                 "malformed_json", id="register deep array"),
    pytest.param("provider_register", control_hole(DEEP_OBJECT, HOLE, "provider_register"),
                 "malformed_json", id="register deep object as data"),
    pytest.param("provider_register", control_hole(b'"p\xff"', {**REGISTER, "provider": HOLE}, "provider_register"),
                 "malformed_json", id="register provider not utf-8"),
    pytest.param("provider_register",
                 control_hole(b'"\xff"', {**REGISTER, "base_url": HOLE}, "provider_register"),
                 "malformed_json", id="register base_url not utf-8"),
    pytest.param("provider_update", control_hole(DEEP_OBJECT, {"provider": "openai", "models": HOLE},
                                                 "provider_update"), "malformed_json", id="update deep object"),
]


@pytest.mark.parametrize(("signal", "payload", "code"), HOSTILE_CONTROL)
async def test_hostile_control_signals_get_one_typed_answer_and_change_nothing(agent, client, signal, payload, code):
    before = agent.snapshot()["providers"]
    reply = client.nc.new_inbox()
    inbox = await client.collect(reply)
    await client.nc.publish(getattr(client.subjects, signal), payload, reply=reply)
    answer = await inbox.wait_for(lambda _: True, timeout=3)
    errors = answer.errors if isinstance(answer, sig.ProviderRegistered) else [answer.error]
    if isinstance(answer, sig.ProviderRegistered):
        assert answer.accepted is False
    assert errors[0].code == code, errors
    # ...and the agent still serves; by its answer, any second answer would have come.
    assert (await client.ask(client.new_request())).status == "ok"
    assert len(inbox.data) == 1, inbox.data
    assert agent.snapshot()["providers"] == before
    assert agent.state.metrics.invalid_inputs == 1
    assert agent.state.metrics.internal_errors == 0


@pytest.mark.parametrize("payload", [DEEP_ARRAY, DEEP_OBJECT, with_hole(DEEP_ARRAY, data=HOLE),
                                     with_hole(DEEP_OBJECT, request_data(request_id=HOLE)),
                                     with_hole(b'"\xff"', request_data(agent_id=HOLE)),
                                     with_hole(b'"\xc3"', id=HOLE), b"\xff", b""])
def test_reading_ids_back_from_hostile_bytes_never_raises(payload):
    from router_agent.outbox import _partial

    partial = _partial(payload)
    assert partial.request_id in (None, "bad-1") and partial.agent_id in (None, "mallory")


def test_an_overlong_agent_id_is_not_cut_into_another_agents_address():
    """A 200-char id cut to 128 could be another agent's: the refusal would reach its subject."""
    from router_agent.routes import addressable_id as _short

    assert _short("a" * 200) == ""
    assert _short("a" * 128) == "a" * 128
    assert _short(["not", "a", "string"]) == ""
