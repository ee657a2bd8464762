"""The bus is the gate: config/nats/permissions.conf on a real nats-server.

The router trusts every provider_register it hears, so who may publish one is decided by
nats-server's permissions. These tests start a nats-server with the shipped file (subjects
given this test's prefix), the router as the ``router`` user (credentials from NATS_USER /
NATS_PASSWORD, as in production), and check each role against it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.bus import BusError, EmbeddedNats, connect, sync_subscriptions
from router_agent.config import NatsConfig
from tests.conftest import decode_any

pytestmark = pytest.mark.integration

PERMISSIONS = Path(__file__).resolve().parent.parent / "config" / "nats" / "permissions.conf"
# Letters, digits, '-' and '_', starting with a letter: what docs/operations.md recommends
# (nats-server parses a variable's value, so "12345" or "a;b" would not stay a password).
PASSWORDS = {
    "NATS_ROUTER_PASSWORD": "pRouter-7f3a_k2",
    "NATS_OPERATOR_PASSWORD": "pOperator-91c_x8",
    "NATS_AGENT_CTO_AGENT_PASSWORD": "pCto-4d2e_q1",
    "NATS_AGENT_BACKEND_AGENT_PASSWORD": "pBackend-a8b7_z5",
    "NATS_SNOOP_PASSWORD": "pSnoop-0e9d_m3",
}
ROUTER_SUBJECT = re.compile(r'"(llm_|routing_decision|routing_control|provider_|cost_report|cost_event|router_error|router_control)')
# Only for the demonstration of what "_INBOX.>" would give away; not in the shipped file.
SNOOP_USER = '{ user: snoop, password: $NATS_SNOOP_PASSWORD, permissions: { subscribe: "_INBOX.>" } }'


def prefixed(conf: str, prefix: str) -> str:
    """The shipped file with ``prefix`` in front of every router subject (not _INBOX/$SRV/$JS)."""
    return ROUTER_SUBJECT.sub(lambda m: f'"{prefix}{m.group(1)}', conf)


class Refusals:
    """``on_error`` is an error_cb that keeps the server's permission violations and can wait for one."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    async def on_error(self, exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            self.seen.append(str(exc).lower())
            self._changed.set()

    async def wait_for(self, fragment: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for text in self.seen:
                    if fragment.lower() in text:
                        return text
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def secured_nats(tmp_path: Path, prefix: str, monkeypatch) -> EmbeddedNats:
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    conf = prefixed(PERMISSIONS.read_text(), prefix).replace("users = [", f"users = [\n    {SNOOP_USER}", 1)
    path = tmp_path / "permissions.conf"
    path.write_text(conf)
    with EmbeddedNats(tmp_path / "nats", extra_args=["-c", str(path)]) as server:
        yield server


@pytest.fixture
async def router(secured_nats, make_config, emulator, monkeypatch) -> AsyncIterator[tuple[RouterAgent, Refusals]]:
    """The router agent connected as the ``router`` user, the way ``router-agent run`` does."""
    monkeypatch.setenv("NATS_USER", "router")
    monkeypatch.setenv("NATS_PASSWORD", PASSWORDS["NATS_ROUTER_PASSWORD"])
    monkeypatch.delenv("NATS_TOKEN", raising=False)
    monkeypatch.delenv("NATS_INBOX_PREFIX", raising=False)
    config = make_config()
    refusals = Refusals()
    nc = await connect(secured_nats.url, config.nats, name="router-agent", error_cb=refusals.on_error)
    agent = RouterAgent(config, nc, emulator_url=emulator.url)
    await agent.start()
    try:
        yield agent, refusals
    finally:
        await agent.stop()
        await nc.close()


@pytest.fixture
async def login(secured_nats) -> AsyncIterator[Callable[..., Awaitable[tuple[Any, Refusals]]]]:
    """Connect as a user, with the inbox prefix the shipped file gives that user."""
    conns = []

    async def connect_as(user: str, password_env: str, inbox_prefix: str | None = None):
        refusals = Refusals()
        nc = await nats.connect(
            secured_nats.url, user=user, password=PASSWORDS[password_env], error_cb=refusals.on_error,
            inbox_prefix=inbox_prefix or f"_INBOX.{user}", allow_reconnect=False,
        )
        conns.append(nc)
        return nc, refusals

    try:
        yield connect_as
    finally:
        for nc in conns:
            await nc.close()


def register(provider: str, base_url: str, model: str) -> bytes:
    spec = sig.ModelSpec(name=model, capabilities=["general_reasoning"],
                         cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002))
    return sig.encode_event("provider_register", sig.ProviderRegister(provider=provider, base_url=base_url, models=[spec]))


def ask(agent_id: str) -> bytes:
    request = sig.LlmRequest(request_id=f"perm-{agent_id}", agent_id=agent_id,
                             messages=[sig.ChatMessage(role="user", content="hello through the gate")])
    return sig.encode_event("llm_request", request)


async def test_only_operators_can_register_providers(router, login, subjects, emulator):
    agent, router_refusals = router
    cto, cto_refusals = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")
    operator, _ = await login("operator", "NATS_OPERATOR_PASSWORD")

    await cto.publish(subjects.provider_register, register("sneaky", "http://127.0.0.1:9/v1", "sneaky-model"))
    refused = await cto_refusals.wait_for(f'publish to "{subjects.provider_register}"')
    assert "permissions violation" in refused
    # A request through the router after the refusal: had the register reached it, it
    # would have been handled by now.
    reply = await cto.request(subjects.llm_request, ask("cto_agent"), timeout=10)
    assert decode_any(reply.data).status == "ok"
    assert "sneaky" not in agent.state.providers

    reply = await operator.request(subjects.provider_register, register("sneaky", emulator.url, "sneaky-model"), timeout=10)
    answer = decode_any(reply.data)
    assert answer.accepted, answer.errors
    assert agent.state.providers["sneaky"].base_url == emulator.url
    assert router_refusals.seen == []


async def test_an_agent_reads_its_own_answers_and_nobody_elses(router, login, subjects):
    _, router_refusals = router
    cto, cto_refusals = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")
    own = asyncio.Queue()
    await cto.subscribe(subjects.llm_response("cto_agent"), cb=own.put)
    decisions = asyncio.Queue()
    await cto.subscribe(subjects.routing_decision("cto_agent"), cb=decisions.put)
    await cto.subscribe(subjects.llm_response("backend_agent"))
    await cto.subscribe("_INBOX.>")
    await sync_subscriptions(cto)

    await cto_refusals.wait_for(f'subscription to "{subjects.llm_response("backend_agent")}"')
    await cto_refusals.wait_for('subscription to "_inbox.>"')

    reply = await cto.request(subjects.llm_request, ask("cto_agent"), timeout=10)
    assert decode_any(reply.data).status == "ok"
    streamed = await asyncio.wait_for(own.get(), 5)
    assert decode_any(streamed.data).request_id == "perm-cto_agent"
    assert decode_any((await asyncio.wait_for(decisions.get(), 5)).data).request_id == "perm-cto_agent"
    assert router_refusals.seen == []


async def test_agents_cannot_publish_answers_or_control_signals(router, login, subjects):
    cto, cto_refusals = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")
    for subject in (subjects.llm_response("backend_agent"), subjects.provider_update,
                    subjects.provider_health, "_INBOX.backend_agent.x"):
        await cto.publish(subject, b"{}")
        await cto_refusals.wait_for(f'publish to "{subject}"')


async def test_an_inbox_wildcard_grant_would_expose_every_answer(router, login, subjects):
    """Why each user gets "_INBOX.<user>.>" and not "_INBOX.>": a user allowed "_INBOX.>"
    (the extra ``snoop`` user of this test) can subscribe to it and read replies meant for
    others; not guessing names, just the wildcard."""
    snoop, snoop_refusals = await login("snoop", "NATS_SNOOP_PASSWORD")
    overheard = asyncio.Queue()
    await snoop.subscribe("_INBOX.>", cb=overheard.put)
    await sync_subscriptions(snoop)
    cto, _ = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")

    await cto.request(subjects.llm_request, ask("cto_agent"), timeout=10)

    leaked = await asyncio.wait_for(overheard.get(), 5)
    assert leaked.subject.startswith("_INBOX.cto_agent.")
    assert decode_any(leaked.data).request_id == "perm-cto_agent"
    assert snoop_refusals.seen == []


async def test_bus_connect_logs_each_refusal_once(secured_nats, subjects, monkeypatch, caplog):
    monkeypatch.setenv("NATS_USER", "cto_agent")
    monkeypatch.setenv("NATS_PASSWORD", PASSWORDS["NATS_AGENT_CTO_AGENT_PASSWORD"])
    monkeypatch.setenv("NATS_INBOX_PREFIX", "_INBOX.cto_agent")
    nc = await connect(secured_nats.url, NatsConfig(token_env=None), name="cto-tool")
    try:
        with caplog.at_level(logging.ERROR, logger="router_agent.bus"):
            for _ in range(3):
                await nc.publish(subjects.provider_register, b"{}")
            # The server sends each -ERR before the PONG that follows the publishes.
            await sync_subscriptions(nc)
        refusals = [r.getMessage() for r in caplog.records if r.name == "router_agent.bus"]
        assert len(refusals) == 1, refusals
        assert subjects.provider_register in refusals[0]
        assert "permissions violation" in refusals[0].lower()
    finally:
        await nc.close()


async def test_the_router_user_can_use_jetstream(router):
    agent, refusals = router
    info = await agent.nc.jetstream().account_info()
    assert info is not None
    assert refusals.seen == []


async def test_nobody_gets_in_without_a_password(secured_nats):
    with pytest.raises(BusError):
        await connect(secured_nats.url, NatsConfig(user_env=None, password_env=None, token_env=None),
                      name="anonymous", initial_attempts=1)


def test_the_shipped_file_holds_no_passwords():
    text = PERMISSIONS.read_text()
    values = re.findall(r"\b(?:password|pass)\s*[:=]\s*([^\s,}]+)", text)
    assert values and all(re.fullmatch(r"\$NATS_[A-Z_]+_PASSWORD", v) for v in values), values


def test_the_server_refuses_to_start_when_a_password_variable_is_missing(tmp_path: Path, monkeypatch):
    for name in PASSWORDS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BusError, match="exited"):
        EmbeddedNats(tmp_path / "nats", extra_args=["-c", str(PERMISSIONS)]).start()
    assert "NATS_ROUTER_PASSWORD" in (tmp_path / "nats" / "nats-server.log").read_text()
