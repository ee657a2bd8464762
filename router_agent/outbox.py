"""Everything the agent publishes goes out here: encoding, trace headers, reply + stream fan-out.

Writes no state. A publish that fails because the bus is gone is logged and dropped: the
actor must not die with its connection (nats-py buffers while it reconnects).

| method         | goes to                                                   |
|----------------|-----------------------------------------------------------|
| answer()       | the reply subject (if any) and ``llm_response.<agent>``   |
| ack()          | the reply subject (if any) and ``provider_registered.<provider>`` |
| router_error() | the reply subject, else ``router_error``                  |
| publish()      | one subject (decisions, metrics, cost reports)            |
"""

from __future__ import annotations

import logging

import nats.errors

from signals import EventFactory, LlmResponse, ProviderRegistered, RouterError, Subjects

log = logging.getLogger("router_agent")


class Outbox:
    def __init__(self, nc, events: EventFactory, subjects: Subjects):
        self.nc = nc
        self.events = events
        self.subjects = subjects

    async def answer(self, response: LlmResponse, reply: str, traceparent: str | None) -> None:
        """The one terminal answer to an llm_request."""
        payload = self.events.encode("llm_response", response)
        headers = {"traceparent": traceparent} if traceparent else None
        if reply:
            await self.send(reply, payload, headers)
        await self.send(self.subjects.llm_response(response.agent_id or "_invalid"), payload, headers)

    async def ack(self, reply: str, answer: ProviderRegistered) -> None:
        payload = self.events.encode("provider_registered", answer)
        if reply:
            await self.send(reply, payload, None)
        await self.send(self.subjects.provider_registered(answer.provider or "_invalid"), payload, None)

    async def router_error(self, reply: str, error: RouterError) -> None:
        await self.send(reply or self.subjects.router_error, self.events.encode("router_error", error), None)

    async def publish(self, subject: str, signal: str, data: object, traceparent: str | None = None) -> None:
        headers = {"traceparent": traceparent} if traceparent else None
        await self.send(subject, self.events.encode(signal, data), headers)

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self.nc.publish(subject, payload, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("publish to %s failed: %s", subject, type(exc).__name__)
