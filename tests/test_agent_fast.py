"""The actor's logic in milliseconds: the agent on the in-memory bus, providers scripted.

The same kinds of scenarios as ``test_agent_integration.py`` and ``test_request_lifecycle.py``
(a real nats-server and the HTTP emulator), with the bus and the providers swapped for
``tests.membus`` and ``MockAdapter`` (see ``tests/fast.py``). Every assertion is on what a
caller receives over the bus or on the agent's state and metrics; every wait is for a signal
(``Collector.wait_for``, a reply) or a provider call (``MockAdapter.wait_for_calls``), never
a sleep, and nothing asserts on how long something took.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.providers import ADAPTERS
from router_agent.providers.base import ProviderError
from router_agent.providers.mock import MockAdapter
from router_agent.routes import Route, callback
from router_agent.state import Metrics, RouterState
from tests.fast import (  # noqa: F401 - fast_fixture is the `fast` fixture
    REPLY_PREFIX,
    FakeClock,
    FastAgent,
    fast_agent,
    fast_fixture,
)
from tests.membus import MemoryNats

WAIT = 5.0
"""Upper bound on any wait for a signal: a lost answer fails the test instead of hanging it."""

GPT4 = ("openai", "gpt-4-turbo")
"""A configured deployment (emulated, so served by the mock): $0.01 in / $0.03 out per 1k."""


NO_RETRIES: dict[str, Any] = {"router": {"retry": {"max_retries": 0}}}
"""For tests of one attempt per deployment (the breaker's count, a chain's length)."""


def retryable_error(message: str = "upstream error 500") -> ProviderError:
    return ProviderError("provider_error", message, True, 500)


def assert_metrics_add_up(agent: RouterAgent) -> None:
    m = agent.state.metrics
    assert m.total_requests == m.completed + m.failed + m.in_flight, m


async def calls(f: FastAgent, n: int) -> None:
    """Wait until the providers have seen ``n`` calls."""
    async with asyncio.timeout(WAIT):
        await f.mock.wait_for_calls(n)


async def ask(f: FastAgent, **fields: Any) -> sig.LlmResponse:
    return await f.client.ask(f.client.new_request(**fields), timeout=WAIT)


# --------------------------------------------------------------------------- routed and answered


async def test_a_request_is_routed_answered_explained_and_priced(fast):
    f = await fast.start()
    f.mock.script(GPT4, content="routed", input_tokens=1200, output_tokens=300)
    decisions = await f.client.collect(f.subjects.routing_decision("tester"))
    stream = await f.client.collect(f.subjects.llm_response("tester"))
    request = f.client.new_request(model="gpt-4-turbo")

    response = await f.client.ask(request, timeout=WAIT)

    assert response.status == "ok", response.error
    assert (response.request_id, response.agent_id) == (request.request_id, "tester")
    assert (response.provider, response.model, response.emulated) == ("openai", "gpt-4-turbo", True)
    assert response.message is not None and response.message.content == "routed"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1200, 300)
    expected_cost = (1200 * 0.01 + 300 * 0.03) / 1000  # models.yaml prices, per 1k tokens
    assert response.cost_usd == pytest.approx(expected_cost)
    assert [(a.provider, a.model, a.outcome) for a in response.attempts] == [("openai", "gpt-4-turbo", "ok")]
    [call] = f.mock.calls  # the provider's own model id, no key (emulated)
    assert (call.model_id, call.request_id, call.api_key, call.outcome) == (
        "gpt-4-turbo-preview", request.request_id, None, "ok",
    )

    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id, timeout=WAIT)
    assert decision.chosen is not None
    assert (decision.chosen.provider, decision.chosen.model) == ("openai", "gpt-4-turbo")
    assert decision.emulated is True and decision.fallbacks == []
    assert "caller asked for model 'gpt-4-turbo'" in decision.reason
    streamed = await stream.wait_for(lambda r: r.request_id == request.request_id, timeout=WAIT)
    assert streamed == response

    stats = f.agent.provider_stats("openai")
    assert (stats.requests, stats.successes, stats.failures, stats.in_flight) == (1, 1, 0, 0)
    assert (stats.input_tokens, stats.output_tokens) == (1200, 300)
    assert stats.cost_usd == pytest.approx(expected_cost)
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (1, 1, 0, 0)
    assert m.total_cost == pytest.approx(expected_cost)
    assert f.agent.cost_report().by_provider["openai"].cost_usd == pytest.approx(expected_cost)


async def test_a_fire_and_forget_request_is_answered_on_the_stream(make_config):
    async with fast_agent(make_config) as f:  # the context-manager way in: stopped on the way out
        stream = await f.client.collect(f.subjects.llm_response("tester"))
        request = f.client.new_request(model="llama")  # an alias from models.yaml
        await f.client_nc.publish(f.subjects.llm_request, sig.encode_event("llm_request", request))
        answer = await stream.wait_for(lambda r: r.request_id == request.request_id, timeout=WAIT)
        assert (answer.status, answer.provider, answer.model) == ("ok", "local", "llama-3-70b")
    assert f.agent._stopping and f.agent.nc.is_closed


# --------------------------------------------------------------------------- failover and errors


async def test_a_retryable_provider_error_fails_over_to_the_other_provider(fast):
    f = await fast.start()
    for name in ("flaky", "steady"):
        answer = await f.register(name, ("shared", f"{name}-model"))
        assert answer.accepted, answer.errors
    assert len(f.mock.probes) == 2  # each registration probed the (mock) endpoint
    f.mock.script("flaky", error=retryable_error())

    responses = [await ask(f, model="shared") for _ in range(2)]

    assert [(r.status, r.provider) for r in responses] == [("ok", "steady")] * 2
    failed_over = [r for r in responses if len(r.attempts) == 2]
    assert len(failed_over) == 1  # round robin put flaky first exactly once
    first, second = failed_over[0].attempts
    assert (first.provider, first.outcome, first.error.code, first.error.retryable) == (
        "flaky", "error", "provider_error", True,
    )
    assert (second.provider, second.outcome) == ("steady", "ok")
    assert Counter(c.provider for c in f.mock.calls) == {"flaky": 1, "steady": 2}
    assert f.agent.provider_stats("flaky").failures == 1
    assert f.agent.provider_stats("steady").successes == 2
    assert f.state.circuit_breakers[("flaky", "shared")].failures == 1
    assert_metrics_add_up(f.agent)


async def test_a_non_retryable_error_stops_the_chain_and_is_the_answer(fast):
    f = await fast.start()
    assert (await f.register("strict", ("picky", "strict-model"))).accepted
    assert (await f.register("spare", ("picky", "spare-model"), weight=0)).accepted  # only ever a fallback
    f.mock.script("strict", error=ProviderError("rate_limited", "monthly quota exhausted", False, 429))
    decisions = await f.client.collect(f.subjects.routing_decision("tester"))

    request = f.client.new_request(model="picky")
    response = await f.client.ask(request, timeout=WAIT)

    assert response.status == "error"
    assert (response.error.code, response.error.message, response.error.retryable) == (
        "rate_limited", "monthly quota exhausted", False,
    )
    assert [(a.provider, a.outcome, a.error.code) for a in response.attempts] == [("strict", "error", "rate_limited")]
    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id, timeout=WAIT)
    assert [(c.provider, c.model) for c in decision.fallbacks] == [("spare", "picky")]  # there was one...
    assert [c.provider for c in f.mock.calls] == ["strict"]  # ...and it was not tried
    assert f.metrics.errors_by_code == {"rate_limited": 1}


# --------------------------------------------------------------------------- the breaker


async def test_the_breaker_opens_at_the_threshold_and_a_successful_probe_closes_it(fast):
    clock = FakeClock()
    f = await fast.start({"router": {"circuit_breaker": {"failure_threshold": 3, "cooldown_s": 0.5},
                                     "retry": {"max_retries": 0}}}, clock=clock)
    breaker = f.state.circuit_breakers[GPT4]
    f.mock.script(GPT4, error=retryable_error())

    for i in range(3):
        response = await ask(f, model="gpt-4-turbo")
        assert response.error.code == "all_providers_failed"
        assert breaker.state == ("closed" if i < 2 else "open")
        # Routing looks only at the breakers that are not closed: the index follows each crossing.
        assert f.agent.registry.tripped == ({} if i < 2 else {GPT4: breaker})
    assert breaker.opened_at == clock.now
    assert f.agent.provider_stats("openai").circuit == "open"

    refused = await ask(f, model="gpt-4-turbo")
    assert (refused.status, refused.error.code) == ("error", "no_candidates")
    clock.advance(0.4)  # still cooling down
    assert (await ask(f, model="gpt-4-turbo")).error.code == "no_candidates"
    assert len(f.mock.calls) == 3  # an open breaker keeps the provider from being called at all

    clock.advance(0.2)  # past the cooldown: the next request is the probe
    f.mock.script(GPT4, content="recovered")
    probe = await ask(f, model="gpt-4-turbo")
    assert (probe.status, probe.provider, probe.message.content) == ("ok", "openai", "recovered")
    assert len(f.mock.calls) == 4
    assert (breaker.state, breaker.failures, breaker.probe_in_flight) == ("closed", 0, False)
    assert f.agent.registry.tripped == {}
    assert f.agent.provider_stats("openai").circuit == "closed"
    assert (await ask(f, model="gpt-4-turbo")).status == "ok"


async def test_a_failed_probe_reopens_the_breaker_for_a_full_cooldown(fast):
    clock = FakeClock()
    f = await fast.start({"router": {"circuit_breaker": {"failure_threshold": 3, "cooldown_s": 0.5},
                                     "retry": {"max_retries": 0}}}, clock=clock)
    breaker = f.state.circuit_breakers[GPT4]
    f.mock.script(GPT4, error=retryable_error())
    for _ in range(3):
        await ask(f, model="gpt-4-turbo")
    assert breaker.state == "open"

    clock.advance(0.6)
    probe = await ask(f, model="gpt-4-turbo")
    assert probe.error.code == "all_providers_failed" and len(f.mock.calls) == 4
    assert (breaker.state, breaker.opened_at, breaker.probe_in_flight) == ("open", clock.now, False)
    clock.advance(0.4)  # a new cooldown counts from the probe's failure
    assert (await ask(f, model="gpt-4-turbo")).error.code == "no_candidates"
    assert len(f.mock.calls) == 4


# --------------------------------------------------------------------------- timeouts


async def test_a_hanging_provider_fails_over_after_its_own_timeout_and_it_counts_against_it(fast):
    f = await fast.start()
    assert (await f.register("hanging", ("shared", "stuck"), timeout_ms=50)).accepted
    assert (await f.register("steady", ("shared", "fine"))).accepted
    f.mock.script("hanging", hang=True)

    responses = [await ask(f, model="shared", timeout_ms=5_000) for _ in range(2)]

    assert [(r.status, r.provider) for r in responses] == [("ok", "steady")] * 2
    failed_over = [r for r in responses if len(r.attempts) == 2]
    assert len(failed_over) == 1
    first, second = failed_over[0].attempts
    assert (first.provider, first.outcome, first.error.code, first.error.retryable) == (
        "hanging", "timeout", "timeout", True,
    )
    assert (second.provider, second.outcome) == ("steady", "ok")
    [hung] = [c for c in f.mock.calls if c.provider == "hanging"]
    assert hung.outcome == "cancelled"
    stats = f.agent.provider_stats("hanging")
    assert (stats.requests, stats.failures, stats.in_flight) == (1, 1, 0)  # its own timeout is its failure
    assert f.state.circuit_breakers[("hanging", "shared")].failures == 1


async def test_the_callers_deadline_answers_timeout_without_blaming_the_provider(fast):
    f = await fast.start()
    f.mock.script(GPT4, latency_s=30)  # far beyond the caller's patience

    response = await ask(f, model="gpt-4-turbo", timeout_ms=20)

    assert response.status == "error"
    assert (response.error.code, response.error.retryable) == ("timeout", True)
    assert [(a.provider, a.outcome, a.error) for a in response.attempts] == [("openai", "timeout", None)]
    assert f.mock.calls[0].outcome == "cancelled"
    breaker = f.state.circuit_breakers[GPT4]
    assert (breaker.state, breaker.failures) == ("closed", 0)
    stats = f.agent.provider_stats("openai")
    assert (stats.requests, stats.failures, stats.in_flight, stats.circuit) == (0, 0, 0, "closed")
    m = f.metrics
    assert (m.total_requests, m.failed, m.in_flight) == (1, 1, 0)
    assert m.errors_by_code == {"timeout": 1}
    assert f.state.active_requests == {}


# --------------------------------------------------------------------------- duplicates


async def test_a_duplicate_request_id_in_flight_is_refused(fast):
    f = await fast.start(NO_RETRIES)
    f.mock.script(GPT4, hang=True)
    request = f.client.new_request(model="gpt-4-turbo", request_id="same-id")
    first = asyncio.create_task(f.client.ask(request, timeout=WAIT))
    await calls(f, 1)
    assert list(f.state.active_requests) == [("tester", "same-id")]

    second = await f.client.ask(request, timeout=WAIT)

    assert (second.status, second.error.code) == ("error", "invalid_request")
    assert "already in flight" in second.error.message
    assert second.attempts == []
    assert len(f.mock.calls) == 1  # the duplicate never reached a provider
    f.mock.release_hangs()  # the first now fails as a dropped connection
    answered = await first
    assert (answered.request_id, answered.error.code) == ("same-id", "all_providers_failed")
    assert f.state.active_requests == {}
    f.mock.unscript(GPT4)
    again = await f.client.ask(request, timeout=WAIT)  # the id is free again once answered
    assert again.status == "ok"
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (3, 1, 2, 0)


# --------------------------------------------------------------------------- shutdown


async def test_stop_serves_requests_in_flight_within_the_grace_period(fast):
    f = await fast.start()  # shutdown_grace_s: 5
    f.mock.script(GPT4, latency_s=0.05)
    replies = [await f.send(f.client.new_request(model="gpt-4-turbo")) for _ in range(4)]
    await calls(f, 4)
    assert f.metrics.in_flight == 4

    await f.agent.stop()

    answers = [await f.reply_to(reply) for reply in replies]
    assert [(a.status, a.provider) for a in answers] == [("ok", "openai")] * 4
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (4, 4, 0, 0)


async def test_stop_without_grace_answers_every_hanging_request_shutting_down_once(fast):
    f = await fast.start({"router": {"shutdown_grace_s": 0}})
    f.mock.script(GPT4, hang=True)
    everything = await f.client.collect(f"{f.subjects.prefix}llm_response.>")
    requests = [f.client.new_request(model="gpt-4-turbo") for _ in range(3)]
    replies = [await f.send(r) for r in requests]
    await calls(f, 3)

    await f.agent.stop()

    answers = [await f.reply_to(reply) for reply in replies]
    assert [(a.status, a.error.code, a.error.retryable) for a in answers] == [("error", "shutting_down", True)] * 3
    await f.settle(everything)
    assert Counter(d.request_id for d in everything.data) == {r.request_id: 1 for r in requests}
    assert [c.outcome for c in f.mock.calls] == ["cancelled"] * 3
    stats = f.agent.provider_stats("openai")  # stopping is not the provider's failure
    assert (stats.failures, stats.in_flight, stats.circuit) == (0, 0, "closed")
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (3, 0, 3, 0)


async def test_requests_buffered_behind_the_concurrency_bound_are_served_within_the_grace_period(fast):
    f = await fast.start({"router": {"max_concurrent_requests": 1, "shutdown_grace_s": 5}})
    f.mock.script(GPT4, latency_s=0.02)
    replies = [await f.send(f.client.new_request(model="gpt-4-turbo")) for _ in range(5)]
    await calls(f, 1)
    assert (len(f.mock.calls), f.metrics.completed) == (1, 0)  # one at the provider, four buffered

    await f.agent.stop()

    answers = [await f.reply_to(reply) for reply in replies]
    assert [a.status for a in answers] == ["ok"] * 5, [a.error for a in answers]
    assert len(f.mock.calls) == 5
    for before, after in zip(f.mock.calls, f.mock.calls[1:]):  # the bound held: one call at a time
        assert before.finished_at is not None and after.started_at >= before.finished_at
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (5, 5, 0, 0)


async def test_requests_buffered_at_a_stop_without_grace_are_refused_shutting_down(fast):
    f = await fast.start({"router": {"max_concurrent_requests": 1, "shutdown_grace_s": 0}})
    f.mock.script(GPT4, hang=True)
    replies = [await f.send(f.client.new_request(model="gpt-4-turbo")) for _ in range(4)]
    await calls(f, 1)

    await f.agent.stop()

    answers = [await f.reply_to(reply) for reply in replies]
    assert [(a.status, a.error.code) for a in answers] == [("error", "shutting_down")] * 4
    assert len(f.mock.calls) == 1
    m = f.metrics
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (4, 0, 4, 0)


# --------------------------------------------------------------------------- exactly one answer


async def test_every_request_of_a_mixed_batch_is_answered_exactly_once(fast):
    f = await fast.start()
    f.mock.script(GPT4, content="fine")
    f.mock.script(("anthropic", "claude-3-opus"), error=ProviderError("provider_error", "bad request", False, 400))
    f.mock.script(("local", "llama-3-70b"), latency_s=30)
    everything = await f.client.collect(f"{f.subjects.prefix}llm_response.>")
    new = f.client.new_request
    batch = (
        [new(model="gpt-4-turbo") for _ in range(3)]
        + [new(model="claude-3-opus") for _ in range(3)]
        + [new(model="llama-3-70b", timeout_ms=20) for _ in range(3)]
        + [new(model="no-such-model")]
    )
    duplicate = new(model="llama-3-70b", timeout_ms=20, request_id="dup")
    batch += [duplicate, duplicate]  # back to back: the second arrives while the first is in flight

    replies = [await f.send(request) for request in batch]
    answers = [await f.reply_to(reply) for reply in replies]
    await f.agent.stop()  # nothing is left that could still answer
    replied = await f.replies()
    await f.settle(replied, f"{REPLY_PREFIX}.settle")
    await f.settle(everything)

    assert Counter(subject for subject, _, _ in replied.items) == {reply: 1 for reply in replies}
    expected = Counter(r.request_id for r in batch)
    assert Counter(d.request_id for d in everything.data) == expected
    assert expected["dup"] == 2 and max(expected.values()) == 2
    codes = [a.error.code if a.error else "ok" for a in answers]
    assert codes[:10] == ["ok"] * 3 + ["provider_error"] * 3 + ["timeout"] * 3 + ["no_candidates"]
    assert sorted(codes[10:]) == ["invalid_request", "timeout"]
    m = f.metrics
    assert m.total_requests == len(batch) == m.completed + m.failed + m.in_flight
    assert (m.completed, m.failed, m.in_flight) == (3, 9, 0)
    assert m.errors_by_code == {"provider_error": 3, "timeout": 4, "no_candidates": 1, "invalid_request": 1}
    assert f.state.active_requests == {}


# --------------------------------------------------------------------------- the agent's own bugs


class BuggyAdapter:
    """An adapter with a bug: for the given model ids it raises ``exc`` (not a ProviderError);
    everything else goes to the mock."""

    def __init__(self, inner: MockAdapter, model_ids: set[str], exc: Exception):
        self.inner = inner
        self.model_ids = model_ids
        self.exc = exc

    async def complete(self, request: sig.LlmRequest, deployment: Any, api_key: str | None) -> Any:
        if deployment.model_id in self.model_ids:
            raise self.exc
        return await self.inner.complete(request, deployment, api_key)

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        return await self.inner.probe(base_url, api_key)


async def buggy_agent(fast, exc: Exception) -> FastAgent:
    mock = MockAdapter()
    return await fast.start(mock=mock, adapters=dict.fromkeys(ADAPTERS, BuggyAdapter(mock, {"gpt-4-turbo-preview"}, exc)))


async def test_an_unexpected_adapter_exception_is_answered_internal_and_the_agent_goes_on(fast):
    f = await buggy_agent(fast, RuntimeError("adapter bug"))

    response = await ask(f, model="gpt-4-turbo")

    assert response.status == "error"
    assert (response.error.code, response.error.message) == ("internal", "internal router error")
    m = f.metrics
    assert (m.internal_errors, m.failed, m.invalid_inputs) == (1, 1, 0)
    assert m.errors_by_code == {"internal": 1} and m.invalid_by_code == {}
    stats = f.agent.provider_stats("openai")  # the agent's bug is not the provider's failure
    assert (stats.failures, stats.in_flight) == (0, 0)
    assert f.state.circuit_breakers[GPT4].failures == 0
    assert f.state.active_requests == {}
    served = await ask(f, model="claude-3-opus")  # the agent keeps serving
    assert served.status == "ok", served.error
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (2, 1, 1, 0)


async def test_an_adapter_bug_is_not_reported_as_a_provider_timeout(fast):
    f = await buggy_agent(fast, RuntimeError("adapter bug"))
    response = await ask(f, model="gpt-4-turbo")
    assert response.error.code == "internal"
    assert [(a.outcome, a.error.code) for a in response.attempts] == [("error", "internal")], response.attempts


async def test_an_adapter_raising_its_own_timeout_error_is_contained_and_leaves_no_attempt_open(fast):
    f = await buggy_agent(fast, TimeoutError("the adapter's own timer"))
    response = await ask(f, model="gpt-4-turbo")
    assert response.error.code == "internal"
    assert f.metrics.internal_errors == 1
    assert f.agent.provider_stats("openai").in_flight == 0


async def test_an_adapter_timeout_error_during_a_probe_does_not_wedge_the_breaker(fast):
    clock = FakeClock()
    mock = MockAdapter()
    buggy_ids: set[str] = set()
    f = await fast.start({"router": {"circuit_breaker": {"failure_threshold": 3, "cooldown_s": 0.5}}}, clock=clock,
                         mock=mock, adapters={"openai": BuggyAdapter(mock, buggy_ids, TimeoutError("own timer"))})
    mock.script(GPT4, error=retryable_error())
    for _ in range(3):
        await ask(f, model="gpt-4-turbo")
    breaker = f.state.circuit_breakers[GPT4]
    assert breaker.state == "open"
    clock.advance(1)
    buggy_ids.add("gpt-4-turbo-preview")
    assert (await ask(f, model="gpt-4-turbo")).error.code == "internal"  # the probe hit the bug
    buggy_ids.clear()
    mock.script(GPT4, content="recovered")
    clock.advance(3600)  # however long we wait...
    response = await ask(f, model="gpt-4-turbo")
    assert response.status == "ok", (response.error, breaker)  # ...the next request should be the new probe


async def test_a_bug_in_a_route_handler_is_contained_answered_internal_and_counted():
    metrics = Metrics()
    rejected: list[tuple[str, str]] = []

    async def handle(msg: Any, request: sig.LlmRequest) -> None:
        if request.request_id == "boom":
            raise KeyError("a handler bug")
        await msg.respond(b"handled")

    async def reject(msg: Any, exc: sig.SignalError) -> None:
        rejected.append((exc.code, exc.message))
        await msg.respond(exc.code.encode())

    route = Route("fast.llm_request", "llm_request", handle, reject, "nothing")
    bus = MemoryNats()
    server_nc, client_nc = bus.connect("server"), bus.connect("client")
    await server_nc.subscribe(route.subject, cb=callback(route, 1_048_576, metrics))

    def payload(request_id: str) -> bytes:
        request = sig.LlmRequest(request_id=request_id, agent_id="tester",
                                 messages=[sig.ChatMessage(role="user", content="hi")])
        return sig.encode_event("llm_request", request)

    try:
        boom = await client_nc.request(route.subject, payload("boom"), timeout=WAIT)
        assert boom.data == b"internal"
        assert rejected == [("internal", "internal router error")]
        assert (metrics.internal_errors, metrics.invalid_inputs) == (1, 0)
        assert server_nc.callback_errors == []  # contained: nats-py never saw it

        fine = await client_nc.request(route.subject, payload("fine"), timeout=WAIT)  # the subscription goes on
        assert fine.data == b"handled"
        bad = await client_nc.request(route.subject, b"{not json", timeout=WAIT)  # bad input is not a bug
        assert bad.data == b"malformed_json"
        assert (metrics.internal_errors, metrics.invalid_inputs) == (1, 1)
    finally:
        await client_nc.close()
        await server_nc.close()


async def test_a_bug_in_the_agents_own_handler_is_answered_internal(fast, monkeypatch):
    f = await fast.start()

    def broken(*args: Any) -> None:
        raise AttributeError("a bug in the registry")

    monkeypatch.setattr(f.agent.registry, "report_health", broken)
    answer = await f.client.control("provider_health", sig.ProviderHealth(provider="openai", status="degraded"),
                                    timeout=WAIT)
    assert isinstance(answer, sig.RouterError)
    assert (answer.error.code, answer.subject) == ("internal", f.subjects.provider_health)
    m = f.metrics
    assert (m.internal_errors, m.invalid_inputs) == (1, 0)
    assert (await ask(f, model="gpt-4-turbo")).status == "ok"  # and goes on


# --------------------------------------------------------------------------- tuple keys


async def test_tuple_keys_keep_provider_a_and_provider_a_slash_b_apart(fast):
    f = await fast.start(NO_RETRIES)
    # Joined with "/", ("a", "b/m") and ("a/b", "m") would both be "a/b/m".
    assert (await f.register("a", "b/m")).accepted
    assert (await f.register("a/b", "m")).accepted
    f.mock.script(("a/b", "m"), error=retryable_error())
    for _ in range(3):  # failure_threshold in the test config
        assert (await ask(f, model="m")).error.code == "all_providers_failed"

    breakers = f.state.circuit_breakers
    assert (breakers[("a/b", "m")].state, breakers[("a", "b/m")].state) == ("open", "closed")
    assert f.agent.provider_stats("a/b").circuit == "open"
    assert f.agent.provider_stats("a").circuit == "closed"
    assert f.agent.provider_stats("a").failures == 0
    assert (await ask(f, model="b/m")).provider == "a"

    # Two requests in flight whose (agent, request) keys would collide the same way.
    f.mock.script(GPT4, hang=True)
    pending = [
        asyncio.create_task(f.client.ask(f.client.new_request(agent_id=agent, request_id=rid, model="gpt-4-turbo"),
                                         timeout=WAIT))
        for agent, rid in (("x", "y/z"), ("x/y", "z"))
    ]
    await calls(f, len(f.mock.calls) + 2)

    snapshot = f.agent.snapshot()
    json.dumps(snapshot)  # JSON-ready
    assert RouterState.model_validate(snapshot).model_dump() == f.state.model_dump()
    nested = snapshot["circuit_breakers"]
    assert set(nested["a"]) == {"b/m"} and set(nested["a/b"]) == {"m"}
    assert (nested["a"]["b/m"]["state"], nested["a/b"]["m"]["state"]) == ("closed", "open")
    assert set(snapshot["deployment_stats"]["a"]) == {"b/m"} and set(snapshot["deployment_stats"]["a/b"]) == {"m"}
    active = snapshot["active_requests"]
    assert set(active) == {"x", "x/y"}
    assert set(active["x"]) == {"y/z"} and set(active["x/y"]) == {"z"}
    assert active["x/y"]["z"]["provider"] == "openai"

    f.mock.release_hangs()
    answers = await asyncio.gather(*pending)
    assert sorted((a.agent_id, a.request_id) for a in answers) == [("x", "y/z"), ("x/y", "z")]
    assert f.state.active_requests == {}


async def test_a_bug_while_answering_is_logged_and_counted_not_lost_as_a_task_exception(fast, caplog):
    f = await fast.start()

    def broken_prepare(response):
        raise RuntimeError("encoder bug")

    f.agent.outbox.prepare_answer = broken_prepare  # the one step serve() does not contain
    request = f.client.new_request(model="gpt-4-turbo")
    reply = await f.send(request)
    await f.mock.wait_for_calls(1)
    while f.agent.requests.tasks:  # the task ends on its own; wait for it, not for a time
        await asyncio.wait(set(f.agent.requests.tasks))
    assert f.agent.state.metrics.internal_errors == 1
    assert "request task failed while answering" in caplog.text
    del reply


async def test_a_runtime_local_host_that_re_resolves_outside_local_networks_is_refused(fast):
    f = await fast.start()
    assert (await f.register("nearby", ("nearby-model", "n1"), type="local")).accepted
    assert (await f.register("faraway", ("faraway-model", "f1"), type="cloud")).accepted
    guard = f.agent._connection_guard(f.agent.config, None)  # what the agent's HttpClient consults
    host = "127.0.0.1"
    assert host in f.agent.registry.runtime_local_hosts
    assert guard(host, ["127.0.0.1"]) is None
    reason = guard(host, ["8.8.8.8"])  # a public address the endpoint policy alone would allow
    assert reason is not None and "local_networks" in reason
    assert guard("cloud.example", ["8.8.8.8"]) is None  # not a local provider's host: policy only


# --------------------------------------------------------------------------- answer first, book after


async def test_the_answer_is_sent_before_the_attempt_is_booked_and_the_booking_follows(fast):
    """The caller does not wait for the bookkeeping: at the moment the answer is handed to the
    bus, the attempt's cost and outcome are not booked yet; by the time the caller holds
    the answer, they are."""
    f = await fast.start()
    f.mock.script(GPT4, content="first", input_tokens=1000, output_tokens=1000)
    seen_at_send: list[tuple[float, int]] = []
    send_answer = f.agent.outbox.send_answer

    async def recording_send_answer(*args: Any) -> None:
        seen_at_send.append((f.metrics.total_cost, f.agent.provider_stats("openai").successes))
        await send_answer(*args)

    f.agent.outbox.send_answer = recording_send_answer  # observes; the real send still runs
    response = await ask(f, model="gpt-4-turbo")

    assert response.status == "ok" and response.cost_usd == pytest.approx(0.04)  # priced before it went
    assert seen_at_send == [(0.0, 0)]
    assert f.metrics.total_cost == pytest.approx(0.04)
    assert f.agent.provider_stats("openai").successes == 1
    assert f.agent.cost_report().by_provider["openai"].cost_usd == pytest.approx(0.04)


def test_a_failing_bookkeeping_step_is_logged_and_counted_and_the_others_still_run(caplog):
    from router_agent.chainrun import book_after_answer

    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("bookkeeping bug")

    metrics = Metrics()
    book_after_answer([lambda: ran.append("first"), broken, lambda: ran.append("third")], metrics)

    assert ran == ["first", "third"]
    assert metrics.internal_errors == 1
    assert "bookkeeping after an answer failed" in caplog.text
