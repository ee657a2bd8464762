"""The OpenAI Chat Completions adapter over real HTTP: request bodies checked field by field
against the openai SDK's own request types, answers built with its response models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)

from router_agent.http import HttpClient
from router_agent.providers.base import (
    ProviderError,
    StreamAssembler,
    StreamEnd,
    TextDelta,
    ToolCallDelta,
)
from router_agent.providers.openai import OpenAIAdapter
from tests.upstream import Reply, Upstream, deployment, request, sse, wire_problems

KEY = "sk-test-0123456789abcdefghijklmnop"
IMAGE = "data:image/png;base64,iVBORw0KGgo="

FULL = {
    "params": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 200, "stop": ["END"], "seed": 7,
            "presence_penalty": 0.1, "frequency_penalty": 0.2},
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"},
                                                            "strict": True}},
}
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                 {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
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


def completion_body(**message: object) -> dict:
    return ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": message.pop("finish_reason", "stop"),
                     "message": {"role": "assistant", **message}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                  "prompt_tokens_details": {"cached_tokens": 100},
                  "completion_tokens_details": {"reasoning_tokens": 12}},
    }).model_dump(mode="json", exclude_none=True)


async def test_a_full_request_is_sent_in_the_sdk_shape_and_the_answer_read_back(http, upstream) -> None:
    upstream.script(Reply(body=completion_body(content=None, finish_reason="tool_calls", tool_calls=[
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}])))
    req = request(*CONVERSATION, **FULL)
    completion = await OpenAIAdapter(http).complete(req, deployment(upstream.url + "/v1", "openai", "gpt-4o"), KEY)

    [seen] = upstream.seen
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    body = seen.json()
    assert wire_problems(body, CompletionCreateParamsNonStreaming) == []
    assert body["model"] == "gpt-4o"
    assert body["messages"] == CONVERSATION[:2] + [
        {"role": "assistant", "tool_calls": CONVERSATION[2]["tool_calls"]}, CONVERSATION[3]]
    assert (body["tools"], body["tool_choice"], body["response_format"]) == (
        FULL["tools"], FULL["tool_choice"], FULL["response_format"])
    assert (body["stop"], body["seed"], body["max_tokens"], body["temperature"]) == (["END"], 7, 200, 0.3)
    assert "stream" not in body and "stream_options" not in body

    assert completion.finish_reason == "tool_calls" and completion.content == ""
    [call] = completion.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_9", "get_weather", '{"city":"Oslo"}')
    usage = completion.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens,
            usage.estimated) == (120, 30, 100, 12, False)


async def test_a_plain_request_sends_only_what_was_given(http, upstream) -> None:
    upstream.script(Reply(body=completion_body(content="hi")))
    completion = await OpenAIAdapter(http).complete(request(), deployment(upstream.url + "/v1", "openai"), None)
    body = upstream.seen[0].json()
    assert body == {"model": "model-x", "messages": [{"role": "user", "content": "hello"}]}
    assert "Authorization" not in upstream.seen[0].headers
    assert (completion.content, completion.finish_reason) == ("hi", "stop")


async def test_a_refusal_is_a_content_filter_finish(http, upstream) -> None:
    upstream.script(Reply(body=completion_body(content=None, refusal="I can't help with that.")))
    completion = await OpenAIAdapter(http).complete(request(), deployment(upstream.url + "/v1", "openai"), None)
    assert (completion.content, completion.finish_reason) == ("I can't help with that.", "content_filter")


def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> dict:
    return ChatCompletionChunk.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }).model_dump(mode="json", exclude_none=True)


async def test_a_stream_yields_text_and_tool_call_fragments_then_the_vendor_usage(http, upstream) -> None:
    frames = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}),
        chunk({}, finish="tool_calls"),
        chunk({}, choices=False, usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
        done=True,
    )
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    req = request(*CONVERSATION, **FULL)
    events = [e async for e in OpenAIAdapter(http).stream(req, deployment(upstream.url + "/v1", "openai"), KEY)]

    body = upstream.seen[0].json()
    assert wire_problems(body, CompletionCreateParamsStreaming) == []
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
    assert events[:5] == [
        TextDelta("Hel"), TextDelta("lo"), ToolCallDelta(0, "call_1", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city":'), ToolCallDelta(0, None, None, '"Rome"}'),
    ]
    end = events[-1]
    assert isinstance(end, StreamEnd) and len(events) == 6
    assert (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens, end.usage.estimated) == (
        "tool_calls", 9, 4, False)
    assembled = StreamAssembler()
    for event in events:
        assembled.add(event)
    completion = assembled.completion()
    assert completion.content == "Hello"
    assert completion.tool_calls[0].function.arguments == '{"city":"Rome"}'


async def test_a_stream_without_usage_is_estimated_never_free(http, upstream) -> None:
    frames = sse(chunk({"content": "x" * 40}), chunk({}, finish="stop"), done=True)
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    events = [e async for e in OpenAIAdapter(http).stream(request(), deployment(upstream.url + "/v1", "openai"), None)]
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage.estimated
    assert end.usage.input_tokens > 0 and end.usage.output_tokens == 10


async def test_a_stream_cut_before_its_end_raises_after_what_was_delivered(http, upstream) -> None:
    upstream.script(Reply(chunks=sse(chunk({"content": "partial"})), headers={"content-type": "text/event-stream"}))
    events = []
    with pytest.raises(ProviderError) as caught:
        async for event in OpenAIAdapter(http).stream(request(), deployment(upstream.url + "/v1", "openai"), None):
            events.append(event)
    assert events == [TextDelta("partial")]
    assert (caught.value.code, caught.value.retryable) == ("connection_error", True)


async def test_an_error_event_inside_a_stream_is_typed(http, upstream) -> None:
    frames = [*sse(chunk({"content": "a"})),
              b'data: {"error": {"message": "server overloaded", "type": "server_error", "code": null}}\n\n']
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    with pytest.raises(ProviderError) as caught:
        async for _ in OpenAIAdapter(http).stream(request(), deployment(upstream.url + "/v1", "openai"), None):
            pass
    assert caught.value.code == "server_error" and "server overloaded" in caught.value.message


async def test_probe_lists_models(http, upstream) -> None:
    upstream.script(Reply(body={"object": "list", "data": []}, headers={"x-emulated": "true"}))
    assert await OpenAIAdapter(http).probe(upstream.url + "/v1", KEY) == (True, "ok", True)
    assert upstream.seen[0].path == "/v1/models"
