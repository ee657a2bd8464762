"""Streaming through the bus, for real: a nats-server, the agent, HTTP to the emulator in
each vendor's wire format (OpenAI SSE, Anthropic SSE events, Gemini ``alt=sse``, Ollama
NDJSON), each through its own adapter. A streamed request arrives complete and in order;
tool calls come back in the canonical shape; a stream the emulator cuts mid-way ends with a
typed error that says what was delivered; a key never leaks into chunks or answers.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

import signals as sig
from tests.conftest import Client, Collector

pytestmark = pytest.mark.integration

WAIT = 10.0
NO_COALESCING = {"router": {"stream_coalesce_ms": 0}}
OLLAMA_MODEL = ("llama-local", "llama3:8b")
"""A model registered at run time on the emulator's Ollama API (name, model_id)."""

VENDORS = {
    # model name -> (provider, model id the emulator sees)
    "gpt-4-turbo": ("openai", "gpt-4-turbo-preview"),
    "claude-3-opus": ("anthropic", "claude-3-opus-20240229"),
    "gemini-1.5-pro": ("google", "gemini-1.5-pro"),
    OLLAMA_MODEL[0]: ("ollama-lab", OLLAMA_MODEL[1]),
}
PROMPT = "Explain in a few words how the streaming router relays every chunk in order to the agent"


async def stream(client: Client, request: sig.LlmRequest) -> tuple[list[sig.LlmChunk], sig.LlmResponse, Collector]:
    """Send ``request`` with a reply inbox; the chunks before the answer, the answer, and the
    collector (the caller may check later that nothing came after)."""
    inbox = client.nc.new_inbox()
    replies = await client.collect(inbox)
    await client.nc.publish(client.subjects.llm_request, sig.encode_event("llm_request", request), reply=inbox)
    answer = await replies.wait_for(lambda d: isinstance(d, sig.LlmResponse), timeout=WAIT)
    items = replies.data
    assert items[-1] is answer, items  # the answer comes after every chunk
    chunks = items[:-1]
    assert all(isinstance(c, sig.LlmChunk) and c.request_id == request.request_id for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    return chunks, answer, replies


async def register_ollama(client: Client, emulator) -> None:
    name, model_id = OLLAMA_MODEL
    answer = await client.control("provider_register", sig.ProviderRegister(
        provider="ollama-lab", api="ollama", base_url=emulator.base_url, type="local",
        models=[sig.ModelSpec(name=name, model_id=model_id, capabilities=["general_reasoning", "tool_calling"],
                              cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002))],
    ))
    assert answer.accepted, answer.errors


async def paced_agent(agents, client: Client, emulator, model: str, overrides: dict[str, Any] | None = None):
    """An agent (no coalescing unless ``overrides`` say otherwise) and the model's emulated
    stream paced, so that its pieces arrive one by one."""
    agent = await agents.start(overrides or NO_COALESCING)
    if model == OLLAMA_MODEL[0]:
        await register_ollama(client, emulator)
    emulator.set_profile(VENDORS[model][1], {"tokens_per_s": 1000})
    return agent


@pytest.mark.parametrize("model", list(VENDORS))
async def test_a_stream_from_each_vendor_format_arrives_complete_and_in_order(agents, client, emulator, model):
    await paced_agent(agents, client, emulator, model)

    chunks, answer, replies = await stream(client, client.new_request(model=model, content=PROMPT, stream=True))

    assert answer.status == "ok", answer.error
    assert (answer.provider, answer.model, answer.emulated) == (VENDORS[model][0], model, True)
    assert len(chunks) > 3  # paced: the pieces came one by one
    assert answer.message.content == "".join(c.content for c in chunks)
    assert answer.message.content.startswith("[emulated ")
    assert (answer.streamed.chunks, answer.streamed.chars) == (len(chunks), len(answer.message.content))
    assert answer.finish_reason == "stop" and answer.usage.output_tokens > 0 and answer.cost_usd > 0
    plain = await client.ask(client.new_request(model=model, content=PROMPT), timeout=WAIT)
    assert plain.message.content == answer.message.content  # the same answer, unstreamed
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (plain.usage.input_tokens,
                                                                     plain.usage.output_tokens)
    assert plain.streamed is None
    assert [type(d) for d in replies.data].count(sig.LlmResponse) == 1


@pytest.mark.parametrize("model", list(VENDORS))
async def test_tool_calls_in_a_stream_come_back_in_the_canonical_shape(agents, client, emulator, model):
    await paced_agent(agents, client, emulator, model)
    weather = sig.Tool(function=sig.FunctionDef(name="get_weather", parameters={
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    }))
    fields = {"model": model, "content": "call get_weather for Paris please", "tools": [weather]}

    chunks, answer, _ = await stream(client, client.new_request(stream=True, **fields))

    assert answer.status == "ok", answer.error
    assert answer.finish_reason == "tool_calls"
    [call] = answer.message.tool_calls
    assert call.id and call.function.name == "get_weather"
    fragments = [f for c in chunks for f in c.tool_calls]
    assert fragments and {f.index for f in fragments} == {0}
    assert "".join(f.arguments for f in fragments) == call.function.arguments
    assert any(f.name == "get_weather" for f in fragments)
    plain = await client.ask(client.new_request(**fields), timeout=WAIT)
    [unstreamed] = plain.message.tool_calls
    assert (unstreamed.function.name, unstreamed.function.arguments) == (call.function.name, call.function.arguments)


@pytest.mark.parametrize("model", ["gpt-4-turbo", "claude-3-opus", "gemini-1.5-pro"])
async def test_a_stream_cut_mid_way_ends_with_a_typed_error_stating_what_was_delivered(agents, client, emulator,
                                                                                      model):
    agent = await agents.start()  # the default coalescing window
    emulator.set_fault(VENDORS[model][1], {"cut_rate": 1.0})

    chunks, answer, _ = await stream(client, client.new_request(model=model, content=PROMPT, stream=True))

    assert chunks, "the emulator cuts after the first frame: something was delivered"
    delivered = "".join(c.content for c in chunks)
    assert answer.status == "error" and answer.error.code == "connection_error", answer.error
    assert f"{len(chunks)} chunk(s) with {len(delivered)} character(s) were delivered" in answer.error.message
    assert (answer.message.content, answer.finish_reason) == (delivered, "error")
    assert (answer.streamed.chunks, answer.streamed.chars) == (len(chunks), len(delivered))
    assert len(answer.attempts) == 1  # no failover once content was sent
    assert answer.usage.estimated and answer.cost_usd > 0  # never free
    assert agent.provider_stats(VENDORS[model][0]).failures == 1


async def test_a_stream_fails_over_when_the_first_provider_fails_before_any_chunk(agents, client, emulator):
    await agents.start()
    await register_ollama(client, emulator)
    emulator.set_fault("gpt-4-turbo-preview", 503)
    request = client.new_request(agent_id="frontend_agent", content=PROMPT, stream=True)
    chunks, answer, _ = await stream(client, request)
    assert answer.status == "ok", answer.error
    assert answer.attempts[0].outcome == "error" and answer.attempts[-1].outcome == "ok"
    assert answer.message.content == "".join(c.content for c in chunks)


async def test_a_key_never_leaks_into_chunks_answers_or_logs(agents, client, emulator, subjects, monkeypatch, caplog):
    secret = "sk-test-STREAM-SECRET-0123456789abcdef"
    monkeypatch.setenv("TEST_STREAM_KEY", secret)
    agent = await agents.start({"logging": {"level": "DEBUG"}, "security": {"runtime_key_envs": ["TEST_STREAM_KEY"]},
                                **NO_COALESCING})
    caplog.set_level(logging.DEBUG)
    everything = await client.collect(f"{subjects.prefix}>")
    answer = await client.control("provider_register", sig.ProviderRegister(
        provider="keyed", base_url=emulator.url, api_key_env="TEST_STREAM_KEY",
        models=[sig.ModelSpec(name="keyed-model", capabilities=["general_reasoning"])],
    ))
    assert answer.accepted, answer.errors
    emulator.set_profile("keyed-model", {"tokens_per_s": 1000})
    chunks, streamed_ok, replies = await stream(client, client.new_request(model="keyed-model", content=PROMPT,
                                                                           stream=True))
    assert streamed_ok.status == "ok" and chunks
    emulator.set_fault("keyed-model", {"cut_rate": 1.0})
    _, cut, cut_replies = await stream(client, client.new_request(model="keyed-model", content=PROMPT, stream=True))
    assert cut.status == "error"
    await everything.wait_for(lambda d: isinstance(d, sig.LlmResponse) and d.request_id == cut.request_id)
    published = "\n".join(str(item) for item in [*everything.data, *replies.data, *cut_replies.data])
    assert "keyed" in published and secret not in published
    assert secret not in caplog.text
    assert secret not in str(agent.snapshot())
