"""The agent driven exactly as other agents drive it: over a real nats-server, real HTTP
to the emulator. Nothing here mocks the agent, the bus or the provider."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

import signals as sig
from router_agent.emulator import start_emulator
from tests.conftest import BROKEN_MODEL, LIMITED_MODEL

pytestmark = pytest.mark.integration


def register_msg(provider: str, base_url: str, *models: str | tuple[str, str], **fields) -> sig.ProviderRegister:
    specs = []
    for model in models:
        name, model_id = model if isinstance(model, tuple) else (model, model)
        specs.append(sig.ModelSpec(name=name, model_id=model_id, capabilities=["general_reasoning"],
                                   cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002)))
    return sig.ProviderRegister(provider=provider, base_url=base_url, models=specs, **fields)


@contextlib.asynccontextmanager
async def slow_provider(client, provider: str, model: str, latency_ms: int) -> AsyncIterator[None]:
    """A provider registered at its own emulator that answers after ``latency_ms``."""
    slow = await start_emulator(latency_ms=latency_ms)
    try:
        answer = await client.control("provider_register", register_msg(provider, slow.url, model))
        assert answer.accepted, answer.errors
        yield
    finally:
        await slow.close()


async def test_request_reply_is_routed_to_the_emulator_and_explained(agent, client, subjects):
    decisions = await client.collect(subjects.routing_decision("cto_agent"))
    stream = await client.collect(subjects.llm_response("cto_agent"))
    request = client.new_request(agent_id="cto_agent", content="Design a cache for the router")

    response = await client.ask(request)

    assert response.status == "ok", response.error
    assert response.request_id == request.request_id
    assert response.emulated is True
    assert response.provider and response.model in {"claude-3-opus", "gpt-4-turbo", "llama-3-70b"}
    assert response.message is not None and "[emulated " in response.message.content
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert [a.outcome for a in response.attempts] == ["ok"]
    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id)
    assert decision.chosen is not None
    assert (decision.chosen.provider, decision.chosen.model) == (response.provider, response.model)
    assert decision.emulated is True
    assert len(decision.fallbacks) == 2  # the agent's three preferences, one chosen
    # The same answer also goes to the per-agent stream for observers.
    streamed = await stream.wait_for(lambda r: r.request_id == request.request_id)
    assert streamed == response


async def test_cost_is_priced_from_the_model_registry(agent, client):
    response = await client.ask(client.new_request(model="gpt-4-turbo", content="price me"))
    expected = (response.usage.input_tokens * 0.01 + response.usage.output_tokens * 0.03) / 1000
    assert response.cost_usd == pytest.approx(expected)


async def test_fire_and_forget_request_is_answered_on_the_stream(agent, client, subjects):
    stream = await client.collect(subjects.llm_response("tester"))
    request = client.new_request(model="llama")  # an alias from models.yaml
    await client.nc.publish(subjects.llm_request, sig.encode_event("llm_request", request))
    answer = await stream.wait_for(lambda r: r.request_id == request.request_id)
    assert answer.status == "ok"
    assert answer.model == "llama-3-70b"


async def test_traceparent_travels_from_request_to_decision_and_response(agent, client, subjects):
    decisions = await client.collect(subjects.routing_decision("tester"))
    stream = await client.collect(subjects.llm_response("tester"))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = client.new_request()
    await client.ask(request, headers={"traceparent": traceparent})
    await decisions.wait_for(lambda d: d.request_id == request.request_id)
    await stream.wait_for(lambda r: r.request_id == request.request_id)
    assert decisions.items[-1][2] == {"traceparent": traceparent}
    assert stream.items[-1][2] == {"traceparent": traceparent}


async def test_privacy_high_never_reaches_a_cloud_model(agent, client, subjects):
    decisions = await client.collect(subjects.routing_decision("cto_agent"))
    for _ in range(4):  # round robin would otherwise rotate through the cloud preferences
        request = client.new_request(agent_id="cto_agent", task=sig.Task(privacy_level="high"))
        response = await client.ask(request)
        assert response.status == "ok"
        assert response.model == "llama-3-70b"
        decision = await decisions.wait_for(lambda d, rid=request.request_id: d.request_id == rid)
        assert {r.constraint for r in decision.rejected} == {"privacy"}
        assert decision.fallbacks == []


async def test_the_agents_primary_leads_and_a_chosen_strategy_spreads_over_its_preferences(agents, client):
    await agents.start({"agents": {"qa_agent": {"strategy": "round_robin"}}})
    firsts = {(await client.ask(client.new_request(agent_id="frontend_agent"))).model for _ in range(4)}
    assert firsts == {"gpt-4-turbo"}  # no rule matched, no strategy chosen for it: its primary
    models = set()
    for _ in range(4):
        response = await client.ask(client.new_request(agent_id="qa_agent"))
        assert response.status == "ok"
        models.add(response.model)
    assert models == {"llama-3-70b", "gpt-4-turbo"}  # round robin chosen for the agent: it rotates


async def test_unknown_model_gets_a_typed_no_candidates_error(agent, client):
    response = await client.ask(client.new_request(model="no-such-model"))
    assert response.status == "error"
    assert response.error.code == "no_candidates"
    assert "no-such-model" in response.error.message


async def test_runtime_registered_provider_serves_the_next_request(agent, client, emulator, subjects):
    confirmations = await client.collect(subjects.provider_registered("vllm-a"))
    answer = await client.control("provider_register", register_msg("vllm-a", emulator.url, "mistral-7b"))
    assert answer.accepted, answer.errors
    assert answer.models == ["mistral-7b"]
    assert answer.emulated is True  # the emulator says so in its x-emulated header
    await confirmations.wait_for(lambda a: a.accepted)

    response = await client.ask(client.new_request(model="mistral-7b"))
    assert response.status == "ok", response.error
    assert (response.provider, response.model) == ("vllm-a", "mistral-7b")
    assert agent.state.providers["vllm-a"].source == "runtime"
    assert ("vllm-a", "mistral-7b") in agent.state.circuit_breakers


async def test_registration_is_refused_when_the_endpoint_does_not_answer(agent, client):
    answer = await client.control("provider_register", register_msg("ghost", "http://127.0.0.1:9/v1", "m"))
    assert not answer.accepted
    assert answer.errors[0].code == "probe_failed"
    assert "ghost" not in agent.state.providers


@pytest.mark.parametrize(
    ("base_url", "code"),
    [
        ("http://169.254.169.254/latest", "endpoint_not_allowed"),
        ("http://metadata.google.internal/v1", "endpoint_not_allowed"),
        ("http://[fe80::1]:8000/v1", "endpoint_not_allowed"),
        ("file:///etc/passwd", "endpoint_not_allowed"),
        ("http://user:pw@127.0.0.1:8000/v1", "endpoint_not_allowed"),
    ],
)
async def test_registration_refuses_endpoints_outside_the_policy(agent, client, base_url, code):
    answer = await client.control("provider_register", register_msg("evil", base_url, "m"))
    assert not answer.accepted
    assert answer.errors[0].code == code
    assert answer.errors[0].field == "$.data.base_url"
    assert "evil" not in agent.state.providers


async def test_registration_refuses_a_raw_api_key_and_never_echoes_it(agent, client, emulator, subjects):
    secret = "sk-test-DO-NOT-LEAK-0123456789abcdef"
    everything = await client.collect(f"{subjects.prefix}>")
    answer = await client.control(
        "provider_register", register_msg("inline", emulator.url, "m1", api_key=secret)
    )
    assert not answer.accepted
    assert answer.errors[0].field == "$.data.api_key"
    await everything.wait_for(lambda d: isinstance(d, sig.ProviderRegistered) and d.provider == "inline")
    inbound = {subjects.provider_register, subjects.llm_request}
    published = [str(data) for subject, data, _ in everything.items if subject not in inbound]
    assert published and not any(secret in text for text in published)


async def test_api_key_from_env_is_used_but_never_published_logged_or_dumped(
    agents, client, emulator, subjects, monkeypatch, caplog
):
    secret = "sk-test-ENV-SECRET-9876543210fedcba"
    monkeypatch.setenv("TEST_PROVIDER_KEY", secret)
    agent = await agents.start({"logging": {"level": "DEBUG"}, "security": {"runtime_key_envs": ["TEST_PROVIDER_KEY"]}})
    caplog.set_level(logging.DEBUG)
    everything = await client.collect(f"{subjects.prefix}>")
    answer = await client.control(
        "provider_register", register_msg("keyed", emulator.url, "keyed-model", api_key_env="TEST_PROVIDER_KEY")
    )
    assert answer.accepted, answer.errors
    assert agent.state.providers["keyed"].has_key is True
    response = await client.ask(client.new_request(model="keyed-model"))
    assert response.status == "ok"
    await agent.reports.publish_metrics()
    await agent.reports.publish_cost_report()
    # Wait for each kind of signal the test scans, so none can be missed.
    await everything.wait_for(lambda d: isinstance(d, sig.ProviderRegistered) and d.provider == "keyed")
    await everything.wait_for(lambda d: isinstance(d, sig.RoutingDecision) and d.chosen and d.chosen.provider == "keyed")
    await everything.wait_for(lambda d: isinstance(d, sig.LlmResponse) and d.provider == "keyed")
    await everything.wait_for(lambda d: isinstance(d, sig.ProviderMetrics) and d.stats.provider == "keyed")
    await everything.wait_for(lambda d: isinstance(d, sig.CostReport) and "keyed" in d.by_provider)
    published = "\n".join(str(item) for item in everything.data)
    assert "keyed" in published  # the signals were seen...
    assert secret not in published  # ...and none carried the key
    assert secret not in caplog.text
    assert secret not in str(agent.snapshot())
    assert secret not in repr(agent.state)


async def test_provider_update_disables_and_reprices_at_run_time(agent, client):
    answer = await client.control("provider_update", sig.ProviderUpdate(provider="openai", enabled=False))
    assert answer.accepted and answer.action == "update"
    response = await client.ask(client.new_request(model="gpt-4-turbo"))
    assert response.status == "error" and response.error.code == "no_candidates"

    answer = await client.control("provider_update", sig.ProviderUpdate(
        provider="openai", enabled=True,
        models=[sig.ModelUpdate(name="gpt-4-turbo", cost_per_1k_tokens=sig.ModelPrice(input=1.0, output=1.0))],
    ))
    assert answer.accepted
    response = await client.ask(client.new_request(model="gpt-4-turbo"))
    assert response.status == "ok"
    total_tokens = response.usage.input_tokens + response.usage.output_tokens
    assert response.cost_usd == pytest.approx(total_tokens / 1000)


async def test_provider_update_of_an_unknown_provider_is_rejected(agent, client):
    answer = await client.control("provider_update", sig.ProviderUpdate(provider="nobody", enabled=False))
    assert not answer.accepted
    assert answer.errors[0].code == "unknown_provider"


async def test_provider_health_unhealthy_removes_the_provider_from_routing(agent, client, subjects):
    await client.nc.publish(subjects.provider_health, sig.encode_event(
        "provider_health", sig.ProviderHealth(provider="anthropic", status="unhealthy", detail="outage")
    ))
    # The agent takes provider_health in order on one subscription: once a bad one sent
    # after it is answered, the first has been applied.
    answer = await client.control("provider_health", sig.ProviderHealth(provider="nobody", status="healthy"))
    assert answer.error.code == "unknown_provider"
    assert agent.state.provider_states["anthropic"].health == "unhealthy"
    decisions = await client.collect(subjects.routing_decision("cto_agent"))
    request = client.new_request(agent_id="cto_agent")
    response = await client.ask(request)
    assert response.status == "ok" and response.provider != "anthropic"
    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id)
    assert any(r.provider == "anthropic" and r.constraint == "unhealthy" for r in decision.rejected)


async def test_failover_to_the_next_candidate_when_a_provider_fails(agent, client, emulator):
    for name, model_id in (("flaky", BROKEN_MODEL), ("steady", "good-model")):
        answer = await client.control("provider_register", register_msg(name, emulator.url, ("shared", model_id)))
        assert answer.accepted, answer.errors
    responses = [await client.ask(client.new_request(model="shared")) for _ in range(2)]
    assert all(r.status == "ok" and r.provider == "steady" for r in responses)
    failed_over = [r for r in responses if len(r.attempts) == 2]
    assert len(failed_over) == 1  # round robin put flaky first exactly once
    first, second = failed_over[0].attempts
    assert (first.provider, first.outcome, first.error.code) == ("flaky", "error", "server_error")
    assert (second.provider, second.outcome) == ("steady", "ok")


async def test_all_providers_failing_gives_one_typed_error_and_opens_the_breaker(agent, client, emulator):
    answer = await client.control("provider_register", register_msg("down", emulator.url, ("doomed", BROKEN_MODEL)))
    assert answer.accepted
    # One request: the attempt and its two retries (router.retry.max_retries) after a backoff,
    # which reach failure_threshold (3 in the test config).
    response = await client.ask(client.new_request(model="doomed"))
    assert response.status == "error"
    assert response.error.code == "all_providers_failed" and response.error.retryable
    assert [(a.outcome, a.retry) for a in response.attempts] == [("error", False), ("error", True), ("error", True)]
    assert agent.state.circuit_breakers[("down", "doomed")].state == "open"
    response = await client.ask(client.new_request(model="doomed"))
    assert response.error.code == "no_candidates"  # the open breaker removes it before any call


async def test_upstream_rate_limit_is_reported_as_retryable(agent, client, emulator):
    answer = await client.control("provider_register", register_msg("busy", emulator.url, ("tight", LIMITED_MODEL)))
    assert answer.accepted
    response = await client.ask(client.new_request(model="tight"))
    assert response.status == "error"
    assert response.attempts[0].error.code == "rate_limited"


async def test_periodic_cost_report_and_provider_metrics_are_published(agent, client, subjects):
    reports = await client.collect(subjects.cost_report)
    metrics = await client.collect(subjects.provider_metrics("openai"))
    response = await client.ask(client.new_request(agent_id="billing", model="gpt-4-turbo"))
    assert response.status == "ok"
    report = await reports.wait_for(lambda r: r.total.requests >= 1)
    assert report.instance_id == agent.instance_id
    assert report.by_agent["billing"].requests == 1
    assert report.by_model["gpt-4-turbo"].cost_usd == pytest.approx(response.cost_usd)
    assert report.by_provider["openai"].input_tokens == response.usage.input_tokens
    stats = (await metrics.wait_for(lambda m: m.stats.requests >= 1)).stats
    assert stats.provider == "openai" and stats.successes == 1 and stats.emulated


async def test_timeout_answers_with_a_typed_error(agents, client, emulator):
    agent = await agents.start()
    answer = await client.control("provider_register", register_msg("slowpoke", emulator.url, "slow-model"))
    assert answer.accepted
    # The emulator honours a per-request latency header; the router sends none, so make the
    # provider slow by registering it at a second emulator with high latency.
    async with slow_provider(client, "slowest", "very-slow", latency_ms=2000):
        response = await client.ask(client.new_request(model="very-slow", timeout_ms=100))
        assert response.status == "error"
        assert response.error.code == "timeout" and response.error.retryable
        assert response.attempts and response.attempts[0].provider == "slowest"
        assert agent.state.active_requests == {}


async def test_duplicate_request_id_in_flight_is_refused(agents, client):
    agent = await agents.start()
    async with slow_provider(client, "slowish", "slowish-model", latency_ms=500):
        request = client.new_request(model="slowish-model", request_id="same-id")
        first, second = await asyncio.gather(client.ask(request), client.ask(request))
        statuses = sorted([first.status, second.status])
        assert statuses == ["error", "ok"]
        refused = first if first.status == "error" else second
        assert refused.error.code == "invalid_request" and "already in flight" in refused.error.message
    assert agent.state.active_requests == {}


async def test_two_instances_share_requests_through_the_queue_group(agents, client):
    first = await agents.start()
    second = await agents.start()
    for _ in range(40):
        response = await client.ask(client.new_request(model="gpt-4-turbo"))
        assert response.status == "ok"
    served = [first.state.metrics.total_requests, second.state.metrics.total_requests]
    assert sum(served) == 40
    assert min(served) > 0


async def test_graceful_stop_answers_in_flight_requests(agents, client, subjects):
    agent = await agents.start()
    decisions = await client.collect(subjects.routing_decision("tester"))
    async with slow_provider(client, "patient", "patient-model", latency_ms=300):
        pending = [asyncio.create_task(client.ask(client.new_request(model="patient-model"))) for _ in range(5)]
        await decisions.wait_for(lambda _: len(decisions.items) == 5)  # all five are at the provider
        await agent.stop()
        responses = await asyncio.gather(*pending)
        assert [r.status for r in responses] == ["ok"] * 5


async def test_stop_past_the_grace_period_still_answers_every_request(agents, client, subjects):
    agent = await agents.start({"router": {"shutdown_grace_s": 0}})
    decisions = await client.collect(subjects.routing_decision("tester"))
    async with slow_provider(client, "glacial", "glacial-model", latency_ms=5000):
        pending = [asyncio.create_task(client.ask(client.new_request(model="glacial-model"))) for _ in range(3)]
        await decisions.wait_for(lambda _: len(decisions.items) == 3)  # all three are at the provider
        await agent.stop()
        responses = await asyncio.gather(*pending)
        assert [(r.status, r.error.code) for r in responses] == [("error", "shutting_down")] * 3


async def test_state_snapshot_validates_against_the_schema(agent, client):
    await client.ask(client.new_request())
    snapshot = agent.snapshot()
    assert set(snapshot) >= {
        "providers", "provider_states", "model_capabilities", "routing_rules", "active_requests",
        "metrics", "load_balancing", "circuit_breakers", "rate_limiters",
    }
    assert snapshot["metrics"]["total_requests"] == 1
    assert snapshot["model_capabilities"]["claude-3-opus"] == sorted(
        ["code_generation", "architecture_design", "complex_reasoning", "tool_calling", "vision", "structured_output"]
    )


async def test_tracing_makes_the_router_a_child_span_of_the_caller(agents, client, subjects):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from router_agent.telemetry import Tracing

    exporter = InMemorySpanExporter()
    harness_config = agents.make_config()
    import nats

    from router_agent.agent import RouterAgent

    nc = await nats.connect(agents.nats_url)
    agent = RouterAgent(harness_config, nc, emulator_url=agents.emulator.url,
                        tracing=Tracing(harness_config.telemetry, SimpleSpanProcessor(exporter)))
    await agent.start()
    agents.agents.append(agent)
    stream = await client.collect(subjects.llm_response("tester"))
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    request = client.new_request(model="gpt-4-turbo")
    response = await client.ask(request, headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert response.status == "ok"
    await stream.wait_for(lambda r: r.request_id == request.request_id)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert all(format(s.context.trace_id, "032x") == trace_id for s in spans.values())
    consumer, span, call = spans["process llm_request"], spans["llm_request"], spans["chat gpt-4-turbo-preview"]
    assert format(consumer.parent.span_id, "016x") == caller_span  # the caller's trace continues...
    assert span.parent.span_id == consumer.context.span_id  # ...through the router's request span...
    assert call.parent.span_id == span.context.span_id  # ...to the provider call (a GenAI client span)
    assert span.attributes["router.provider"] == "openai"
    assert span.attributes["router.status"] == "ok"
    assert call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.request.model"] == "gpt-4-turbo-preview"
    assert call.attributes["gen_ai.usage.input_tokens"] == response.usage.input_tokens
    sent = stream.items[-1][2]["traceparent"]
    answer = spans["publish llm_response"]
    assert answer.parent.span_id == span.context.span_id
    assert sent == f"00-{trace_id}-{format(answer.context.span_id, '016x')}-01"


async def test_stop_answers_requests_still_queued_behind_the_concurrency_bound(agents, client, subjects):
    agent = await agents.start({"router": {"max_concurrent_requests": 1, "shutdown_grace_s": 0}})
    decisions = await client.collect(subjects.routing_decision("tester"))
    async with slow_provider(client, "queue", "queued-model", latency_ms=5000):
        pending = [asyncio.create_task(client.ask(client.new_request(model="queued-model"))) for _ in range(4)]
        await decisions.wait_for(lambda _: True)  # one runs; the others wait for the slot or in the buffer
        await client.nc.flush()  # all four are at the server, so the agent's drain will see them
        await agent.stop()
        responses = await asyncio.gather(*pending)
        outcomes = [(r.status, r.error.code if r.error else r.provider) for r in responses]
        assert outcomes == [("error", "shutting_down")] * 4, outcomes
    m = agent.state.metrics  # refusals at stop are requests too: the counters add up
    assert (m.total_requests, m.completed, m.failed, m.in_flight) == (4, 0, 4, 0)
