"""Streaming through the bus, in milliseconds: the agent on the in-memory bus, streams scripted.

A streamed request (``stream: true``) gets ``llm_chunk`` signals on its reply subject, in
``seq`` order, then exactly one ``llm_response``. What is checked here: order and numbering,
coalescing (with an injected clock, so which pieces share a chunk is decided by the test,
not by timing), failover before the first chunk, a typed error that says what was delivered
after it, billing (never free), tool calls, the subject without a reply, and verification.
Every wait is for a signal; nothing asserts on how long something took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import signals as sig
from router_agent.providers import ADAPTERS
from router_agent.providers.base import (
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from router_agent.providers.mock import MockAdapter
from router_agent.streaming import VERIFIED_NOT_STREAMED
from tests.fast import REPLY_PREFIX, FakeClock, FastAgent, fast_fixture  # noqa: F401 - the `fast` fixture

WAIT = 5.0
GPT4 = ("openai", "gpt-4-turbo")
"""A configured deployment (emulated, so served by the mock): $0.01 in / $0.03 out per 1k."""
NO_COALESCING = {"router": {"stream_coalesce_ms": 0}}


async def streamed(f: FastAgent, request: sig.LlmRequest) -> tuple[list[sig.LlmChunk], sig.LlmResponse]:
    """Send ``request`` with its own reply subject; every chunk that reached it and the one answer."""
    collector = await f.replies()
    reply = await f.send(request)
    await collector.wait_for(
        lambda _: any(s == reply and isinstance(d, sig.LlmResponse) for s, d, _ in collector.items), timeout=WAIT)
    await f.settle(collector, f"{REPLY_PREFIX}.settle")  # anything sent after the answer is here too
    items = [data for subject, data, _ in collector.items if subject == reply]
    answers = [d for d in items if isinstance(d, sig.LlmResponse)]
    assert len(answers) == 1 and items[-1] is answers[0], items  # one answer, after every chunk
    chunks = items[:-1]
    assert all(isinstance(c, sig.LlmChunk) for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all((c.request_id, c.agent_id) == (request.request_id, request.agent_id) for c in chunks)
    return chunks, answers[0]


def new(f: FastAgent, **fields: Any) -> sig.LlmRequest:
    return f.client.new_request(stream=True, **fields)


def assert_metrics_add_up(f: FastAgent) -> None:
    m = f.metrics
    assert m.total_requests == m.completed + m.failed + m.in_flight, m


class Played(MockAdapter):
    """The mock, whose streams play ``play()``: an async generator the test writes."""

    def __init__(self, play: Callable[[], AsyncIterator[StreamEvent]]):
        super().__init__()
        self.play = play

    async def stream(self, request, deployment, api_key) -> AsyncIterator[StreamEvent]:  # type: ignore[override]
        async for event in self.play():
            yield event


def end(output_tokens: int = 3) -> StreamEnd:
    return StreamEnd("stop", sig.Usage(input_tokens=7, output_tokens=output_tokens))


async def start_played(fast, play, overrides: dict[str, Any] | None = None, **kwargs: Any) -> FastAgent:
    mock = Played(play)
    return await fast.start(overrides, mock=mock, adapters=dict.fromkeys(ADAPTERS, mock), **kwargs)


# --------------------------------------------------------------------------- order, answer, billing


async def test_chunks_arrive_in_order_then_exactly_one_answer_with_the_whole_message(fast):
    f = await fast.start(NO_COALESCING)
    f.mock.script(GPT4, chunks=["Hel", "lo", " wor", "ld"], input_tokens=12, output_tokens=4)
    observed = await f.client.collect(f.subjects.llm_response("tester"))

    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo"))

    assert [c.content for c in chunks] == ["Hel", "lo", " wor", "ld"]
    assert answer.status == "ok" and answer.finish_reason == "stop"
    assert answer.message.content == "Hello world" == "".join(c.content for c in chunks)
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.estimated) == (12, 4, False)
    assert answer.cost_usd == pytest.approx((12 * 0.01 + 4 * 0.03) / 1000)
    assert (answer.streamed.chunks, answer.streamed.chars) == (4, 11)
    assert answer.warnings == [] and [a.outcome for a in answer.attempts] == ["ok"]
    assert await observed.wait_for(lambda r: r.request_id == answer.request_id, timeout=WAIT) == answer
    assert f.metrics.total_cost == pytest.approx(answer.cost_usd)
    assert f.agent.provider_stats("openai").successes == 1
    assert_metrics_add_up(f)


async def test_a_stream_without_the_vendors_usage_is_billed_by_estimate(fast):
    f = await fast.start()
    f.mock.script(GPT4, chunks=["twelve chars"], input_tokens=0, output_tokens=0)
    _, answer = await streamed(f, new(f, model="gpt-4-turbo"))
    assert answer.usage.estimated is True
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens == 3  # 12 characters, 4 a token
    assert answer.cost_usd > 0


async def test_usage_the_adapter_estimated_stays_marked_estimated(fast):
    f = await fast.start()
    f.mock.script(GPT4, usage_estimated=True)
    _, answer = await streamed(f, new(f, model="gpt-4-turbo"))
    assert answer.usage.estimated is True and answer.cost_usd > 0


async def test_tool_calls_stream_as_fragments_and_come_back_in_the_canonical_shape(fast):
    f = await fast.start(NO_COALESCING)
    call = sig.ToolCall(id="call_1", function=sig.FunctionCall(name="lookup", arguments='{"q": "x"}'))
    f.mock.script(GPT4, chunks=["Let me look."], tool_calls=[call], finish_reason="tool_calls")

    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo"))

    assert [c.content for c in chunks] == ["Let me look.", ""]
    assert chunks[1].tool_calls == [sig.ToolCallFragment(index=0, id="call_1", name="lookup", arguments='{"q": "x"}')]
    assert answer.finish_reason == "tool_calls" and answer.message.tool_calls == [call]
    assert answer.streamed.chars == len("Let me look.") + len('{"q": "x"}')


async def test_a_request_without_a_reply_subject_streams_on_llm_chunk_of_its_agent(fast):
    f = await fast.start(NO_COALESCING)
    f.mock.script(GPT4, chunks=["a", "b"])
    chunks = await f.client.collect(f.subjects.llm_chunk("tester"))
    answers = await f.client.collect(f.subjects.llm_response("tester"))
    request = new(f, model="gpt-4-turbo")

    await f.client_nc.publish(f.subjects.llm_request, sig.encode_event("llm_request", request))

    answer = await answers.wait_for(lambda r: r.request_id == request.request_id, timeout=WAIT)
    assert answer.status == "ok" and answer.streamed.chunks == 2
    assert [(c.seq, c.content) for c in chunks.data] == [(0, "a"), (1, "b")]


# --------------------------------------------------------------------------- coalescing


async def test_pieces_within_the_window_share_a_chunk_the_first_never_waits(fast):
    f = await fast.start({"router": {"stream_coalesce_ms": 5}}, clock=FakeClock())  # the clock never moves
    f.mock.script(GPT4, chunks=["Hel", "lo", " wor", "ld"])
    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo"))
    assert [c.content for c in chunks] == ["Hel", "lo world"]
    assert (answer.message.content, answer.streamed.chunks, answer.streamed.chars) == ("Hello world", 2, 11)


@pytest.mark.parametrize(("window_ms", "expected"), [
    (1000, ["a", "bcd", "ef"]),
    (0, ["a", "b", "c", "d", "e", "f"]),
])
async def test_a_piece_after_the_window_sends_what_waited_with_it(fast, window_ms, expected):
    clock = FakeClock()

    async def play() -> AsyncIterator[StreamEvent]:
        # Pieces at 0, 0.2, 0.4, 1.1, 1.3 and 2.2 s (the injected clock; no time passes).
        for step, text in ((0, "a"), (0.2, "b"), (0.2, "c"), (0.7, "d"), (0.2, "e"), (0.9, "f")):
            clock.advance(step)
            yield TextDelta(text)
        yield end()

    f = await start_played(fast, play, {"router": {"stream_coalesce_ms": window_ms}}, clock=clock)
    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo"))
    assert [c.content for c in chunks] == expected
    assert answer.message.content == "abcdef"


async def test_a_waiting_piece_is_sent_when_the_window_ends_even_if_the_provider_pauses(fast):
    resume = asyncio.Event()

    async def play() -> AsyncIterator[StreamEvent]:
        yield TextDelta("a")
        yield TextDelta("b")  # within the window (the clock does not move): it waits...
        await resume.wait()  # ...and the provider pauses
        yield TextDelta("c")
        yield end()

    f = await start_played(fast, play, {"router": {"stream_coalesce_ms": 5}}, clock=FakeClock())
    collector = await f.replies()
    task = asyncio.create_task(streamed(f, new(f, model="gpt-4-turbo")))
    # The window's timer sends "b" while the provider is still paused.
    await collector.wait_for(lambda d: isinstance(d, sig.LlmChunk) and d.content == "b", timeout=WAIT)
    resume.set()
    chunks, answer = await task
    assert [c.content for c in chunks] == ["a", "b", "c"]
    assert answer.status == "ok" and answer.message.content == "abc"


async def test_pieces_of_one_tool_call_that_wait_together_become_one_fragment(fast):
    async def play() -> AsyncIterator[StreamEvent]:
        yield ToolCallDelta(0, "call_7", "lookup")
        for piece in ('{"q"', ': "x"', "}"):
            yield ToolCallDelta(0, arguments=piece)
        yield ToolCallDelta(1, "call_8", "other", "{}")
        yield StreamEnd("tool_calls", sig.Usage(input_tokens=7, output_tokens=9))

    f = await start_played(fast, play, {"router": {"stream_coalesce_ms": 5}}, clock=FakeClock())
    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo"))
    assert [c.tool_calls for c in chunks] == [
        [sig.ToolCallFragment(index=0, id="call_7", name="lookup")],
        [sig.ToolCallFragment(index=0, arguments='{"q": "x"}'),
         sig.ToolCallFragment(index=1, id="call_8", name="other", arguments="{}")],
    ]
    assert [(c.id, c.function.name, c.function.arguments) for c in answer.message.tool_calls] == [
        ("call_7", "lookup", '{"q": "x"}'), ("call_8", "other", "{}")]


# --------------------------------------------------------------------------- failures


async def test_a_failure_before_the_first_chunk_fails_over_like_any_request(fast):
    f = await fast.start(NO_COALESCING)
    assert (await f.register("first", ("shared", "first-model"))).accepted
    assert (await f.register("second", ("shared", "second-model"), weight=0)).accepted  # only ever a fallback
    f.mock.script("first", error=ProviderError("provider_error", "upstream error 500", True, 500))
    f.mock.script("second", chunks=["from ", "second"])

    chunks, answer = await streamed(f, new(f, model="shared"))

    assert [c.content for c in chunks] == ["from ", "second"]
    assert (answer.status, answer.provider, answer.message.content) == ("ok", "second", "from second")
    assert [(a.provider, a.outcome) for a in answer.attempts] == [("first", "error"), ("second", "ok")]
    assert f.agent.provider_stats("first").failures == 1
    assert f.state.circuit_breakers[("first", "shared")].failures == 1
    assert_metrics_add_up(f)


async def test_a_provider_silent_past_its_timeout_before_the_first_chunk_fails_over(fast):
    f = await fast.start()
    assert (await f.register("hanging", ("shared", "stuck"), timeout_ms=50)).accepted
    assert (await f.register("steady", ("shared", "fine"), weight=0)).accepted
    f.mock.script("hanging", hang=True)

    _, answer = await streamed(f, new(f, model="shared", timeout_ms=5_000))

    assert (answer.status, answer.provider) == ("ok", "steady")
    assert [(a.provider, a.outcome) for a in answer.attempts] == [("hanging", "timeout"), ("steady", "ok")]
    assert f.agent.provider_stats("hanging").failures == 1  # its own timeout bounds the first chunk


async def test_a_failure_after_the_first_chunk_ends_with_an_error_saying_what_was_delivered(fast):
    f = await fast.start()  # the default window: the second piece waits, and is sent before the answer
    assert (await f.register("cutter", ("shared", "cut-model"))).accepted
    assert (await f.register("spare", ("shared", "spare-model"), weight=0)).accepted
    f.mock.script("cutter", chunks=["one ", "two ", "three"], fail_after_chunks=2)

    chunks, answer = await streamed(f, new(f, model="shared"))

    assert [c.content for c in chunks] == ["one ", "two "]
    assert answer.status == "error" and answer.error.code == "connection_error"
    assert "2 chunk(s) with 8 character(s) were delivered" in answer.error.message
    assert (answer.streamed.chunks, answer.streamed.chars) == (2, 8)
    assert (answer.message.content, answer.finish_reason, answer.provider) == ("one two ", "error", "cutter")
    assert answer.usage.estimated is True and answer.usage.output_tokens == 2 and answer.cost_usd > 0
    assert [c.provider for c in f.mock.calls] == ["cutter"]  # no failover once content was sent
    assert f.agent.provider_stats("cutter").failures == 1
    assert f.metrics.errors_by_code == {"connection_error": 1}
    assert_metrics_add_up(f)


async def test_the_deadline_bounds_the_whole_stream(fast):
    async def play() -> AsyncIterator[StreamEvent]:
        yield TextDelta("only this")
        await asyncio.Event().wait()  # and then nothing, ever
        yield end()

    f = await start_played(fast, play)
    chunks, answer = await streamed(f, new(f, model="gpt-4-turbo", timeout_ms=50))

    assert [c.content for c in chunks] == ["only this"]
    assert (answer.status, answer.error.code, answer.error.retryable) == ("error", "timeout", True)
    assert "1 chunk(s) with 9 character(s) were delivered" in answer.error.message
    assert answer.message.content == "only this" and answer.usage.estimated
    stats = f.agent.provider_stats("openai")  # the caller's deadline is not the provider's failure
    assert (stats.failures, stats.in_flight) == (0, 0)


async def test_a_stop_mid_stream_answers_shutting_down_with_what_was_delivered(fast):
    async def play() -> AsyncIterator[StreamEvent]:
        yield TextDelta("partial")
        await asyncio.Event().wait()
        yield end()

    f = await start_played(fast, play, {"router": {"shutdown_grace_s": 0}})
    collector = await f.replies()
    task = asyncio.create_task(streamed(f, new(f, model="gpt-4-turbo")))
    await collector.wait_for(lambda d: isinstance(d, sig.LlmChunk), timeout=WAIT)

    await f.agent.stop()

    chunks, answer = await task
    assert [c.content for c in chunks] == ["partial"]
    assert (answer.error.code, answer.streamed.chunks, answer.message.content) == ("shutting_down", 1, "partial")
    assert "1 chunk(s) with 7 character(s) were delivered" in answer.error.message
    assert_metrics_add_up(f)


# --------------------------------------------------------------------------- verification


async def test_a_request_a_rule_verifies_is_answered_whole_with_a_warning(fast):
    f = await fast.start()
    request = new(f, agent_id="qa_agent", task=sig.Task(type="test_generation", critical=True))

    chunks, answer = await streamed(f, request)

    assert chunks == []
    assert answer.status == "ok" and answer.verification is not None and answer.verification.status == "verified"
    assert answer.warnings == [VERIFIED_NOT_STREAMED] and answer.streamed is None
    assert len(f.mock.calls) == 2  # the draft and the verifier, neither streamed
