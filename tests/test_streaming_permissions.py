"""Streaming under the shipped bus permissions (``config/nats/permissions.conf``): an agent
user gets the chunks of its streamed requests, on its own inbox or on ``llm_chunk.<its id>``,
and cannot read another agent's; the router is never refused."""

from __future__ import annotations

import asyncio

import pytest

import signals as sig
from router_agent.bus import sync_subscriptions
from tests import test_bus_permissions as gate
from tests.conftest import decode_any

# The shipped permissions on a nats-server, the router and agents logged in as their users.
secured_nats, router, login = gate.secured_nats, gate.router, gate.login

pytestmark = pytest.mark.integration


def streamed(agent_id: str, request_id: str) -> bytes:
    request = sig.LlmRequest(request_id=request_id, agent_id=agent_id, stream=True, model="gpt-4-turbo",
                             messages=[sig.ChatMessage(role="user", content="stream me through the gate")])
    return sig.encode_event("llm_request", request)


async def until_answer(queue: asyncio.Queue) -> list:
    received = []
    async with asyncio.timeout(10):
        while not received or not isinstance(received[-1], sig.LlmResponse):
            received.append(decode_any((await queue.get()).data))
    return received


async def test_an_agent_gets_its_streams_on_its_inbox_and_its_own_chunk_subject(router, login, subjects):
    _, router_refusals = router
    cto, cto_refusals = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")
    inbox, own_chunks, answers = asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
    reply = cto.new_inbox()
    await cto.subscribe(reply, cb=inbox.put)
    await cto.subscribe(subjects.llm_chunk("cto_agent"), cb=own_chunks.put)
    await cto.subscribe(subjects.llm_response("cto_agent"), cb=answers.put)
    await cto.subscribe(subjects.llm_chunk("backend_agent"))
    await sync_subscriptions(cto)
    await cto_refusals.wait_for(f'subscription to "{subjects.llm_chunk("backend_agent")}"')

    await cto.publish(subjects.llm_request, streamed("cto_agent", "perm-stream-1"), reply=reply)
    with_reply = await until_answer(inbox)
    await cto.publish(subjects.llm_request, streamed("cto_agent", "perm-stream-2"))
    answer = decode_any((await asyncio.wait_for(answers.get(), 10)).data)
    while answer.request_id != "perm-stream-2":
        answer = decode_any((await asyncio.wait_for(answers.get(), 10)).data)

    assert [type(d) for d in with_reply[:-1]] == [sig.LlmChunk] * (len(with_reply) - 1) and len(with_reply) > 1
    assert with_reply[-1].status == "ok" and with_reply[-1].streamed.chunks == len(with_reply) - 1
    assert answer.status == "ok" and answer.streamed.chunks >= 1
    chunks = [decode_any((await asyncio.wait_for(own_chunks.get(), 10)).data) for _ in range(answer.streamed.chunks)]
    assert [c.seq for c in chunks] == list(range(answer.streamed.chunks))
    assert router_refusals.seen == []
