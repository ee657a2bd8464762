"""Streaming through the bus: one streamed request's chunks, relayed in order as they arrive.

Writes nothing in the state: the request shell (``requests.py``) drives a ``StreamRelay``
inside its attempt chain and does the accounting; the relay only publishes ``llm_chunk``.

Theory of operation
-------------------
An attempt's events (``providers.base``: ``TextDelta``, ``ToolCallDelta``, ``StreamEnd``)
are read by ``StreamRelay.attempt`` and collected twice: in a ``StreamAssembler`` (the
terminal ``llm_response`` carries the whole message) and in a pending chunk, which is sent
as one ``llm_chunk`` signal with the next ``seq``:

- the first piece of content is sent at once (time to first token is the provider's plus
  one publish), and the attempt is then *committed*: its deadline moves from the attempt's
  timeout (the provider's ``timeout_ms``, which so bounds the time to first token) to the
  request's, and nothing is retried elsewhere any more, because the caller has content;
- a later piece is sent at once when ``window_s`` (``router.stream_coalesce_ms``) has passed
  since the last chunk, else it waits in the pending chunk; a timer sends the pending chunk
  when the window ends, so a piece never waits longer than the window. Pieces that arrive
  together (several SSE events in one network read) thus travel in one bus message;
- whatever is pending is sent before the attempt returns or fails, so the chunks always
  precede the terminal answer, and ``chunks`` / ``chars`` say exactly what was delivered.

Order: ``flush`` takes the pending pieces, numbers the chunk and hands it to the outbox
without awaiting anything in between, and a publish (nats-py, the memory bus) queues its
message before it first yields. Chunks therefore leave in ``seq`` order, also when the
window's timer sends one from its own task. That task is awaited before the attempt ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from router_agent.core.model import Deployment
from router_agent.outbox import Outbox
from router_agent.providers.base import (
    Completion,
    ProviderError,
    StreamAssembler,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    estimated_usage,
)
from signals import (
    AssistantMessage,
    Attempt,
    ErrorInfo,
    LlmChunk,
    LlmRequest,
    LlmResponse,
    StreamSummary,
    ToolCallFragment,
    Usage,
)

if TYPE_CHECKING:
    from router_agent.attempt import Bound

VERIFIED_NOT_STREAMED = (
    "stream: true not honoured: a quality_assurance rule verifies this request's answer, which comes whole"
)
"""The warning on a streamed request that a rule verifies: no chunks, one final answer."""

MAX_PENDING_CHARS = 32_768
"""A pending chunk is sent when it holds this much, window or not: coalescing saves
per-message cost on small pieces and must not build large messages."""


class StreamRelay:
    """The chunks of one streamed request: numbered, coalesced, counted."""

    __slots__ = (
        "_calls", "_flushing", "_text", "_timer", "agent_id", "assembler", "chars", "clock", "declined",
        "deployment", "first_chunk_at", "next_at", "outbox", "pending_chars", "request", "request_id", "seq",
        "started", "subject", "window_s",
    )

    def __init__(self, outbox: Outbox, request: LlmRequest, subject: str, window_s: float,
                 clock: Callable[[], float], started: float):
        self.outbox = outbox
        self.started = started
        """When the request arrived (``clock`` time)."""
        self.request = request
        self.request_id = request.request_id
        self.agent_id = request.agent_id
        self.subject = subject
        self.window_s = window_s
        self.clock = clock
        self.assembler = StreamAssembler()
        self.seq = 0
        """Chunks sent so far (the next chunk's ``seq``)."""
        self.chars = 0
        """Characters of content and tool arguments sent so far."""
        self.first_chunk_at: float | None = None
        self.next_at = 0.0
        """Before this (``clock`` time), a new piece waits for the window to end."""
        self._text: list[str] = []
        self._calls: list[ToolCallFragment] = []
        self.pending_chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.deployment: Deployment | None = None
        """The deployment of the attempt being relayed (the committed one, once committed)."""
        self.declined = False
        """The request is answered whole after all (a verified request): no summary."""

    @classmethod
    def for_request(cls, outbox: Outbox, request: LlmRequest, reply: str, window_ms: float,
                    clock: Callable[[], float]) -> StreamRelay:
        """Chunks go to the reply subject; without one, to ``llm_chunk.<agent>`` (the answer
        goes to ``llm_response.<agent>``, as for any request)."""
        subject = reply or outbox.subjects.llm_chunk(request.agent_id)
        return cls(outbox, request, subject, window_ms / 1000, clock, clock())

    @property
    def committed(self) -> bool:
        """Content has been sent: the request can no longer fail over."""
        return self.seq > 0

    def summary(self) -> StreamSummary:
        first = 0.0 if self.first_chunk_at is None else round((self.first_chunk_at - self.started) * 1000, 3)
        return StreamSummary(chunks=self.seq, chars=self.chars, first_chunk_ms=first)

    def delivered(self) -> str:
        """What the caller has, in words (for an error answer)."""
        return f"{self.seq} chunk(s) with {self.chars} character(s) were delivered"

    # ------------------------------------------------------------------ one attempt

    async def attempt(self, events: AsyncIterator[StreamEvent], scope: asyncio.Timeout | Bound,
                      deadline: float) -> Completion:
        """Relay one provider stream; the completion it spells once it has ended.

        ``scope`` bounds the attempt; once the first chunk is sent it is moved to
        ``deadline`` (``clock`` time), the request's. A ``ProviderError`` (or the scope's
        timeout) propagates; ``committed`` then tells whether anything was delivered."""
        self.assembler = assembler = StreamAssembler()  # nothing of a failed attempt was sent
        try:
            async for event in events:
                assembler.add(event)
                if type(event) is StreamEnd:
                    break
                if not self._pend(event):
                    continue
                now = self.clock()
                if self.seq == 0:
                    await self.flush(now)
                    loop = asyncio.get_running_loop()
                    scope.reschedule(loop.time() + max(0.0, deadline - now))
                elif now >= self.next_at or self.pending_chars >= MAX_PENDING_CHARS:
                    await self.flush(now)
                elif self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self.next_at - now, self._window_ended)
        finally:
            await _close(events)
            await self.drain()
        if assembler.end is None:  # an adapter must raise instead; never a silent short answer
            raise ProviderError("connection_error", "the provider's stream ended before the answer was complete",
                                True)
        completion = assembler.completion()
        if completion.input_tokens <= 0 or (completion.output_tokens <= 0 and assembler.chars > 0):
            # A streamed answer is never free: the vendor's usage is missing or empty.
            usage = estimated_usage(self.request, assembler.chars)
            completion.input_tokens = max(completion.input_tokens, usage.input_tokens)
            completion.output_tokens = max(completion.output_tokens, usage.output_tokens)
            completion.usage_estimated = True
        return completion

    def _pend(self, event: StreamEvent) -> bool:
        """Add an event's content to the pending chunk; False when it carries none."""
        if type(event) is TextDelta:
            if not event.text:
                return False
            self._text.append(event.text)
            self.pending_chars += len(event.text)
            return True
        assert type(event) is ToolCallDelta
        if not (event.id or event.name or event.arguments):
            return False
        calls = self._calls
        last = calls[-1] if calls else None
        if last is not None and last.index == event.index and not event.id and not event.name:
            last.arguments += event.arguments  # the same call's next piece: one fragment
        else:
            calls.append(ToolCallFragment(index=event.index, id=event.id or "", name=event.name or "",
                                          arguments=event.arguments))
        self.pending_chars += len(event.arguments)
        return True

    # ------------------------------------------------------------------ sending

    async def flush(self, now: float | None = None) -> None:
        """Send the pending chunk, if any, as the next ``seq``."""
        if not self._text and not self._calls:
            return
        if now is None:
            now = self.clock()
        text, calls = self._text, self._calls
        chunk = LlmChunk(request_id=self.request_id, agent_id=self.agent_id, seq=self.seq,
                         content=text[0] if len(text) == 1 else "".join(text), tool_calls=calls)
        self._text, self._calls = [], []
        self.seq += 1
        self.chars += self.pending_chars
        self.pending_chars = 0
        self.next_at = now + self.window_s
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.outbox.publish(self.subject, "llm_chunk", chunk)  # queued before it yields (see above)

    def _window_ended(self) -> None:
        self._timer = None
        # Tasks start in the order they were made: awaiting the latest (drain) awaits them all.
        self._flushing = asyncio.get_running_loop().create_task(self.flush())

    async def drain(self) -> None:
        """Send what is pending (after a timer's send in flight): all chunks precede the answer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        flushing, self._flushing = self._flushing, None
        if flushing is not None and not flushing.done():
            await asyncio.shield(flushing)  # a cancel of the request must not lose a chunk
        await self.flush()


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    """Close the provider's stream (its HTTP response) whether it ended or not."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def cut_answer(relay: StreamRelay, attempts: list[Attempt], usage: Usage, cost: float, emulated: bool,
               stopped: bool = False) -> LlmResponse:
    """The error answer to a stream that ended after its first chunk: the code of what ended
    it (the last attempt's error, ``timeout`` for the request's deadline, ``shutting_down``),
    a message saying what was delivered, and that content in ``message``."""
    last = attempts[-1].error if attempts else None
    if stopped:
        code, retryable, why = "shutting_down", True, "the router stopped"
    elif last is None:
        code, retryable, why = "timeout", True, "the request's deadline passed"
    else:
        code, retryable, why = last.code, last.retryable, last.message
    dep = relay.deployment
    assert dep is not None
    assembler, request = relay.assembler, relay.request
    return LlmResponse(
        request_id=request.request_id,
        agent_id=request.agent_id,
        status="error",
        message=AssistantMessage(content=assembler.text, tool_calls=assembler.tool_calls()),
        model=dep.model,
        provider=dep.provider,
        emulated=emulated,
        finish_reason="error",
        usage=usage,
        cost_usd=round(cost, 10),
        latency_ms=round((relay.clock() - relay.started) * 1000, 3),
        attempts=attempts,
        error=ErrorInfo(code=code, retryable=retryable,
                        message=f"the stream ended early, {relay.delivered()}: {why}"),
    )
