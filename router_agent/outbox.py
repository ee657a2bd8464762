"""Everything the agent publishes goes out here: encoding, trace headers, reply + stream fan-out.

Writes ``metrics.oversized_signals`` only. A publish that fails because
the bus is gone is logged and dropped: the actor must not die with its connection (nats-py
buffers while it reconnects). A signal larger than the server's ``max_payload`` is never
dropped silently: an answer is replaced by a small ``payload_too_large`` error answer to the
same caller, and anything else is reported on ``router_error`` (and logged, and counted).

| method         | goes to                                                   |
|----------------|-----------------------------------------------------------|
| answer()       | the reply subject (if any) and ``llm_response.<agent>``   |
| ack()          | the reply subject (if any) and ``provider_registered.<provider>`` |
| router_error() | the reply subject, else ``router_error``                  |
| publish()      | one subject (decisions, metrics, cost reports, and a streamed request's ``llm_chunk``: to its reply subject, else ``llm_chunk.<agent>``) |

``invalid_request_answer`` builds the error answer to an ``llm_request`` that did not decode.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats.errors

from router_agent.routes import addressable_id
from router_agent.state import Metrics
from signals import (
    Attempt,
    ErrorCode,
    ErrorInfo,
    EventFactory,
    LlmRequest,
    LlmResponse,
    ProviderRegistered,
    RouterError,
    SignalError,
    Subjects,
)

log = logging.getLogger("router_agent")


class Outbox:
    def __init__(self, nc, events: EventFactory, subjects: Subjects, metrics: Metrics, telemetry: Any = None):
        self.nc = nc
        self.events = events
        self.subjects = subjects
        self.metrics = metrics
        self.telemetry = telemetry
        self._traced = telemetry is not None and telemetry.traces_on
        """A publish carrying a trace context gets a PRODUCER span (``telemetry.py``)."""

    def prepare_answer(self, response: LlmResponse) -> tuple[LlmResponse, bytes]:
        """Encode the answer; one too large for the bus becomes a small typed error answer.
        Returns what will actually be sent, so the caller counts that outcome."""
        payload = self.events.encode("llm_response", response)
        limit = self._limit()
        if len(payload) <= limit:
            return response, payload
        self._count_oversized("llm_response", response.agent_id, len(payload), limit)
        replaced = LlmResponse(
            request_id=response.request_id, agent_id=response.agent_id, status="error",
            model=response.model, provider=response.provider, usage=response.usage,
            cost_usd=response.cost_usd, attempts=response.attempts, warnings=response.warnings,
            error=ErrorInfo(code="payload_too_large", retryable=False,
                            message=f"the answer is {len(payload)} bytes; the bus allows {limit}"),
        )
        return replaced, self.events.encode("llm_response", replaced)

    async def send_answer(self, agent_id: str, payload: bytes, reply: str, traceparent: str | None) -> None:
        """The one terminal answer to an llm_request: to the reply and ``llm_response.<agent>``.

        The caller waiting on the reply goes first: one turn of the loop lets nats-py's flusher
        write it before the copy for ``llm_response.<agent>`` is built and queued (that publish
        would otherwise sit between the answer and its write). The copy goes out even when the
        task is cancelled in that turn."""
        if not reply:
            await self._send_answer_to(self.subjects.llm_response(agent_id), payload, traceparent)  # "": .%
            return
        await self._send_answer_to(reply, payload, traceparent, temporary=True)
        try:
            await asyncio.sleep(0)
        finally:
            await self._send_answer_to(self.subjects.llm_response(agent_id), payload, traceparent)

    async def _send_answer_to(self, subject: str, payload: bytes, traceparent: str | None,
                              temporary: bool = False) -> None:
        if traceparent and self._traced:
            await self._send_traced(subject, "llm_response", payload, traceparent, temporary)
        else:
            await self.send(subject, payload, {"traceparent": traceparent} if traceparent else None)

    async def answer(self, response: LlmResponse, reply: str, traceparent: str | None) -> None:
        """Prepare and send an answer that is not counted as a request (invalid input)."""
        response, payload = self.prepare_answer(response)
        await self.send_answer(response.agent_id, payload, reply, traceparent)

    async def ack(self, reply: str, answer: ProviderRegistered) -> None:
        payload = self.events.encode("provider_registered", answer)
        if reply:
            await self.send(reply, payload, None)
        await self.send(self.subjects.provider_registered(answer.provider), payload, None)

    async def router_error(self, reply: str, error: RouterError) -> None:
        await self.send(reply or self.subjects.router_error, self.events.encode("router_error", error), None)

    async def publish(self, subject: str, signal: str, data: object, traceparent: str | None = None) -> None:
        payload = self.events.encode(signal, data)
        limit = self._limit()
        if len(payload) > limit:
            self._count_oversized(signal, subject, len(payload), limit)
            await self.router_error("", RouterError(subject=subject, error=ErrorInfo(
                code="payload_too_large",
                message=f"a {signal} of {len(payload)} bytes exceeds the bus limit of {limit}; it was not sent",
            )))
            return
        if traceparent and self._traced:
            await self._send_traced(subject, signal, payload, traceparent)
            return
        await self.send(subject, payload, {"traceparent": traceparent} if traceparent else None)

    async def _send_traced(self, subject: str, signal: str, payload: bytes, traceparent: str,
                           temporary: bool = False) -> None:
        span, headers = self.telemetry.producer_start(signal, subject, len(payload), traceparent, temporary)
        try:
            await self.send(subject, payload, headers)
        finally:
            span.end()

    def _limit(self) -> int:
        # The server's max_payload as the connection learned it; headers travel apart from it.
        return getattr(self.nc, "max_payload", 0) or 1_048_576

    def _count_oversized(self, signal: str, where: str, size: int, limit: int) -> None:
        self.metrics.oversized_signals += 1
        log.error("%s for %s is %d bytes, over the bus limit of %d: replaced by an error", signal, where, size, limit)

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self.nc.publish(subject, payload, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("publish to %s failed: %s", subject, type(exc).__name__)


def error_answer(request: LlmRequest, code: ErrorCode, message: str, retryable: bool,
                 attempts: list[Attempt]) -> LlmResponse:
    """An error answer to ``request``, with the attempts made for it."""
    return LlmResponse(request_id=request.request_id, agent_id=request.agent_id, status="error",
                       attempts=attempts, error=ErrorInfo(code=code, message=message, retryable=retryable))


def invalid_request_answer(payload: bytes, exc: SignalError) -> LlmResponse:
    """The error answer to an ``llm_request`` that could not be accepted, addressed with
    whatever ids can still be read from it."""
    partial = _partial(payload) if exc.code != "payload_too_large" else _Partial()
    return LlmResponse(
        request_id=addressable_id(partial.request_id),
        agent_id=addressable_id(partial.agent_id),
        status="error",
        error=ErrorInfo(code=exc.code, message=exc.message, field=exc.field),
    )


class _Partial(msgspec.Struct):
    """What can still be read from an invalid request, to address the error answer."""

    request_id: Any = None
    agent_id: Any = None


class _PartialEvent(msgspec.Struct):
    data: _Partial | None = None


def _partial(payload: bytes) -> _Partial:
    """Never raises: the input was already refused and must still be answered. Besides its
    own errors, msgspec raises RecursionError on deep nesting (also when it only skips a
    field) and UnicodeDecodeError on a string that is not UTF-8 (``signals.envelope``)."""
    try:
        event = msgspec.json.decode(payload, type=_PartialEvent)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _Partial()
    return event.data or _Partial()
