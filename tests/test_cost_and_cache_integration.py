"""The ledger, the budgets and the response cache on the request path, over a real
nats-server with JetStream and real HTTP to the emulator."""

from __future__ import annotations

import pytest

from signals import ChatMessage, Params, Task
from tests.test_streaming_integration import stream

pytestmark = pytest.mark.integration

CACHING = {"agents": {"cacher": {"cache": {"enabled": True}}, "other": {"cache": {"enabled": True}}}}


def cacheable(client, agent_id: str, text: str = "what is 2 + 2?", **fields):
    return client.new_request(agent_id=agent_id, model="gpt-4-turbo", params=Params(temperature=0),
                              messages=[ChatMessage(role="user", content=text)], **fields)


async def test_a_repeated_request_is_served_from_the_cache_marked_free_and_counted(agents, client):
    agent = await agents.start(CACHING)
    first = await client.ask(cacheable(client, "cacher"))
    assert first.status == "ok" and not first.cached and first.cost_usd > 0

    again = await client.ask(cacheable(client, "cacher"))

    assert again.status == "ok" and again.cached
    assert again.cost_usd == 0 and again.attempts == []
    assert again.message == first.message and again.model == first.model
    m = agent.state.metrics
    assert (m.cache_hits, m.cache_misses) == (1, 1)
    assert agent.state.provider_states["openai"].requests == 1  # the provider was called once


async def test_a_private_answer_of_one_agent_is_never_served_to_another(agents, client):
    agent = await agents.start(CACHING)
    private = {"task": Task(privacy_level="high"), "model": "llama-3-70b"}
    first = await client.ask(client.new_request(agent_id="cacher", params=Params(temperature=0), **private))
    assert first.status == "ok" and not first.cached
    mine = await client.ask(client.new_request(agent_id="cacher", params=Params(temperature=0), **private))
    theirs = await client.ask(client.new_request(agent_id="other", params=Params(temperature=0), **private))
    assert mine.cached and not theirs.cached
    assert agent.state.metrics.cache_hits == 1


async def test_a_streamed_request_is_served_from_the_cache_as_a_stream(agents, client):
    await agents.start(CACHING)
    first = await client.ask(cacheable(client, "cacher"))
    chunks, again, _ = await stream(client, cacheable(client, "cacher", stream=True))
    assert again.cached and again.streamed is not None and again.streamed.chunks == len(chunks) >= 1
    assert "".join(c.content for c in chunks) == first.message.content


async def test_at_the_cloud_cap_cloud_is_refused_and_a_local_model_serves(agents, client):
    agent = await agents.start({"router": {"budgets": {"cloud_daily_usd": 0.000001}}})
    cloud_only = await client.ask(client.new_request(model="gpt-4-turbo"))
    assert cloud_only.status == "error" and cloud_only.error.code == "budget_exceeded"
    assert [a.outcome for a in cloud_only.attempts] == ["skipped"]
    either = await client.ask(client.new_request(agent_id="anyone"))
    assert either.status == "ok"
    assert agent.state.providers[either.provider].type == "local"


async def test_spend_is_in_the_shared_ledger_and_survives_a_restart(agents, client):
    first = await agents.start({"router": {"instance_id": "ledger-a"}})
    answer = await client.ask(client.new_request(model="gpt-4-turbo"))
    assert answer.status == "ok" and answer.cost_usd > 0
    await first.stop()
    again = await agents.start({"router": {"instance_id": "ledger-a"}})
    report = again.cost_report()
    assert report.total.cost_usd == pytest.approx(answer.cost_usd)
