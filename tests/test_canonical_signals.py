"""The canonical request and answer: content parts, tools, tool calls, response formats,
usage; what a request needs of a model (``core/features.py``); token estimates with images."""

from __future__ import annotations

import json
import timeit
import typing

import msgspec
import pytest

from router_agent.core.cost import IMAGE_TOKENS, estimate_input_tokens
from router_agent.core.features import image_count, request_texts, required_capabilities
from router_agent.providers import ADAPTERS
from router_agent.providers.base import StreamAssembler, StreamEnd, TextDelta
from router_agent.providers.mock import Behaviour, MockAdapter
from router_agent.registry import emulated_base_url
from signals import (
    AssistantMessage,
    FunctionCall,
    ImagePart,
    LlmRequest,
    LlmResponse,
    ProviderApi,
    SignalError,
    ToolCall,
    Usage,
    decode_data,
    encode_event,
)

IMAGE = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def data(*messages: dict, **fields: object) -> dict:
    return {"request_id": "r-1", "agent_id": "a", "messages": list(messages) or [{"role": "user", "content": "hi"}],
            **fields}


def decode(payload: dict) -> LlmRequest:
    return decode_data(json.dumps({"specversion": "1.0", "id": "1", "source": "t",
                                   "type": "io.llmrouter.llm_request.v1", "data": payload}).encode(), "llm_request")


def refused(payload: dict) -> SignalError:
    with pytest.raises(SignalError) as caught:
        decode(payload)
    return caught.value


TOOL_CONVERSATION = [
    {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"},
                                 {"type": "image_url", "image_url": {"url": IMAGE, "detail": "high"}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "21C and sunny"},
]


def test_the_openai_shape_round_trips_as_sent() -> None:
    payload = data(*TOOL_CONVERSATION, tools=[WEATHER], tool_choice="required",
                   response_format={"type": "json_schema",
                                    "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}})
    request = decode(payload)
    assert isinstance(request.messages[0].content[1], ImagePart)
    again = json.loads(msgspec.json.encode(request))
    assert again["messages"][0] == TOOL_CONVERSATION[0]
    assert again["messages"][1] == {"role": "assistant", "tool_calls": TOOL_CONVERSATION[1]["tool_calls"]}
    assert again["messages"][2] == TOOL_CONVERSATION[2]
    assert (again["tools"], again["tool_choice"], again["response_format"]) == (
        [WEATHER], "required", payload["response_format"])
    assert decode(again) == request


def test_a_plain_string_request_is_unchanged() -> None:
    request = decode(data({"role": "user", "content": "hello"}))
    assert json.loads(msgspec.json.encode(request))["messages"] == [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(("messages", "fields", "field"), [
    ([{"role": "user", "content": None}], {}, "messages[0]"),
    ([{"role": "user"}], {}, "messages[0]"),
    ([{"role": "assistant", "content": None}], {}, "messages[0]"),
    ([{"role": "tool", "content": "x"}], {}, "messages[0]"),
    ([{"role": "user", "content": "x", "tool_call_id": "c"}], {}, "messages[0]"),
    ([{"role": "user", "content": "x", "tool_calls": []}], {}, "messages[0]"),
    ([{"role": "user", "content": [{"type": "audio", "data": "x"}]}], {}, "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "text", "txt": "x"}]}], {}, "messages[0].content[0]"),
    ([{"role": "user", "content": "x"}], {"tools": [{"type": "function", "function": {"name": "has space"}}]},
     "tools[0].function.name"),
    ([{"role": "user", "content": "x"}], {"tool_choice": "sometimes"}, "tool_choice"),
    ([{"role": "user", "content": "x"}], {"response_format": {"type": "yaml"}}, "response_format"),
    ([{"role": "user", "content": "x"}], {"tools": [WEATHER] * 129}, "tools"),
])
def test_bad_shapes_are_refused_with_the_field(messages: list, fields: dict, field: str) -> None:
    error = refused(data(*messages, **fields))
    assert error.code == "invalid_request"
    assert error.field is not None and error.field.startswith(f"$.data.{field}"), (error.field, error.message)


def test_required_capabilities_follow_the_request_shape() -> None:
    assert required_capabilities(decode(data())) == frozenset()
    assert required_capabilities(decode(data(*TOOL_CONVERSATION, tools=[WEATHER]))) == {"tool_calling", "vision"}
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}}
    assert required_capabilities(decode(data(response_format=schema))) == {"structured_output"}
    assert required_capabilities(decode(data(response_format={"type": "json_object"}))) == {"json_mode"}
    assert required_capabilities(decode(data(response_format={"type": "text"}))) == frozenset()


def test_request_texts_carry_every_text_and_no_image_data() -> None:
    request = decode(data({"role": "system", "content": "sys"}, *TOOL_CONVERSATION, tools=[WEATHER]))
    texts = request_texts(request)
    assert texts[:6] == ["sys", "weather in Paris?", "get_weather", '{"city":"Paris"}', "21C and sunny",
                         "get_weather"]
    assert "Weather in a city" in texts and any('"city"' in t for t in texts[6:])
    assert not any("base64" in t for t in texts)
    assert image_count(request) == 1


def test_images_count_a_fixed_number_of_tokens() -> None:
    with_image = decode(data(TOOL_CONVERSATION[0]))
    without = decode(data({"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]}))
    assert estimate_input_tokens(with_image) - estimate_input_tokens(without) == IMAGE_TOKENS


def test_the_plain_string_case_stays_cheap() -> None:
    """Printed, not asserted (no timed assertions): these run on every request."""
    request = decode(data({"role": "user", "content": "x" * 1024}))
    for fn in (request_texts, required_capabilities, estimate_input_tokens):
        per_call = timeit.timeit(lambda fn=fn: fn(request), number=20_000) / 20_000
        print(f"{fn.__name__}: {per_call * 1e6:.2f} us")


def test_the_answer_carries_tool_calls_and_full_usage() -> None:
    response = LlmResponse(
        request_id="r", status="ok", finish_reason="tool_calls",
        message=AssistantMessage(tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))]),
        usage=Usage(input_tokens=10, output_tokens=5, cached_input_tokens=4, reasoning_tokens=2, estimated=True),
    )
    wire = json.loads(encode_event("llm_response", response))["data"]
    assert wire["message"] == {"role": "assistant", "content": "",
                               "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f",
                                                                                           "arguments": "{}"}}]}
    assert wire["usage"]["cached_input_tokens"] == 4 and wire["usage"]["estimated"] is True
    assert decode_data(encode_event("llm_response", response), "llm_response") == response


def test_every_wire_format_of_the_contract_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(typing.get_args(ProviderApi))


@pytest.mark.parametrize(("emulator", "api", "base"), [
    ("http://127.0.0.1:9000", "openai", "http://127.0.0.1:9000/v1"),
    ("http://127.0.0.1:9000/", "anthropic", "http://127.0.0.1:9000/v1"),
    ("http://127.0.0.1:9000/v1", "gemini", "http://127.0.0.1:9000/v1beta"),
    ("http://127.0.0.1:9000", "ollama", "http://127.0.0.1:9000"),
])
def test_an_emulated_provider_is_called_where_the_emulator_serves_its_wire_format(emulator, api, base) -> None:
    assert emulated_base_url(emulator, api) == base


async def test_the_mock_streams_its_script_and_can_fail_mid_way() -> None:
    mock = MockAdapter()
    dep = type("Dep", (), {"provider": "p", "model": "m", "model_id": "mid"})()
    mock.script("p", content="Hello world", chunks=["Hello", " world"], input_tokens=3, output_tokens=2)
    assembled = StreamAssembler()
    async for event in mock.stream(decode(data()), dep, None):
        assembled.add(event)
    assert assembled.completion().content == "Hello world" and assembled.end == StreamEnd(
        "stop", Usage(input_tokens=3, output_tokens=2))
    assert mock.calls[-1].outcome == "ok" and mock.in_flight == 0

    mock.script("p", Behaviour(content="abc", chunks=["a", "b", "c"], fail_after_chunks=2))
    seen = []
    with pytest.raises(Exception) as caught:
        async for event in mock.stream(decode(data()), dep, None):
            seen.append(event)
    assert seen == [TextDelta("a"), TextDelta("b")] and caught.value.code == "connection_error"
    assert mock.calls[-1].outcome == "error" and mock.in_flight == 0
