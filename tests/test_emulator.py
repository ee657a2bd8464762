"""The provider emulator, over real HTTP: what the demo, tests and benchmarks rely on."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from router_agent.emulator import Emulator, create_app, serve, start_emulator

FAULTS = {"broken-model": 500, "limited": 429}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = await start_emulator(port=0, faults=FAULTS)
    try:
        yield emu
    finally:
        await emu.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat(content: str, model: str = "emulator-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post_chat(
    http: aiohttp.ClientSession, emu: Emulator, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with http.post(f"{emu.url}/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_reports_the_port_it_bound(emulator: Emulator) -> None:
    assert emulator.port > 0
    assert emulator.url == f"http://127.0.0.1:{emulator.port}/v1"


async def test_chat_completion_has_the_openai_shape(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await post_chat(
        http, emulator, chat("the quick brown fox", temperature=0.2, max_tokens=100)
    )
    assert status == 200
    assert headers["x-emulated"] == "true"
    assert body["object"] == "chat.completion"
    assert body["model"] == "emulator-small"
    assert body["system_fingerprint"] == "emulated"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "[emulated emulator-small] fox brown quick the",
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] == math.ceil(len("the quick brown fox") / 4) + 3
    assert usage["completion_tokens"] == math.ceil(len(choice["message"]["content"]) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_same_input_same_content_and_usage(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "emulator-large",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three four five six seven eight nine ten "
             "eleven twelve thirteen fourteen"},
            {"role": "assistant", "content": "ok"},
        ],
    }
    _, first, _ = await post_chat(http, emulator, body)
    _, second, _ = await post_chat(http, emulator, body)
    assert first["choices"] == second["choices"]
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    # The reply echoes the last *user* message: its first 12 words, reversed.
    assert first["choices"][0]["message"]["content"] == (
        "[emulated emulator-large] twelve eleven ten nine eight seven six five four three two one"
    )
    chars = len("be brief") + len(body["messages"][1]["content"]) + len("ok")
    assert first["usage"]["prompt_tokens"] == math.ceil(chars / 4) + 3 * 3

    _, other, _ = await post_chat(http, emulator, chat("something else entirely"))
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


async def test_max_tokens_truncates_with_finish_reason_length(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    _, full, _ = await post_chat(http, emulator, chat("a fairly long prompt with many words in it"))
    full_content = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] > 3

    _, cut, _ = await post_chat(
        http, emulator, chat("a fairly long prompt with many words in it", max_tokens=3)
    )
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    assert choice["message"]["content"] == full_content[:12]


async def test_max_completion_tokens_is_honoured_too(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await post_chat(http, emulator, chat("hello there", max_completion_tokens=2))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("model", "status", "kind"),
    [("broken-model", 500, "server_error"), ("limited", 429, "rate_limit_error")],
)
async def test_injected_faults(
    emulator: Emulator, http: aiohttp.ClientSession, model: str, status: int, kind: str
) -> None:
    got, body, headers = await post_chat(http, emulator, chat("hi", model=model))
    assert got == status
    assert body["error"]["type"] == kind
    assert model in body["error"]["message"]
    assert "code" in body["error"]
    assert ("retry-after" in headers) == (status == 429)
    if status == 429:
        assert headers["retry-after"] == "1"


async def test_a_fault_is_per_model(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    status, _, _ = await post_chat(http, emulator, chat("hi", model="not-broken"))
    assert status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "maybe"}',
    ],
    ids=["malformed", "no-model", "no-messages", "empty-messages", "max-tokens-0", "bad-tool-choice"],
)
async def test_bad_requests_get_400_with_openai_error(
    emulator: Emulator, http: aiohttp.ClientSession, raw: bytes
) -> None:
    async with http.post(
        f"{emulator.url}/chat/completions",
        data=raw,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


async def test_content_parts_are_read_as_text(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "alpha beta"},
            {"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}},
        ]}],
    }
    status, answer, _ = await post_chat(http, emulator, body)
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == "[emulated m] beta alpha"


async def test_models_list(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{emulator.url}/models") as resp:
        assert resp.status == 200
        assert resp.headers["x-emulated"] == "true"
        body = await resp.json()
    assert body["object"] == "list"
    ids = [card["id"] for card in body["data"]]
    assert "broken-model" in ids and "limited" in ids
    assert len(ids) == len(set(ids)) > len(FAULTS)
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["owned_by"] == "emulator"


async def test_health(emulator: Emulator, http: aiohttp.ClientSession) -> None:
    base = emulator.url.removesuffix("/v1")
    async with http.get(f"{base}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "emulated": True}


async def test_latency_override_header_still_answers(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post_chat(
        http, emulator, chat("hi"), headers={"x-emulator-latency-ms": "5"}
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "[emulated emulator-small] hi"


async def test_bad_latency_header_is_a_400(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post_chat(
        http, emulator, chat("hi"), headers={"x-emulator-latency-ms": "soon"}
    )
    assert status == 400
    assert "x-emulator-latency-ms" in body["error"]["message"]


async def test_configured_latency_still_answers(http: aiohttp.ClientSession) -> None:
    async with await start_emulator(latency_ms=1.0) as emu:
        status, _, _ = await post_chat(http, emu, chat("hi"))
    assert status == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": math.nan}, "latency_ms"),
        ({"faults": {"m": 200}}, "4xx or 5xx"),
    ],
)
def test_create_app_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_app(**kwargs)


async def test_close_stops_listening(http: aiohttp.ClientSession) -> None:
    emu = await start_emulator()
    await emu.close()
    await emu.close()  # idempotent: teardown paths may close twice
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{emu.url}/models"):
            pass


async def test_serve_announces_itself_and_closes_on_cancel(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    task = asyncio.create_task(serve("127.0.0.1", 0, 40.0))
    line = ""
    while not line:  # the line is printed once the port is bound
        assert not task.done(), task
        await asyncio.sleep(0.01)
        line = capsys.readouterr().out
    match = re.fullmatch(
        r"emulator ready: (http://127\.0\.0\.1:\d+/v1) "
        r"\(emulated OpenAI, Anthropic, Gemini and Ollama APIs, latency 40 ms, "
        r"admin http://127\.0\.0\.1:\d+/admin\)\n",
        line,
    )
    assert match, line
    url = match.group(1)
    async with http.get(f"{url}/models") as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{url}/models"):
            pass
