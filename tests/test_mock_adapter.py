"""The scriptable mock adapter: lookup order, scripted outcomes, hangs, call records."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from dataclasses import dataclass

import pytest

from router_agent.providers.base import Adapter, Completion, ProviderError
from router_agent.providers.mock import Behaviour, MockAdapter
from signals import ChatMessage, LlmRequest

WAIT_S = 2.0


@dataclass(frozen=True)
class Dep:
    """The deployment attributes an adapter reads."""

    provider: str
    model: str
    model_id: str
    base_url: str = "http://mock.invalid/v1"


OPENAI = Dep("openai", "gpt-small", "gpt-4o-mini")
LOCAL = Dep("local", "llama", "llama3.2:1b")


def request(content: str = "hello there", request_id: str = "req-1", messages: list[ChatMessage] | None = None) -> LlmRequest:
    return LlmRequest(
        request_id=request_id,
        agent_id="tester",
        messages=messages or [ChatMessage(role="user", content=content)],
    )


async def test_the_default_answer_is_deterministic_and_recorded() -> None:
    adapter = MockAdapter()
    completion = await adapter.complete(request("what is the capital of France?"), OPENAI, "sk-test")
    assert completion == Completion(
        **{
            "content": "[mock gpt-4o-mini] what is the capital of France?",
            "finish_reason": "stop",
            "input_tokens": 10,
            "output_tokens": 5,
            **({"model": ""} if "model" in Completion.__dataclass_fields__ else {}),
        }
    )
    [call] = adapter.calls
    assert (call.provider, call.model, call.model_id, call.request_id, call.api_key, call.outcome) == (
        "openai", "gpt-small", "gpt-4o-mini", "req-1", "sk-test", "ok",
    )
    assert call.finished_at is not None and call.finished_at >= call.started_at
    assert call.request is not None and call.request.request_id == "req-1"
    assert adapter.in_flight == 0


async def test_the_default_content_quotes_the_last_user_message_cut_to_40_chars() -> None:
    adapter = MockAdapter()
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content="first answer"),
        ChatMessage(role="user", content="second question, which is rather longer than forty characters"),
    ]
    completion = await adapter.complete(request(messages=messages), LOCAL, None)
    assert completion.content == "[mock llama3.2:1b] " + "second question, which is rather longer than forty characters"[:40]
    assert completion.content.endswith("rather longer ")


async def test_a_default_behaviour_applies_to_unscripted_deployments() -> None:
    adapter = MockAdapter(default=Behaviour(content="canned", input_tokens=3, output_tokens=4, finish_reason="length"))
    completion = await adapter.complete(request(), OPENAI, None)
    assert (completion.content, completion.input_tokens, completion.output_tokens, completion.finish_reason) == (
        "canned", 3, 4, "length",
    )


async def test_lookup_order_is_provider_and_model_then_model_id_then_provider_then_default() -> None:
    adapter = MockAdapter(default=Behaviour(content="default"))
    adapter.script("openai", content="by provider")
    adapter.script("gpt-4o-mini", content="by model id")
    adapter.script(("openai", "gpt-small"), content="by key")
    same_id_other_name = Dep("openai", "alias", "gpt-4o-mini")
    other_model = Dep("openai", "big", "gpt-4o")
    assert (await adapter.complete(request(), OPENAI, None)).content == "by key"
    assert (await adapter.complete(request(), same_id_other_name, None)).content == "by model id"
    assert (await adapter.complete(request(), other_model, None)).content == "by provider"
    assert (await adapter.complete(request(), LOCAL, None)).content == "default"

    adapter.unscript(("openai", "gpt-small"))
    assert (await adapter.complete(request(), OPENAI, None)).content == "by model id"


async def test_scripting_again_replaces_and_fields_override_a_given_behaviour() -> None:
    adapter = MockAdapter()
    adapter.script("gpt-4o-mini", content="one")
    adapter.script("gpt-4o-mini", Behaviour(content="two", output_tokens=50), output_tokens=7)
    completion = await adapter.complete(request(), OPENAI, None)
    assert (completion.content, completion.output_tokens) == ("two", 7)


async def test_a_list_script_plays_in_order_and_its_last_behaviour_repeats() -> None:
    adapter = MockAdapter()
    down = ProviderError("provider_error", "upstream error 503", True, 503)
    adapter.script("gpt-4o-mini", [Behaviour(error=down), Behaviour(error=down), Behaviour(content="back")])
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await adapter.complete(request(), OPENAI, None)).content)
        except ProviderError as exc:
            outcomes.append(exc.status)
    assert outcomes == [503, 503, "back", "back"]
    assert [c.outcome for c in adapter.calls] == ["error", "error", "ok", "ok"]
    with pytest.raises(ValueError):
        adapter.script("x", [])


async def test_a_scripted_error_is_raised_fresh_each_time_and_recorded() -> None:
    adapter = MockAdapter()
    limited = ProviderError("rate_limited", "upstream rate limited (429)", True, 429)
    adapter.script("openai", error=limited)
    raised = []
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await adapter.complete(request(), OPENAI, None)
        raised.append(info.value)
    first, second = raised
    assert (first.code, first.message, first.retryable, first.status) == ("rate_limited", limited.message, True, 429)
    assert first is not second and first is not limited
    assert [(c.outcome, c.error) for c in adapter.calls] == [("error", first), ("error", second)]
    assert adapter.in_flight == 0


async def test_latency_delays_the_answer_while_the_call_is_in_flight() -> None:
    adapter = MockAdapter()
    adapter.script("gpt-4o-mini", latency_s=0.02)
    task = asyncio.create_task(adapter.complete(request(), OPENAI, None))
    async with asyncio.timeout(WAIT_S):
        await adapter.wait_for_calls(1)
    assert adapter.in_flight == 1 and adapter.calls[0].outcome == "pending"
    async with asyncio.timeout(WAIT_S):
        await task
    call = adapter.calls[0]
    assert call.outcome == "ok" and call.finished_at - call.started_at >= 0.02
    assert adapter.in_flight == 0


async def test_latency_then_error() -> None:
    adapter = MockAdapter()
    adapter.script("openai", latency_s=0.01, error=ProviderError("timeout", "slow", True))
    with pytest.raises(ProviderError, match="slow"):
        await adapter.complete(request(), OPENAI, None)
    assert adapter.calls[0].finished_at - adapter.calls[0].started_at >= 0.01


async def test_calls_run_concurrently() -> None:
    adapter = MockAdapter(default=Behaviour(hang=True))
    tasks = [asyncio.create_task(adapter.complete(request(request_id=f"r{i}"), OPENAI, None)) for i in range(10)]
    async with asyncio.timeout(WAIT_S):
        await adapter.wait_for_calls(10)
    assert adapter.in_flight == 10
    adapter.release_hangs()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ProviderError) for r in results)
    assert sorted(c.request_id for c in adapter.calls) == sorted(f"r{i}" for i in range(10))


async def test_hanging_calls_fail_as_a_dropped_connection_when_released() -> None:
    adapter = MockAdapter()
    adapter.script("llama3.2:1b", hang=True)
    first = asyncio.create_task(adapter.complete(request(request_id="a"), LOCAL, None))
    second = asyncio.create_task(adapter.complete(request(request_id="b"), LOCAL, None))
    async with asyncio.timeout(WAIT_S):
        await adapter.wait_for_calls(2)
    assert adapter.in_flight == 2 and not first.done() and not second.done()

    adapter.release_hangs()
    for task in (first, second):
        with pytest.raises(ProviderError) as info:
            async with asyncio.timeout(WAIT_S):
                await task
        assert (info.value.code, info.value.retryable) == ("connection_error", True)
        assert "cannot reach provider" in info.value.message
    assert adapter.in_flight == 0

    # A release is not sticky: a call that hangs afterwards waits for the next one.
    third = asyncio.create_task(adapter.complete(request(request_id="c"), LOCAL, None))
    async with asyncio.timeout(WAIT_S):
        await adapter.wait_for_calls(3)
    assert not third.done()
    adapter.release_hangs()
    with pytest.raises(ProviderError):
        async with asyncio.timeout(WAIT_S):
            await third


async def test_cancelling_a_hanging_call_propagates_cleanly() -> None:
    adapter = MockAdapter()
    adapter.script("openai", hang=True)
    task = asyncio.create_task(adapter.complete(request(), OPENAI, None))
    async with asyncio.timeout(WAIT_S):
        await adapter.wait_for_calls(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert adapter.calls[0].outcome == "cancelled"
    assert adapter.in_flight == 0


async def test_a_timeout_around_a_hang_cancels_it() -> None:
    adapter = MockAdapter(default=Behaviour(hang=True))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await adapter.complete(request(), OPENAI, None)
    assert adapter.calls[0].outcome == "cancelled" and adapter.in_flight == 0


async def test_wait_for_calls() -> None:
    adapter = MockAdapter()
    await adapter.complete(request(), OPENAI, None)
    await adapter.wait_for_calls(0)
    await adapter.wait_for_calls(1)  # already satisfied: returns at once

    waiters = [asyncio.create_task(adapter.wait_for_calls(n)) for n in (2, 3)]
    await adapter.complete(request(), OPENAI, None)
    async with asyncio.timeout(WAIT_S):
        await waiters[0]
    assert not waiters[1].done()
    await adapter.complete(request(), OPENAI, None)
    async with asyncio.timeout(WAIT_S):
        await waiters[1]

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await adapter.wait_for_calls(10)
    assert adapter._call_waiters == []  # a given-up wait leaves nothing behind


async def test_probe_returns_the_configured_result_and_is_recorded() -> None:
    adapter = MockAdapter()
    assert await adapter.probe("http://a/v1", None) == (True, "ok", True)
    adapter.probe_result = (False, "http://b/v1/models answered HTTP 503", False)
    assert await adapter.probe("http://b/v1", "key") == (False, "http://b/v1/models answered HTTP 503", False)
    assert adapter.probes == [("http://a/v1", None), ("http://b/v1", "key")]


def test_it_has_the_adapter_protocols_methods() -> None:
    for name in ("complete", "probe"):
        ours = inspect.signature(getattr(MockAdapter, name))
        theirs = inspect.signature(getattr(Adapter, name))
        assert list(ours.parameters) == list(theirs.parameters)
        assert inspect.iscoroutinefunction(getattr(MockAdapter, name))
    ours, theirs = inspect.signature(MockAdapter.stream), inspect.signature(Adapter.stream)
    assert list(ours.parameters) == list(theirs.parameters)
    assert inspect.isasyncgenfunction(MockAdapter.stream)


def test_behaviour_defaults() -> None:
    assert dataclasses.asdict(Behaviour()) == {
        "latency_s": 0.0,
        "error": None,
        "hang": False,
        "content": None,
        "input_tokens": 10,
        "output_tokens": 5,
        "finish_reason": "stop",
        "tool_calls": [],
        "chunks": None,
        "fail_after_chunks": None,
        "chunk_interval_s": 0.0,
        "usage_estimated": False,
    }
