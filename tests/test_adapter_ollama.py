"""The Ollama native adapter over real HTTP: ``/api/chat`` in Ollama's documented shapes,
NDJSON streaming, ``/api/tags`` probe."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from router_agent.http import HttpClient
from router_agent.providers.base import ProviderError, StreamEnd, TextDelta, ToolCallDelta
from router_agent.providers.ollama import OllamaAdapter
from tests.upstream import Reply, Upstream, deployment, request

PNG = "iVBORw0KGgo="
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


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


def final(content: str = "", **extra: object) -> dict:
    """Ollama's documented non-streamed answer (and last stream line)."""
    return {"model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z",
            "message": {"role": "assistant", "content": content}, "done": True, "done_reason": "stop",
            "total_duration": 5191566416, "load_duration": 2154458, "prompt_eval_count": 26,
            "prompt_eval_duration": 383809000, "eval_count": 298, "eval_duration": 4799921000, **extra}


async def test_a_request_is_translated_and_the_answer_read_back(http, upstream) -> None:
    answer = final()
    answer["message"]["tool_calls"] = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    upstream.script(Reply(body=answer))
    req = request(
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21C"},
        tools=TOOLS, params={"max_tokens": 50, "temperature": 0.1, "seed": 4},
        response_format={"type": "json_object"},
    )
    completion = await OllamaAdapter(http).complete(req, deployment(upstream.url, "ollama", "llama3.2"), None)
    body = upstream.seen[0].json()
    assert upstream.seen[0].path == "/api/chat"
    assert body == {
        "model": "llama3.2", "stream": False, "format": "json", "tools": TOOLS,
        "options": {"temperature": 0.1, "num_predict": 50, "seed": 4},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "see", "images": [PNG]},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
            {"role": "tool", "content": "21C", "tool_name": "get_weather"},
        ],
    }
    assert completion.finish_reason == "tool_calls"
    assert json.loads(completion.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (completion.input_tokens, completion.output_tokens, completion.usage_estimated) == (26, 298, False)


async def test_an_image_url_is_refused_before_sending(http, upstream) -> None:
    req = request({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]})
    with pytest.raises(ProviderError) as caught:
        await OllamaAdapter(http).complete(req, deployment(upstream.url, "ollama"), None)
    assert (caught.value.code, caught.value.fallback) == ("bad_request", True) and upstream.seen == []


async def test_a_stream_is_read_line_by_line(http, upstream) -> None:
    lines = [
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "The"}, "done": False},
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": " sky"}, "done": False},
        {"model": "llama3.2", "created_at": "t", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"a": 1}}}]}, "done": False},
        final(done_reason="length"),
    ]
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    chunks = [raw[:17], raw[17:90], raw[90:]]  # lines split across reads
    upstream.script(Reply(chunks=chunks, headers={"content-type": "application/x-ndjson"}))
    events = [e async for e in OllamaAdapter(http).stream(request(), deployment(upstream.url, "ollama"), None)]
    assert upstream.seen[0].json()["stream"] is True
    assert events[0] == TextDelta("The") and events[1] == TextDelta(" sky")
    call = events[2]
    assert isinstance(call, ToolCallDelta) and (call.index, call.name, call.arguments) == (0, "f", '{"a":1}')
    end = events[3]
    assert isinstance(end, StreamEnd) and (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens) == (
        "length", 26, 298)


async def test_an_error_line_in_a_stream_is_typed(http, upstream) -> None:
    upstream.script(Reply(chunks=[b'{"error": "model \'x\' not found"}\n'],
                          headers={"content-type": "application/x-ndjson"}))
    with pytest.raises(ProviderError) as caught:
        async for _ in OllamaAdapter(http).stream(request(), deployment(upstream.url, "ollama"), None):
            pass
    assert "not found" in caught.value.message


async def test_probe_uses_api_tags(http, upstream) -> None:
    upstream.script(Reply(body={"models": []}))
    assert await OllamaAdapter(http).probe(upstream.url, None) == (True, "ok", False)
    assert upstream.seen[0].path == "/api/tags"
