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
    invalid_stream = await client.collect(subjects.llm_response("_invalid"))
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
