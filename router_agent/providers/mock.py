"""A scriptable provider adapter, for fast tests of everything above the providers.

``MockAdapter`` speaks the adapter protocol (``complete`` and ``probe``) without a network:
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
    ...
    await adapter.wait_for_calls(2)
    adapter.release_hangs()
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from router_agent.providers.base import Completion, ProviderError

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
    """Wait until ``release_hangs()``, then fail as a dropped connection."""
    content: str | None = None
    """``None``: ``[mock <model_id>] <last user message, 40 chars>``."""
    input_tokens: int = 10
    output_tokens: int = 5
    finish_reason: str = "stop"


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


def _completion(content: str, finish_reason: str, input_tokens: int, output_tokens: int) -> Completion:
    """Build a ``Completion`` whether or not it still has its old ``model`` field."""
    extra: dict[str, Any] = {"model": ""} if "model" in Completion.__dataclass_fields__ else {}
    return Completion(
        content=content,
        finish_reason=finish_reason,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        **extra,
    )


def _copy_error(error: ProviderError) -> ProviderError:
    """A fresh exception per raise: one instance raised twice would pile up tracebacks."""
    return ProviderError(error.code, error.message, error.retryable, error.status)


def _last_user_text(request: LlmRequest) -> str:
    messages = list(request.messages)
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


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

    async def complete(self, request: LlmRequest, deployment: Any, api_key: str | None) -> Completion:
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
        release = self._release  # a hang waits for the release current when it started
        self.calls.append(call)
        self.in_flight += 1
        self._wake_call_waiters()
        try:
            if behaviour.latency_s > 0:
                await asyncio.sleep(behaviour.latency_s)
            if behaviour.hang:
                await release.wait()
                raise ProviderError("provider_error", "cannot reach provider: mock connection dropped", True)
            if behaviour.error is not None:
                raise _copy_error(behaviour.error)
            content = behaviour.content
            if content is None:
                content = f"[mock {deployment.model_id}] {_last_user_text(request)[:40]}"
            completion = _completion(content, behaviour.finish_reason, behaviour.input_tokens, behaviour.output_tokens)
        except ProviderError as exc:
            call.outcome, call.error = "error", exc
            raise
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            raise
        finally:
            call.finished_at = time.monotonic()
            self.in_flight -= 1
        call.outcome = "ok"
        return completion

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
