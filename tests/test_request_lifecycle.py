"""Regressions for the request lifecycle, over a real nats-server and the emulator.

Each of these failed against the foundation (commit 7bd60e0): a slow publish gave a caller
``ok`` and then ``timeout``; impatient callers opened a provider's breaker; a hanging
provider held requests for the whole deadline instead of failing over; requests buffered
at a graceful stop were refused at once; accepted settings changed nothing; metrics did
not add up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.emulator import start_emulator
from tests.test_agent_integration import register_msg, slow_provider

pytestmark = pytest.mark.integration


def assert_metrics_add_up(agent: RouterAgent) -> None:
    m = agent.state.metrics
    assert m.total_requests == m.completed + m.failed + m.in_flight, m


class SlowStreamPublisher:
    """A NATS connection whose publishes to one subject take ``delay`` seconds (a slow bus)."""

    def __init__(self, nc: Any, slow_subject: str, delay: float):
        self._nc, self._slow_subject, self._delay = nc, slow_subject, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if subject == self._slow_subject:
            await asyncio.sleep(self._delay)
        await self._nc.publish(subject, payload, reply=reply, headers=headers)


async def test_a_slow_publish_never_turns_an_ok_into_a_second_timeout_answer(agents, client, subjects, emulator):
    stream_subject = subjects.llm_response("tester")
    nc = await nats.connect(agents.nats_url)
    agent = RouterAgent(agents.make_config(), SlowStreamPublisher(nc, stream_subject, 0.3), emulator_url=emulator.url)
    await agent.start()
    agents.agents.append(agent)
    # One subscription sees the reply and the stream copy, in the order the agent sent them.
    seen = await client.collect(f"{subjects.prefix}llm_response.>")
    reply_subject = f"{stream_subject}.inbox"
    request = client.new_request(model="gpt-4-turbo", timeout_ms=150)
    await client.nc.publish(subjects.llm_request, sig.encode_event("llm_request", request), reply=reply_subject)

    # The stream copy is published after the reply: once it is here, any second reply is too.
    await seen.wait_for(lambda _: any(subject == stream_subject for subject, _, _ in seen.items))
    replies = [data for subject, data, _ in seen.items if subject == reply_subject]
    assert [(r.status, r.error) for r in replies] == [("ok", None)]
    m = agent.state.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (1, 1, 0, 0)


async def test_impatient_callers_do_not_open_the_breaker_of_a_slow_but_working_provider(agents, client):
    agent = await agents.start()  # failure_threshold 3 in the test config
    async with slow_provider(client, "sluggish", "sluggish-model", latency_ms=300):
        for _ in range(6):
            response = await client.ask(client.new_request(model="sluggish-model", timeout_ms=50))
            assert response.status == "error" and response.error.code == "timeout"
        patient = await client.ask(client.new_request(model="sluggish-model"))
        assert patient.status == "ok", patient.error
    assert agent.state.circuit_breakers[("sluggish", "sluggish-model")].state == "closed"
    stats = agent.provider_stats("sluggish")
    assert (stats.failures, stats.successes) == (0, 1)
    assert_metrics_add_up(agent)


@contextlib.asynccontextmanager
async def hanging_and_steady(client, emulator, **hanging_fields: Any) -> AsyncIterator[None]:
    """Two providers of the model ``shared``: one never answers in time, one does."""
    hang = await start_emulator(latency_ms=30_000)
    try:
        answer = await client.control("provider_register",
                                      register_msg("hanging", hang.url, ("shared", "stuck"), **hanging_fields))
        assert answer.accepted, answer.errors
        answer = await client.control("provider_register", register_msg("steady", emulator.url, ("shared", "fine")))
        assert answer.accepted, answer.errors
        yield
    finally:
        await hang.close()


async def test_a_hanging_provider_fails_over_after_its_own_timeout(agents, client, emulator):
    agent = await agents.start()
    async with hanging_and_steady(client, emulator, timeout_ms=200):
        responses = [await client.ask(client.new_request(model="shared", timeout_ms=5_000)) for _ in range(4)]
    assert [(r.status, r.provider) for r in responses] == [("ok", "steady")] * 4
    failed_over = [r for r in responses if len(r.attempts) == 2]
    assert len(failed_over) == 2  # round robin put the hanging one first every other time
    for response in failed_over:
        first, second = response.attempts
        assert (first.provider, first.outcome, first.error.code) == ("hanging", "timeout", "timeout")
        assert (second.provider, second.outcome) == ("steady", "ok")
    assert agent.provider_stats("hanging").failures == 2  # its own timeout is its failure


async def test_provider_update_timeout_ms_takes_effect(agents, client, emulator):
    await agents.start()
    async with hanging_and_steady(client, emulator):  # registered without a timeout: 60 s
        answer = await client.control("provider_update", sig.ProviderUpdate(provider="hanging", timeout_ms=200))
        assert answer.accepted, answer.errors
        responses = [await client.ask(client.new_request(model="shared", timeout_ms=5_000)) for _ in range(2)]
    assert [(r.status, r.provider) for r in responses] == [("ok", "steady")] * 2


async def test_provider_update_weight_takes_effect(agents, client, emulator):
    await agents.start()
    for name in ("left", "right"):
        answer = await client.control("provider_register", register_msg(name, emulator.url, ("pair", "pair-model")))
        assert answer.accepted, answer.errors
    answer = await client.control("provider_update", sig.ProviderUpdate(provider="left", weight=0))
    assert answer.accepted, answer.errors
    responses = [await client.ask(client.new_request(model="pair")) for _ in range(6)]
    assert Counter(r.provider for r in responses) == {"right": 6}
    assert all(len(r.attempts) == 1 for r in responses)


async def test_max_latency_ms_removes_a_deployment_observed_slower(agents, client, subjects):
    await agents.start()
    decisions = await client.collect(subjects.routing_decision("tester"))
    async with slow_provider(client, "tortoise", "tortoise-model", latency_ms=200):
        assert (await client.ask(client.new_request(model="tortoise-model"))).status == "ok"
        strict = client.new_request(model="tortoise-model", requirements=sig.Requirements(max_latency_ms=50))
        refused = await client.ask(strict)
        assert refused.status == "error" and refused.error.code == "no_candidates"
        decision = await decisions.wait_for(lambda d: d.request_id == strict.request_id)
        assert [(r.provider, r.constraint) for r in decision.rejected] == [("tortoise", "max_latency")]
        lenient = client.new_request(model="tortoise-model", requirements=sig.Requirements(max_latency_ms=5_000))
        assert (await client.ask(lenient)).status == "ok"


async def test_stream_true_is_answered_with_its_chunks_then_exactly_once(agent, client):
    inbox = client.nc.new_inbox()
    replies = await client.collect(inbox)
    request = client.new_request(model="gpt-4-turbo", stream=True)
    await client.nc.publish(client.subjects.llm_request, sig.encode_event("llm_request", request), reply=inbox)
    answer = await replies.wait_for(lambda d: isinstance(d, sig.LlmResponse))
    assert answer.status == "ok" and answer.warnings == [] and answer.streamed.chunks >= 1
    plain = await client.ask(client.new_request(model="gpt-4-turbo"))  # meanwhile, a second answer would be here
    assert plain.warnings == [] and plain.streamed is None
    assert [type(d) for d in replies.data] == [sig.LlmChunk] * answer.streamed.chunks + [sig.LlmResponse]


async def test_requests_buffered_when_a_stop_begins_are_served_within_the_grace_period(agents, client, subjects):
    agent = await agents.start({"router": {"max_concurrent_requests": 1, "shutdown_grace_s": 10}})
    async with slow_provider(client, "steady", "steady-model", latency_ms=50):
        decisions = await client.collect(subjects.routing_decision("tester"))
        pending = [asyncio.create_task(client.ask(client.new_request(model="steady-model"), timeout=15))
                   for _ in range(10)]
        await decisions.wait_for(lambda d: True)  # one is served; the rest wait behind the bound
        await agent.stop()
        responses = await asyncio.gather(*pending)
    assert [r.status for r in responses] == ["ok"] * 10, [r.error for r in responses]
    m = agent.state.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (10, 10, 0, 0)
