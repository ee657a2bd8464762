"""A scriptable provider adapter, for fast tests of everything above the providers.

``MockAdapter`` speaks the adapter protocol (``complete``, ``stream`` and ``probe``) without a network:
each deployment answers as it has been scripted -- after a latency, with an error, by
hanging until released, or with given content and token counts -- and every call is
recorded, so a test of routing, retries, breakers or shutdown can script the providers,
drive the agent and then assert on what was called, in milliseconds.

Which behaviour a call gets: the script for the ``(provider, model)`` key, else for the
deployment's ``model_id``, else for its provider's name, else the default. A script may be
a list of behaviours, played one per call, the last one repeating (a provider that fails
twice and then recovers).

    adapter = MockAdapter()
    adapter.script("gpt-4o-mini", latency_s=0.05)
    adapter.script("openai", error=ProviderError("rate_limited", "429", retryable=True))
    adapter.script(("local", "llama"), [Behaviour(hang=True), Behaviour()])
    adapter.script("claude", chunks=["Hel", "lo"], fail_after_chunks=1)  # a stream cut mid-way
    ...
    await adapter.wait_for_calls(2)
    adapter.release_hangs()
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from router_agent.providers.base import (
    Completion,
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from signals import TextPart, ToolCall, Usage

if TYPE_CHECKING:
    from signals import LlmRequest

__all__ = ["Behaviour", "Call", "MockAdapter", "ScriptKey"]

ScriptKey = str | tuple[str, str]
"""``(provider, model)``, a provider's ``model_id``, or a provider name."""

Outcome = Literal["pending", "ok", "error", "cancelled"]


@dataclass(slots=True)
class Behaviour:
    """How one call answers. ``latency_s`` comes first, then hang, error or completion."""

    latency_s: float = 0.0
    error: ProviderError | None = None
    hang: bool = False
    """Wait until ``release_hangs()``, then fail as a dropped connection (``connection_error``)."""
    content: str | None = None
    """``None``: ``[mock <model_id>] <last user message, 40 chars>``."""
    input_tokens: int = 10
    output_tokens: int = 5
    finish_reason: str = "stop"
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Tool calls in the answer (streamed as one fragment each, after the text)."""
    chunks: list[str] | None = None
    """How ``stream`` cuts the content (``None``: ``CHUNK_CHARS`` characters a chunk)."""
    fail_after_chunks: int | None = None
    """``stream`` only: raise ``error`` (or a dropped connection) after this many text chunks."""
    chunk_interval_s: float = 0.0
    """``stream`` only: the wait before each chunk after the first."""
    usage_estimated: bool = False


@dataclass(slots=True)
class Call:
    """One ``complete`` call, as the adapter saw it."""

    provider: str
    model: str
    model_id: str
    request_id: str
    api_key: str | None
    started_at: float
    """``time.monotonic()`` when the call started."""
    outcome: Outcome = "pending"
    finished_at: float | None = None
    error: ProviderError | None = None
    """The error the call raised (``outcome == "error"``)."""
    request: LlmRequest | None = field(default=None, repr=False)


CHUNK_CHARS = 8
"""Characters per streamed chunk when a behaviour gives no ``chunks``."""


def _dropped() -> ProviderError:
    return ProviderError("connection_error", "cannot reach provider: mock connection dropped", True)


def _last_user_text(request: LlmRequest) -> str:
    messages = list(request.messages)
    chosen = next((m for m in reversed(messages) if m.role == "user"), messages[-1] if messages else None)
    content = chosen.content if chosen is not None else ""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(p.text for p in content if isinstance(p, TextPart))


class MockAdapter:
    """An adapter whose deployments answer as scripted; every call is recorded in ``calls``."""

    def __init__(self, default: Behaviour | None = None):
        self.default = default or Behaviour()
        self.probe_result: tuple[bool, str, bool] = (True, "ok", True)
        self.calls: list[Call] = []
        self.probes: list[tuple[str, str | None]] = []
        self.in_flight = 0
        self._scripts: dict[ScriptKey, list[Behaviour]] = {}
        self._call_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._release = asyncio.Event()

    def script(
        self,
        key: ScriptKey,
        behaviour: Behaviour | Sequence[Behaviour] | None = None,
        **fields: Any,
    ) -> None:
        """Script the calls matching ``key``; replaces that key's earlier script.

        ``fields`` build a ``Behaviour`` (from the defaults, not from ``self.default``),
        or override fields of each given behaviour.
        """
        if behaviour is None:
            behaviours = [Behaviour(**fields)]
        elif isinstance(behaviour, Behaviour):
            behaviours = [dataclasses.replace(behaviour, **fields)]
        else:
            behaviours = [dataclasses.replace(b, **fields) for b in behaviour]
            if not behaviours:
                raise ValueError("script needs at least one behaviour")
        self._scripts[key] = behaviours

    def unscript(self, key: ScriptKey) -> None:
        """Back to the next key in the lookup order (ultimately the default)."""
        self._scripts.pop(key, None)

    def behaviour_for(self, deployment: Any) -> Behaviour:
        """The behaviour the next call to ``deployment`` gets (a list script advances)."""
        for key in ((deployment.provider, deployment.model), deployment.model_id, deployment.provider):
            behaviours = self._scripts.get(key)
            if behaviours is not None:
                return behaviours.pop(0) if len(behaviours) > 1 else behaviours[0]
        return self.default

    def _start(self, request: LlmRequest, deployment: Any, api_key: str | None) -> tuple[Behaviour, Call, asyncio.Event]:
        behaviour = self.behaviour_for(deployment)
        call = Call(
            provider=deployment.provider,
            model=deployment.model,
            model_id=deployment.model_id,
            request_id=request.request_id,
            api_key=api_key,
            started_at=time.monotonic(),
            request=request,
        )
        self.calls.append(call)
        self.in_flight += 1
        self._wake_call_waiters()
        return behaviour, call, self._release  # a hang waits for the release current when it started

    async def _before_answer(self, behaviour: Behaviour, release: asyncio.Event, streaming: bool) -> None:
        if behaviour.latency_s > 0:
            await asyncio.sleep(behaviour.latency_s)
        if behaviour.hang:
            await release.wait()
            raise _dropped()
        if behaviour.error is not None and not (streaming and behaviour.fail_after_chunks is not None):
            raise behaviour.error.copy()

    def _answer(self, behaviour: Behaviour, deployment: Any, request: LlmRequest) -> Completion:
        content = behaviour.content
        if content is None:
            content = f"[mock {deployment.model_id}] {_last_user_text(request)[:40]}"
        return Completion(
            content=content, finish_reason=behaviour.finish_reason, input_tokens=behaviour.input_tokens,
            output_tokens=behaviour.output_tokens, tool_calls=list(behaviour.tool_calls),
            usage_estimated=behaviour.usage_estimated,
        )

    def _done(self, call: Call, outcome: Outcome, error: ProviderError | None = None) -> None:
        if call.finished_at is None:
            call.outcome, call.error = outcome, error
            call.finished_at = time.monotonic()
            self.in_flight -= 1

    async def complete(self, request: LlmRequest, deployment: Any, api_key: str | None) -> Completion:
        behaviour, call, release = self._start(request, deployment, api_key)
        try:
            await self._before_answer(behaviour, release, streaming=False)
            completion = self._answer(behaviour, deployment, request)
        except ProviderError as exc:
            self._done(call, "error", exc)
            raise
        except BaseException:
            self._done(call, "cancelled")
            raise
        self._done(call, "ok")
        return completion

    async def stream(self, request: LlmRequest, deployment: Any, api_key: str | None) -> AsyncIterator[StreamEvent]:
        """The scripted answer as events: text chunks, then one fragment per tool call, then
        the end (a scripted ``fail_after_chunks`` raises instead, after that many chunks)."""
        behaviour, call, release = self._start(request, deployment, api_key)
        try:
            await self._before_answer(behaviour, release, streaming=True)
            completion = self._answer(behaviour, deployment, request)
            text = completion.content
            chunks = behaviour.chunks if behaviour.chunks is not None else [
                text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)
            ]
            for i, chunk in enumerate(chunks):
                if i == behaviour.fail_after_chunks:
                    raise behaviour.error.copy() if behaviour.error is not None else _dropped()
                if i and behaviour.chunk_interval_s > 0:
                    await asyncio.sleep(behaviour.chunk_interval_s)
                yield TextDelta(chunk)
            if behaviour.fail_after_chunks is not None and behaviour.fail_after_chunks >= len(chunks):
                raise behaviour.error.copy() if behaviour.error is not None else _dropped()
            for index, tool_call in enumerate(completion.tool_calls):
                yield ToolCallDelta(index, tool_call.id, tool_call.function.name, tool_call.function.arguments)
            usage = Usage(input_tokens=completion.input_tokens, output_tokens=completion.output_tokens,
                          estimated=completion.usage_estimated)
            self._done(call, "ok")  # a consumer may stop iterating once it has the end
            yield StreamEnd(completion.finish_reason, usage)
        except ProviderError as exc:
            self._done(call, "error", exc)
            raise
        except BaseException:  # cancelled, or the consumer closed the stream early
            self._done(call, "cancelled")
            raise

    async def probe(self, base_url: str, api_key: str | None) -> tuple[bool, str, bool]:
        self.probes.append((base_url, api_key))
        return self.probe_result

    async def wait_for_calls(self, n: int) -> None:
        """Return once at least ``n`` calls have started (bound it with ``asyncio.timeout``)."""
        if len(self.calls) >= n:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._call_waiters.append((n, future))
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
            self._call_waiters = [(k, f) for k, f in self._call_waiters if f is not future]

    def release_hangs(self) -> None:
        """Let every call hanging now fail with a retryable connection error; later hangs hang."""
        self._release.set()
        self._release = asyncio.Event()

    def _wake_call_waiters(self) -> None:
        count = len(self.calls)
        for n, future in self._call_waiters:
            if count >= n and not future.done():
                future.set_result(None)
