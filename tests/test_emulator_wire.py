"""The emulator's wire formats byte by byte, where no SDK is at hand (Ollama) or an SDK would hide it.

Anthropic's SSE event order, Gemini's JSON-array stream and errors, Ollama's NDJSON and
``/api/tags`` against the documented shapes, the ``/v1`` aliases, ``x-emulated`` on
everything, and the pure answer rules (tool trigger, schema examples).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_agent.emulator import Emulator, start_emulator
from router_agent.emulator.content import (
    Prompt,
    Tool,
    answer,
    example_from_schema,
    fragments,
    pick_tool,
    pieces,
)

PROMPT = "one two three four five"
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["query"]}}}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = await start_emulator(faults={"limited": 429, "overloaded": 529, "down": 503})
    try:
        yield emulator
    finally:
        await emulator.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, bytes, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.headers["x-emulated"] == "true"
        return resp.status, await resp.read(), resp.headers


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, data if data == "[DONE]" else json.loads(data or "null")))
    return events


# --- Anthropic ------------------------------------------------------------------------


async def test_anthropic_stream_event_sequence(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "c", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    status, raw, headers = await post(http, f"{emu.base_url}/v1/messages", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert all(data["type"] == name for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "[emulated c] five four three two one"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] > 0
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0


async def test_anthropic_stop_sequence_and_max_tokens(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "c", "max_tokens": 100, "stop_sequences": ["three"],
            "messages": [{"role": "user", "content": PROMPT}]}
    _, raw, _ = await post(http, f"{emu.base_url}/v1/messages", body)
    answer = json.loads(raw)
    assert answer["stop_reason"] == "stop_sequence" and answer["stop_sequence"] == "three"
    assert answer["content"][0]["text"] == "[emulated c] five four "
    body = {"model": "c", "max_tokens": 2, "messages": [{"role": "user", "content": PROMPT}]}
    _, raw, _ = await post(http, f"{emu.base_url}/v1/messages", body)
    assert json.loads(raw)["stop_reason"] == "max_tokens"


async def test_anthropic_missing_max_tokens_is_invalid_request(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, raw, _ = await post(http, f"{emu.base_url}/v1/messages", {"model": "c", "messages": []})
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


# --- Gemini ---------------------------------------------------------------------------


async def test_gemini_stream_without_sse_is_a_json_array(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    status, raw, _ = await post(http, f"{emu.base_url}/v1beta/models/g:streamGenerateContent", body)
    assert status == 200
    chunks = json.loads(raw)
    text = "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == "[emulated g] five four three two one"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_gemini_429_has_retry_info_and_key_in_query_is_accepted(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, raw, headers = await post(http, f"{emu.base_url}/v1beta/models/limited:generateContent?key=k", body)
    assert status == 429 and headers["retry-after"] == "1"
    error = json.loads(raw)["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and error["code"] == 429
    assert error["details"][0]["retryDelay"] == "1s"


async def test_gemini_count_tokens_and_model_list(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"contents": [{"parts": [{"text": "abcdefgh"}]}]}
    status, raw, _ = await post(http, f"{emu.base_url}/v1beta/models/g:countTokens", body)
    assert status == 200 and json.loads(raw) == {"totalTokens": 2 + 3}
    async with http.get(f"{emu.base_url}/v1beta/models") as resp:
        names = [m["name"] for m in (await resp.json())["models"]]
    assert "models/emulator-small" in names and "models/limited" in names


# --- Ollama ---------------------------------------------------------------------------


async def test_ollama_streams_ndjson_by_default(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": PROMPT}]}
    async with http.post(f"{emu.base_url}/api/chat", json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in resp.content]
    assert all(not line["done"] for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == "[emulated llama3] five four three two one"
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["prompt_eval_count"] > 0 and last["eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int)
    assert last["created_at"].endswith("Z")


async def test_ollama_non_stream_tool_call_and_json(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3", "stream": False, "tools": [TOOL],
            "messages": [{"role": "user", "content": "use lookup"}]}
    _, raw, _ = await post(http, f"{emu.base_url}/api/chat", body)
    answer = json.loads(raw)
    assert answer["done"] is True
    assert answer["message"]["tool_calls"] == [
        {"function": {"name": "lookup", "arguments": {"query": "emulated query"}}}
    ]
    body = {"model": "llama3", "stream": False, "format": "json", "options": {"num_predict": 500},
            "messages": [{"role": "user", "content": PROMPT}]}
    _, raw, _ = await post(http, f"{emu.base_url}/api/chat", body)
    content = json.loads(json.loads(raw)["message"]["content"])
    assert content == {"emulated": True, "model": "llama3", "reply": "five four three two one"}


async def test_ollama_errors_and_tags(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "down", "messages": [{"role": "user", "content": "hi"}]}
    status, raw, _ = await post(http, f"{emu.base_url}/api/chat", body)
    assert status == 503 and isinstance(json.loads(raw)["error"], str)
    async with http.get(f"{emu.base_url}/api/tags") as resp:
        models = (await resp.json())["models"]
    assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(models[0])


# --- shared ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1beta/models/g:generateContent", "/api/chat"])
async def test_every_vendor_path_also_answers_under_v1(emu: Emulator, http: aiohttp.ClientSession, path: str) -> None:
    body = {"model": "m", "max_tokens": 10, "stream": False, "messages": [{"role": "user", "content": "x"}],
            "contents": [{"parts": [{"text": "x"}]}]}
    status, _, _ = await post(http, f"{emu.url}{path}", body)
    assert status == 200


async def test_unknown_paths_are_404_and_marked_emulated(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{emu.base_url}/v2/nothing") as resp:
        assert resp.status == 404 and resp.headers["x-emulated"] == "true"
    status, _, _ = await post(http, f"{emu.base_url}/v1beta/models/g:embedContent", {})
    assert status == 404


async def test_openai_stream_shape(emu: Emulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    _, raw, _ = await post(http, f"{emu.url}/chat/completions", body)
    events = sse_events(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [d for _, d in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks)  # no include_usage: no usage chunk
    assert len({c["id"] for c in chunks}) == 1


# --- answer rules (pure) ----------------------------------------------------------------


def prompt(last_user: str, *names: str, choice: str = "auto", tool_result: bool = False) -> Prompt:
    return Prompt("m", [last_user], last_user, tool_result, tools=[Tool(n) for n in names], tool_choice=choice)


@pytest.mark.parametrize(
    ("p", "called"),
    [
        (prompt("call get_weather now", "search", "get_weather"), "get_weather"),
        (prompt("GET_WEATHER please", "get_weather"), "get_weather"),
        (prompt("get_weather_v2 is not it", "get_weather"), None),
        (prompt("nothing named", "get_weather"), None),
        (prompt("nothing named", "a", "b", choice="required"), "a"),
        (prompt("use b", "a", "b", choice="required"), "b"),
        (prompt("get_weather", "get_weather", choice="none"), None),
        (prompt("get_weather", "get_weather", tool_result=True), None),
        (prompt("nothing", "get_weather", choice="required", tool_result=True), "get_weather"),
    ],
)
def test_the_tool_trigger_rule(p: Prompt, called: str | None) -> None:
    tool = pick_tool(p)
    assert (tool.name if tool else None) == called


def test_schema_examples() -> None:
    schema = {
        "type": "OBJECT",  # Gemini spells types in capitals
        "properties": {
            "when": {"type": "string", "format": "date"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 2},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "kind": {"const": "fixed"},
            "nested": {"type": ["object", "null"], "properties": {"n": {"type": "integer", "minimum": 7}}},
            "skipped": {"type": "string"},
        },
        "required": ["when", "tags", "maybe", "kind", "nested"],
        "$defs": {"tag": {"type": "string", "enum": ["red", "blue"]}},
    }
    assert example_from_schema(schema) == {
        "when": "2024-01-01", "tags": ["red", "red"], "maybe": 1.5, "kind": "fixed", "nested": {"n": 7},
    }
    recursive = {"$ref": "#"}
    assert example_from_schema(recursive) is None  # bounded, not a RecursionError


@given(st.text(max_size=300))
def test_stream_pieces_reassemble_to_the_reply(text: str) -> None:
    assert "".join(pieces(text)) == text
    assert "".join(fragments(text)) == text


@given(st.text(max_size=200), st.integers(min_value=1, max_value=40) | st.none())
def test_usage_follows_the_content(text: str, cap: int | None) -> None:
    result = answer(Prompt("m", [text], text, max_tokens=cap))
    assert result.completion_tokens == (len(result.text) + 3) // 4 or result.finish == "length"
    if cap is not None:
        assert result.completion_tokens <= cap and len(result.text) <= 4 * cap
