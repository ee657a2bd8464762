"""The Anthropic Messages adapter over real HTTP: request bodies checked field by field
against the anthropic SDK's request types, answers and stream events built with its models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)

from router_agent.http import HttpClient
from router_agent.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicAdapter
from router_agent.providers.base import (
    ProviderError,
    StreamAssembler,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
)
from router_agent.providers.translate import JSON_OBJECT_INSTRUCTION
from tests.upstream import Reply, Upstream, deployment, request, sse, wire_problems

KEY = "sk-ant-api03-test0123456789abcdefghijkl"
PNG = "iVBORw0KGgo="

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "compare"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
    {"role": "user", "content": "and now?"},
]


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream.start([Reply()])
    yield server
    await server.close()


def message(content: list[dict], stop_reason: str = "end_turn") -> dict:
    return Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-opus-20240229",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 20, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 30},
    }).model_dump(mode="json", exclude_none=True)


def dep(upstream: Upstream):
    return deployment(upstream.url + "/v1", "anthropic", "claude-3-opus-20240229")


async def test_a_full_request_is_translated_and_the_answer_read_back(http, upstream) -> None:
    upstream.script(Reply(body=message([
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
    ], stop_reason="tool_use")))
    req = request(*CONVERSATION, tools=TOOLS, tool_choice="required",
                  params={"temperature": 1.5, "stop": ["END"], "seed": 3, "top_p": 0.5})
    completion = await AnthropicAdapter(http).complete(req, dep(upstream), KEY)

    [seen] = upstream.seen
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen.headers
    body = seen.json()
    # SDK 2.x dropped the sampling parameters that API version 2023-06-01 still takes.
    sampling = {k: body.pop(k) for k in ("temperature", "top_p")}
    assert wire_problems(body, MessageCreateParamsNonStreaming) == []
    assert body["system"] == "be brief"
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert (sampling, body["stop_sequences"]) == ({"temperature": 1.0, "top_p": 0.5}, ["END"])
    assert "seed" not in body
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    user, assistant, results = body["messages"]
    assert user == {"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]}
    assert results == {"role": "user", "content": [  # the tool result and the next user turn, merged
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
        {"type": "text", "text": "and now?"},
    ]}

    assert (completion.content, completion.finish_reason) == ("Let me check.", "tool_calls")
    [call] = completion.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_2", "get_weather", {"city": "Oslo"})
    usage = completion.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
            usage.cache_creation_input_tokens) == (180, 20, 100, 30)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("refusal", "content_filter"),
])
async def test_stop_reasons_are_mapped(http, upstream, stop_reason: str, finish: str) -> None:
    upstream.script(Reply(body=message([{"type": "text", "text": "x"}], stop_reason=stop_reason)))
    completion = await AnthropicAdapter(http).complete(request(), dep(upstream), None)
    assert completion.finish_reason == finish


async def test_a_json_schema_is_asked_for_through_a_forced_tool_and_comes_back_as_content(http, upstream) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    upstream.script(Reply(body=message([{"type": "tool_use", "id": "toolu_3", "name": "result",
                                         "input": {"answer": 42}}], stop_reason="tool_use")))
    req = request(response_format={"type": "json_schema", "json_schema": {"name": "result", "schema": schema}})
    completion = await AnthropicAdapter(http).complete(req, dep(upstream), None)
    body = upstream.seen[0].json()
    assert wire_problems(body, MessageCreateParamsNonStreaming) == []
    assert body["tool_choice"] == {"type": "tool", "name": "result"}
    assert body["tools"][0]["input_schema"] == schema
    assert (json.loads(completion.content), completion.finish_reason, completion.tool_calls) == (
        {"answer": 42}, "stop", [])


async def test_json_object_adds_an_instruction_to_the_system_prompt(http, upstream) -> None:
    upstream.script(Reply(body=message([{"type": "text", "text": "{}"}])))
    await AnthropicAdapter(http).complete(request(response_format={"type": "json_object"}), dep(upstream), None)
    assert upstream.seen[0].json()["system"] == JSON_OBJECT_INSTRUCTION


async def test_a_conversation_of_only_a_system_prompt_is_refused_before_sending(http, upstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await AnthropicAdapter(http).complete(request({"role": "system", "content": "x"}), dep(upstream), None)
    assert (caught.value.code, caught.value.retryable, caught.value.fallback) == ("bad_request", False, True)
    assert upstream.seen == []


def stream_frames() -> list[bytes]:
    events = [
        RawMessageStartEvent.model_validate({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}}}),
        RawContentBlockStartEvent.model_validate({"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}),
        RawContentBlockDeltaEvent.model_validate({"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": "Hi"}}),
        RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 0}),
        RawContentBlockStartEvent.model_validate({"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
        RawContentBlockDeltaEvent.model_validate({"type": "content_block_delta", "index": 1,
                                                  "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
        RawContentBlockDeltaEvent.model_validate({"type": "content_block_delta", "index": 1,
                                                  "delta": {"type": "input_json_delta", "partial_json": 'ty":"X"}'}}),
        RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 1}),
        RawMessageDeltaEvent.model_validate({"type": "message_delta",
                                             "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                             "usage": {"output_tokens": 17}}),
        RawMessageStopEvent.model_validate({"type": "message_stop"}),
    ]
    data = [e.model_dump(mode="json", exclude_none=True) for e in events]
    frames = sse(*data, event_names=[d["type"] for d in data])
    return frames[:2] + [b"event: ping\ndata: {\"type\": \"ping\"}\n\n"] + frames[2:]


async def test_a_stream_is_relayed_as_text_and_tool_call_fragments(http, upstream) -> None:
    upstream.script(Reply(chunks=stream_frames(), headers={"content-type": "text/event-stream"}))
    req = request(*CONVERSATION, tools=TOOLS)
    events = [e async for e in AnthropicAdapter(http).stream(req, dep(upstream), KEY)]
    body = upstream.seen[0].json()
    assert wire_problems(body, MessageCreateParamsStreaming) == [] and body["stream"] is True
    assert events[:4] == [TextDelta("Hi"), ToolCallDelta(0, "toolu_9", "get_weather"),
                          ToolCallDelta(0, arguments='{"ci'), ToolCallDelta(0, arguments='ty":"X"}')]
    end = events[-1]
    assert isinstance(end, StreamEnd) and len(events) == 5
    assert (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens, end.usage.cached_input_tokens,
            end.usage.estimated) == ("tool_calls", 30, 17, 5, False)
    assembled = StreamAssembler()
    for event in events:
        assembled.add(event)
    assert assembled.completion().tool_calls[0].function.arguments == '{"city":"X"}'


async def test_an_overloaded_error_event_mid_stream_is_typed(http, upstream) -> None:
    frames = stream_frames()[:4] + [
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n']
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    seen = []
    with pytest.raises(ProviderError) as caught:
        async for event in AnthropicAdapter(http).stream(request(), dep(upstream), KEY):
            seen.append(event)
    assert seen == [TextDelta("Hi")]
    assert (caught.value.code, caught.value.retryable, caught.value.fallback) == ("overloaded", True, True)


async def test_probe_sends_the_version_and_key_headers(http, upstream) -> None:
    upstream.script(Reply(body={"data": []}))
    assert (await AnthropicAdapter(http).probe(upstream.url + "/v1", KEY))[0] is True
    seen = upstream.seen[0]
    assert (seen.path, seen.headers["x-api-key"], seen.headers["anthropic-version"]) == (
        "/v1/models", KEY, "2023-06-01")
