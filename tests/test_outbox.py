"""A signal too large for the bus is never dropped silently (fast: in-memory bus, mock adapter)."""

from __future__ import annotations

import asyncio

import pytest

import signals as sig
from router_agent.outbox import Outbox
from router_agent.state import Metrics
from tests.conftest import Collector
from tests.fast import fast_fixture  # noqa: F401 - the `fast` fixture
from tests.membus import MemoryNats


async def test_an_answer_too_large_for_the_bus_reaches_the_caller_as_a_typed_error(fast):
    bus = MemoryNats(max_payload=64 * 1024)
    f = await fast.start(bus=bus)
    f.mock.script(("openai", "gpt-4-turbo"), content="x" * (100 * 1024))
    stream = await f.client.collect(f.subjects.llm_response("tester"))
    request = f.client.new_request(model="gpt-4-turbo")
    response = await f.client.ask(request)
    assert response.status == "error"
    assert response.error.code == "payload_too_large" and "the bus allows 65536" in response.error.message
    assert response.cost_usd > 0  # what the provider billed is still reported
    copy = await stream.wait_for(lambda r: r.request_id == request.request_id)
    assert copy.error.code == "payload_too_large"
    m = f.agent.state.metrics
    assert m.oversized_signals == 1  # one answer, replaced once, sent to the reply and the stream
    assert (m.completed, m.failed, m.errors_by_code) == (0, 1, {"payload_too_large": 1})


async def test_any_other_signal_too_large_is_reported_on_router_error_not_sent():
    bus = MemoryNats(max_payload=2048)
    agent_nc, observer = bus.connect("agent"), bus.connect("observer")
    errors, reports = Collector(), Collector()
    await observer.subscribe("router_error", cb=errors.on_message)
    await observer.subscribe("cost_report", cb=reports.on_message)
    metrics = Metrics()
    outbox = Outbox(agent_nc, sig.EventFactory("test"), sig.Subjects(), metrics)
    lines = {f"agent-{i:04d}": sig.CostLine(requests=1) for i in range(200)}
    await outbox.publish("cost_report", "cost_report",
                         sig.CostReport(instance_id="i", since="2026-01-01T00:00:00Z", total=sig.CostLine(), by_agent=lines))
    error = await errors.wait_for(lambda e: True)
    assert error.subject == "cost_report" and error.error.code == "payload_too_large"
    assert metrics.oversized_signals == 1
    await observer.flush()
    assert reports.items == []


async def test_a_decision_lists_a_bounded_number_of_rejections_and_counts_the_rest(fast):
    from signals.types import MAX_REJECTIONS_LISTED

    f = await fast.start()
    decisions = await f.client.collect(f.subjects.routing_decision("tester"))
    for i in range(40):  # 40 providers of one model name, each too small for the prompt
        answer = await f.client.control("provider_register", sig.ProviderRegister(
            provider=f"crowd{i}", base_url="http://127.0.0.1:9/v1",
            models=[sig.ModelSpec(name="crowded", model_id=f"c{i}", context_window=1)]))
        assert answer.accepted, answer.errors
    request = f.client.new_request(model="crowded")
    response = await f.client.ask(request)
    assert response.error.code == "no_candidates"
    decision = await decisions.wait_for(lambda d: d.request_id == request.request_id)
    assert len(decision.rejected) == MAX_REJECTIONS_LISTED
    assert decision.rejected_omitted == 40 - MAX_REJECTIONS_LISTED
    assert {r.constraint for r in decision.rejected} == {"context_window"}


async def test_an_answer_goes_to_the_reply_then_its_copy_even_if_cancelled_in_between():
    """The reply is queued first (its write is not held up by the copy); a task cancelled in the
    turn between them (a shutdown) still publishes the copy to ``llm_response.<agent>``."""
    bus = MemoryNats()
    agent_nc, observer = bus.connect("agent"), bus.connect("observer")
    seen = Collector()
    await observer.subscribe("_INBOX.t.1", cb=seen.on_message)
    await observer.subscribe("llm_response.tester", cb=seen.on_message)
    replied = asyncio.Event()
    publish = agent_nc.publish

    async def publish_and_tell(subject: str, payload: bytes = b"", reply: str = "", headers=None) -> None:
        await publish(subject, payload, reply=reply, headers=headers)  # observes; the real publish runs
        if subject == "_INBOX.t.1":
            replied.set()

    agent_nc.publish = publish_and_tell
    outbox = Outbox(agent_nc, sig.EventFactory("test"), sig.Subjects(), Metrics())
    answer = sig.LlmResponse(request_id="r1", agent_id="tester", status="ok")
    _, payload = outbox.prepare_answer(answer)
    sending = asyncio.ensure_future(outbox.send_answer("tester", payload, "_INBOX.t.1", None))
    await replied.wait()  # this test runs again only once the task has given up the loop after the reply
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await seen.wait_for(lambda r: True)
    await observer.flush()
    assert [subject for subject, _, _ in seen.items] == ["_INBOX.t.1", "llm_response.tester"]
