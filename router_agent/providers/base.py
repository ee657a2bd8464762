"""What every provider adapter promises, and the pieces they share.

An adapter translates the canonical request (``signals.LlmRequest``, the OpenAI chat shape)
to one vendor's wire format and the answer back, for one call (``complete``) or a stream
(``stream``), and classifies every failure as a typed ``ProviderError`` (``errors.py``).

Streaming: ``stream(...)`` is an async iterator of small events, in the order the vendor
sent them:

- ``TextDelta(text)``: more assistant text;
- ``ToolCallDelta(index, id, name, arguments)``: a fragment of tool call ``index`` (0, 1, ...
  in the order the calls appear); ``id`` and ``name`` come with its first fragment,
  ``arguments`` is the next piece of its JSON text (concatenate them);
- ``StreamEnd(finish_reason, usage)``: always last, exactly once, when the vendor finished.
  ``usage`` is the vendor's own, or estimated (``usage.estimated``) when it sent none.

A failure raises ``ProviderError``, before the first event or after some: the caller knows
how much it relayed. A stream that stops without the vendor's end raises too (never a
silent short answer). ``StreamAssembler`` turns the events into the ``Completion`` that
``complete`` would have returned.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from router_agent.core.cost import estimate_input_tokens
from router_agent.core.model import Deployment
from router_agent.http import HttpClient
from router_agent.providers.errors import (
    ProviderError,
    redirect_error,
    status_error,
    unreachable_error,
    unreadable_error,
)
from signals import FunctionCall, LlmRequest, ToolCall, Usage

__all__ = [
    "Adapter",
    "Completion",
    "ProviderError",
    "StreamAssembler",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "estimated_usage",
    "post_json",
    "redirect_error",
    "status_error",
    "stream_events",
    "unreachable_error",
    "unreadable_error",
]


@dataclass(slots=True)
class Completion:
    """One finished answer, in the canonical shape (see ``signals.Usage`` for the counts)."""

    content: str
    finish_reason: str
    """``stop``, ``length``, ``tool_calls``, ``content_filter`` or ``error``."""
    input_tokens: int
    output_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            reasoning_tokens=self.reasoning_tokens,
            estimated=self.usage_estimated,
        )


@dataclass(slots=True, frozen=True)
class TextDelta:
    text: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True, frozen=True)
class StreamEnd:
    finish_reason: str
    usage: Usage


StreamEvent = TextDelta | ToolCallDelta | StreamEnd


class Adapter(Protocol):
    async def complete(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> Completion: ...

    def stream(self, request: LlmRequest, deployment: Deployment, api_key: str | None) -> AsyncIterator[StreamEvent]:
        """The answer as it is generated; see the module's docstring."""
        ...

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        """(reachable, detail, emulated) for a provider endpoint."""
        ...


class StreamAssembler:
    """Collects stream events into the message they spell; ``completion()`` once ended."""

    __slots__ = ("_calls", "_text", "chars", "end")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self.end: StreamEnd | None = None
        self.chars = 0
        """Characters of text and tool arguments received so far (what was delivered)."""

    def add(self, event: StreamEvent) -> None:
        if type(event) is TextDelta:
            self._text.append(event.text)
            self.chars += len(event.text)
        elif type(event) is ToolCallDelta:
            call = self._calls.setdefault(event.index, ["", ""])
            if event.id:
                call[0] = event.id
            if event.name:
                call[1] = event.name
            if event.arguments:
                call.append(event.arguments)
                self.chars += len(event.arguments)
        elif type(event) is StreamEnd:
            self.end = event

    @property
    def text(self) -> str:
        return "".join(self._text)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=call[0], function=FunctionCall(name=call[1], arguments="".join(call[2:]) or "{}"))
            for _, call in sorted(self._calls.items())
        ]

    def completion(self) -> Completion:
        if self.end is None:
            raise ValueError("the stream has not ended")
        u = self.end.usage
        return Completion(
            content=self.text, finish_reason=self.end.finish_reason,
            input_tokens=u.input_tokens, output_tokens=u.output_tokens, tool_calls=self.tool_calls(),
            cached_input_tokens=u.cached_input_tokens, cache_creation_input_tokens=u.cache_creation_input_tokens,
            reasoning_tokens=u.reasoning_tokens, usage_estimated=u.estimated,
        )


def estimated_usage(request: LlmRequest, output_chars: int) -> Usage:
    """Usage when the vendor reported none: a streamed answer is never counted as free."""
    return Usage(
        input_tokens=estimate_input_tokens(request),
        output_tokens=(output_chars + 3) // 4,
        estimated=True,
    )


# --------------------------------------------------------------------------- HTTP

MAX_LINE_BYTES = 16 * 1024 * 1024
"""A stream line (an SSE event, an NDJSON object) longer than this fails the call: an
upstream that never sends a newline must not grow the buffer without end."""


async def post_json(http: HttpClient, url: str, body: bytes, headers: dict[str, str], api_key: str | None) -> bytes:
    """POST, and the body of a 200 answer; anything else raises a typed ``ProviderError``."""
    try:
        async with http.posting(url, body, headers) as response:
            status, data = response.status, await response.read()
            if status != 200:
                raise status_error(status, data, api_key, response.headers)
    except OSError as exc:  # TimeoutError and the client's ResponseError are OSErrors
        raise unreachable_error(exc) from None
    return data


class FrameParser(Protocol):
    """What ``stream_events`` drives: a vendor's stream parser (``done``, when it has one,
    says the vendor has finished and nothing after matters)."""

    def feed(self, frame: bytes) -> list[StreamEvent]: ...

    def end(self) -> StreamEvent: ...


async def stream_events(parser: FrameParser, http: HttpClient, url: str, body: bytes, headers: dict[str, str],
                        api_key: str | None, *, sse: bool) -> AsyncGenerator[StreamEvent, None]:
    """Every adapter's stream: POST, cut the answer into lines as they arrive, take each
    frame (a server-sent event's data when ``sse``, else an NDJSON line) and yield the
    parser's events until it says it is done, then its end event.

    One generator from the socket to the event: a layer of generators per step (lines,
    events, data, parsed) cost a resumption each, per token. A non-200 answer, a dropped
    connection or an over-long line raises a typed ``ProviderError``."""
    decoder = SSEDecoder() if sse else None
    feed, has_done = parser.feed, hasattr(parser, "done")
    finished = False  # the vendor said it has finished: the rest is not read
    try:
        async with http.posting(url, body, headers) as response:
            if response.status != 200:
                raise status_error(response.status, await response.read(), api_key, response.headers)
            rest = b""
            async for chunk in response:
                lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
                rest = lines.pop()
                if len(rest) > MAX_LINE_BYTES:
                    raise ProviderError("server_error", "provider sent a stream line too long to read", True)
                for line in lines:
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if decoder is not None:
                        event = decoder.feed(line)
                        if event is None:
                            continue
                        line = event[1]
                    for item in feed(line):
                        yield item
                    if has_done and parser.done:  # type: ignore[attr-defined]
                        finished = True
                        break
                if finished:
                    break
            if not finished:
                # The last line without its line end, and an event without its blank line.
                tail = [rest] if rest else []
                if decoder is not None:
                    events = (decoder.feed(rest) if rest else None, decoder.flush())
                    tail = [event[1] for event in events if event is not None]
                for frame in tail:
                    for item in feed(frame):
                        yield item
                    if has_done and parser.done:  # type: ignore[attr-defined]
                        break
    except OSError as exc:  # TimeoutError and the client's ResponseError are OSErrors
        raise unreachable_error(exc) from None
    yield parser.end()


class SSEDecoder:
    """Server-sent events from lines: ``feed(line)`` returns ``(event, data)`` when a blank
    line ends an event. ``event`` is ``""`` when the server named none."""

    __slots__ = ("_data", "_event")

    def __init__(self) -> None:
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, line: bytes) -> tuple[str, bytes] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            event, self._event, self._data = self._event, "", []
            return event, data
        if line[0] == 0x3A:  # ":" a comment (keep-alive)
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def flush(self) -> tuple[str, bytes] | None:
        """An event the stream ended without its blank line (some servers do that)."""
        return self.feed(b"")


def cut_short() -> ProviderError:
    """The stream stopped before the vendor said it had finished."""
    return ProviderError("connection_error", "the provider's stream ended before the answer was complete", True)
