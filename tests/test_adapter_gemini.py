"""The Gemini adapter over real HTTP: request parts validated with google-genai's own models
(which forbid unknown fields), answers built with its response model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.genai import types

from router_agent.http import HttpClient
from router_agent.providers.base import ProviderError, StreamEnd, TextDelta, ToolCallDelta
from router_agent.providers.gemini import GeminiAdapter
from tests.upstream import Reply, Upstream, deployment, request, sse

KEY = "AIzaSyTest0123456789abcdefghijklmnopqr"
PNG = "iVBORw0KGgo="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "additionalProperties": False}}}]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]
REQUEST_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig"}


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


def validate_request(body: dict[str, Any]) -> None:
    """Each part of the REST body through google-genai's models (extra fields forbidden)."""
    assert set(body) <= REQUEST_FIELDS
    for content in body["contents"]:
        types.Content.model_validate(content)
    if "systemInstruction" in body:
        types.Content.model_validate(body["systemInstruction"])
    if "generationConfig" in body:
        types.GenerationConfig.model_validate(body["generationConfig"])
    for tool in body.get("tools", ()):
        types.Tool.model_validate(tool)
    if "toolConfig" in body:
        types.ToolConfig.model_validate(body["toolConfig"])


def response(parts: list[types.Part], finish: str = "STOP", **usage: int) -> dict[str, Any]:
    return types.GenerateContentResponse(
        candidates=[types.Candidate(content=types.Content(role="model", parts=parts), finish_reason=finish)],
        usage_metadata=types.GenerateContentResponseUsageMetadata(**usage) if usage else None,
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def dep(upstream: Upstream):
    return deployment(upstream.url + "/v1beta", "gemini", "gemini-1.5-pro")


async def test_a_full_request_is_translated_and_the_answer_read_back(http, upstream) -> None:
    upstream.script(Reply(body=response(
        [types.Part(text="thinking...", thought=True), types.Part(text="Sunny. "),
         types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Oslo"}))],
        prompt_token_count=40, candidates_token_count=10, cached_content_token_count=8, thoughts_token_count=5,
    )))
    req = request(*CONVERSATION, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                  params={"temperature": 0.2, "max_tokens": 64, "stop": ["END"], "seed": 1},
                  response_format={"type": "json_object"})
    completion = await GeminiAdapter(http).complete(req, dep(upstream), KEY)

    [seen] = upstream.seen
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1beta/models/gemini-1.5-pro:generateContent", {})
    assert seen.headers["x-goog-api-key"] == KEY and KEY not in seen.path
    body = seen.json()
    validate_request(body)
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "what is it?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]},
    ]
    assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 64, "stopSequences": ["END"],
                                        "seed": 1, "responseMimeType": "application/json"}
    assert body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather for a city",
        "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}

    assert (completion.content, completion.finish_reason) == ("Sunny. ", "tool_calls")
    [call] = completion.tool_calls
    assert call.id.startswith("call_") and (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Oslo"})
    usage = completion.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.reasoning_tokens) == (
        40, 15, 8, 5)


async def test_a_json_schema_becomes_a_response_json_schema(http, upstream) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    upstream.script(Reply(body=response([types.Part(text='{"n": 1}')])))
    req = request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    await GeminiAdapter(http).complete(req, dep(upstream), None)
    body = upstream.seen[0].json()
    validate_request(body)
    assert body["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("OTHER", "stop"),
])
async def test_finish_reasons_are_mapped(http, upstream, reason: str, finish: str) -> None:
    upstream.script(Reply(body=response([types.Part(text="x")], finish=reason)))
    assert (await GeminiAdapter(http).complete(request(), dep(upstream), None)).finish_reason == finish


async def test_a_blocked_prompt_is_content_filtered(http, upstream) -> None:
    upstream.script(Reply(body=types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(block_reason="SAFETY"),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)))
    with pytest.raises(ProviderError) as caught:
        await GeminiAdapter(http).complete(request(), dep(upstream), None)
    assert (caught.value.code, caught.value.retryable, caught.value.fallback) == ("content_filtered", False, False)


async def test_a_tool_result_for_an_unknown_call_is_refused_before_sending(http, upstream) -> None:
    with pytest.raises(ProviderError) as caught:
        await GeminiAdapter(http).complete(request({"role": "tool", "tool_call_id": "nope", "content": "1"}),
                                           dep(upstream), None)
    assert caught.value.code == "bad_request" and upstream.seen == []


async def test_a_stream_over_sse_ends_with_the_last_usage(http, upstream) -> None:
    frames = sse(
        response([types.Part(text="Hel")], finish=None, prompt_token_count=7),
        response([types.Part(text="lo")], finish=None, prompt_token_count=7),
        response([types.Part(function_call=types.FunctionCall(id="fc_1", name="f", args={"a": 1}))],
                 prompt_token_count=7, candidates_token_count=6),
    )
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    events = [e async for e in GeminiAdapter(http).stream(request(*CONVERSATION, tools=TOOLS), dep(upstream), KEY)]
    seen = upstream.seen[0]
    assert (seen.path, seen.query) == ("/v1beta/models/gemini-1.5-pro:streamGenerateContent", {"alt": "sse"})
    assert KEY not in str(seen.query) and seen.headers["x-goog-api-key"] == KEY
    validate_request(seen.json())
    assert events[:3] == [TextDelta("Hel"), TextDelta("lo"), ToolCallDelta(0, "fc_1", "f", '{"a":1}')]
    end = events[3]
    assert isinstance(end, StreamEnd) and len(events) == 4
    assert (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens, end.usage.estimated) == (
        "tool_calls", 7, 6, False)


async def test_a_stream_that_stops_without_a_finish_reason_raises(http, upstream) -> None:
    frames = sse(response([types.Part(text="Hel")], finish=None))
    upstream.script(Reply(chunks=frames, headers={"content-type": "text/event-stream"}))
    with pytest.raises(ProviderError) as caught:
        async for _ in GeminiAdapter(http).stream(request(), dep(upstream), None):
            pass
    assert caught.value.code == "connection_error"


async def test_probe_sends_the_key_in_a_header(http, upstream) -> None:
    upstream.script(Reply(body={"models": []}))
    assert (await GeminiAdapter(http).probe(upstream.url + "/v1beta", KEY))[0] is True
    assert (upstream.seen[0].path, upstream.seen[0].query) == ("/v1beta/models", {})
    assert upstream.seen[0].headers["x-goog-api-key"] == KEY
