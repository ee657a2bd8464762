"""The fast half of the suite: the actor on the in-memory bus with the scriptable mock adapter.

The same agent code runs as in the integration tests; only its two edges are swapped:
``tests.membus.MemoryNats`` stands in for the nats-server, ``MockAdapter`` for HTTP to a
provider. A scenario therefore runs in milliseconds and every outcome is scripted, so a
test says exactly which deployment fails, hangs or is slow.

Two ways in, both stopping what they started:

    async with fast_agent(make_config, {"router": {...}}, clock=fake) as fast:
        response = await fast.client.ask(fast.client.new_request(model="gpt-4-turbo"))

or, in a test module, ``from tests.fast import fast_fixture`` (the ``fast`` fixture: a ``FastRouter``
starter whose agents are stopped at the end of the test):

    async def test_x(fast):
        f = await fast.start({"router": {"shutdown_grace_s": 0}})

Configured providers are emulated (mode ``always``) and so are called through their own
API's adapter: the mock stands in for every one. Runtime providers registered with
``register()`` go through the real ``provider_register`` path (endpoint policy, DNS of a
literal address, the mock's probe) and use the mock too, unless other adapters are given.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.providers import ADAPTERS
from router_agent.providers.base import Adapter
from router_agent.providers.mock import MockAdapter
from tests.conftest import Client, Collector, deep_merge
from tests.membus import MemoryConnection, MemoryNats

MOCK_URL = "http://mock.invalid/v1"
"""The emulator URL the agent is given: it enables emulated providers; the mock ignores it."""

RUNTIME_URL = "http://127.0.0.1:9/v1"
"""Base URL for runtime providers: a literal address (registration resolves the host, and
the policy allows loopback); nothing is ever sent there, the mock answers."""

FAST_OVERRIDES: dict[str, Any] = {
    "emulation": {"mode": "always"},
    # The periodic reports are not what these tests look at: keep them out of the way.
    "router": {"metrics_interval_s": 60, "cost_report_interval_s": 60,
               "budgets": {"store": "memory"}},  # no JetStream on the in-memory bus
}

REPLY_PREFIX = "_INBOX.fast"


class FakeClock:
    """A monotonic clock that moves only when told to (``agent(clock=...)``)."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FastAgent:
    """One agent on a ``MemoryNats``, with a client connection and the mock behind it."""

    def __init__(self, agent: RouterAgent, bus: MemoryNats, client_nc: MemoryConnection, mock: MockAdapter):
        self.agent = agent
        self.bus = bus
        self.client_nc = client_nc
        self.client = Client(client_nc, agent.subjects)  # type: ignore[arg-type]  # duck-typed connection
        self.mock = mock
        self.subjects = agent.subjects
        self._replies: Collector | None = None
        self._reply_ids = itertools.count(1)

    @property
    def state(self):
        return self.agent.state

    @property
    def metrics(self):
        return self.agent.state.metrics

    async def register(self, provider: str, *models: str | tuple[str, str], **fields: Any) -> sig.ProviderRegistered:
        """``provider_register`` over the bus; models are names or (name, model_id) pairs.
        Returns the answer (the caller asserts on it)."""
        specs = []
        for model in models:
            name, model_id = model if isinstance(model, tuple) else (model, model)
            specs.append(sig.ModelSpec(name=name, model_id=model_id, capabilities=["general_reasoning"],
                                       cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002)))
        fields.setdefault("base_url", RUNTIME_URL)
        return await self.client.control(
            "provider_register", sig.ProviderRegister(provider=provider, models=specs, **fields)
        )

    async def replies(self) -> Collector:
        """A collector of every answer sent to a reply subject made by ``send``."""
        if self._replies is None:
            self._replies = await self.client.collect(f"{REPLY_PREFIX}.>")
        return self._replies

    async def send(self, request: sig.LlmRequest) -> str:
        """Publish a request with its own reply subject; return that subject. When this
        returns, the request is queued at the agent's subscription (the memory bus enqueues
        synchronously), so a test knows it was sent before, say, a stop begins."""
        await self.replies()
        reply = f"{REPLY_PREFIX}.{next(self._reply_ids)}"
        await self.client_nc.publish(self.subjects.llm_request, sig.encode_event("llm_request", request), reply=reply)
        return reply

    async def reply_to(self, reply: str) -> sig.LlmResponse:
        """The answer that reached ``reply`` (waits for it)."""
        collector = await self.replies()
        await collector.wait_for(lambda _: any(subject == reply for subject, _, _ in collector.items), timeout=5)
        return next(data for subject, data, _ in collector.items if subject == reply)

    async def settle(self, collector: Collector, subject: str | None = None) -> None:
        """Return once ``collector`` has processed every message published so far: a marker
        published now on a subject it hears (default ``llm_response.settle``) is delivered
        after all of them (one subscription delivers in order); the marker is then removed."""
        marker = sig.LlmResponse(request_id="settle-marker", agent_id="settle", status="ok")
        subject = subject or self.subjects.llm_response("settle")
        await self.client_nc.publish(subject, sig.encode_event("llm_response", marker))
        await collector.wait_for(lambda d: isinstance(d, sig.LlmResponse) and d.request_id == "settle-marker",
                                 timeout=5)
        collector.items[:] = [item for item in collector.items if item[0] != subject]

    async def stop(self) -> None:
        await self.agent.stop()
        await self.agent.nc.close()
        await self.client_nc.close()


async def start_fast_agent(
    make_config: Callable[..., Any],
    overrides: dict[str, Any] | None = None,
    *,
    mock: MockAdapter | None = None,
    adapters: Mapping[str, Adapter] | None = None,
    bus: MemoryNats | None = None,
    **agent_kwargs: Any,
) -> FastAgent:
    """Build and start an agent on a fresh ``MemoryNats`` (or ``bus``); the caller stops it."""
    mock = mock or MockAdapter()
    config = make_config(deep_merge(FAST_OVERRIDES, overrides or {}))
    bus = bus or MemoryNats()
    agent_nc = bus.connect("router-agent-fast")
    client_nc = bus.connect("fast-client")
    agent_kwargs.setdefault("emulator_url", MOCK_URL)
    agent = RouterAgent(config, agent_nc, adapters=adapters if adapters is not None else dict.fromkeys(ADAPTERS, mock),
                        **agent_kwargs)
    await agent.start()
    return FastAgent(agent, bus, client_nc, mock)


@contextlib.asynccontextmanager
async def fast_agent(
    make_config: Callable[..., Any],
    overrides: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[FastAgent]:
    """``start_fast_agent`` as a context manager: the agent is stopped on the way out."""
    started = await start_fast_agent(make_config, overrides, **kwargs)
    try:
        yield started
    finally:
        await started.stop()


class FastRouter:
    """Starts fast agents in the test's loop; stops them all at the end (the ``fast`` fixture)."""

    def __init__(self, make_config: Callable[..., Any]):
        self.make_config = make_config
        self.started: list[FastAgent] = []

    async def start(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> FastAgent:
        started = await start_fast_agent(self.make_config, overrides, **kwargs)
        self.started.append(started)
        return started

    async def stop_all(self) -> None:
        for started in self.started:
            await started.stop()


@pytest.fixture(name="fast")
async def fast_fixture(make_config) -> AsyncIterator[FastRouter]:
    """``fast``: start agents with ``await fast.start(overrides, **kwargs)``; all stopped at the end.
    Import ``fast_fixture`` into a test module to use it."""
    router = FastRouter(make_config)
    try:
        yield router
    finally:
        await router.stop_all()
