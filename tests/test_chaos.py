"""Chaos: the agent under load while the emulator injects faults, over a real nats-server.

Each test drives the agent as other agents do: ``llm_request`` published over the real
nats-server with a reply subject each, real HTTP to the emulator, whose faults change at run
time. Answers are counted per request id (``Traffic``), and every test checks (``check``):
each request answered exactly once (none without an answer, none with two, no chunk after
its answer), and no attempt of a private request (``privacy_level: high``, or an e-mail
address in the prompt; one request in five) on a cloud provider. Each scenario adds its
own: completions wherever a healthy alternative existed; a breaker that opens and recovers,
as the router's ``provider_health`` signals (``origin: router``) say; hedges and shedding.

What callers see when things go wrong, as these tests pin it down:

- a stream cut after its first chunk cannot fail over (the caller has content): it is
  answered once, with an error whose ``message`` holds exactly what the chunks delivered;
  a stream that fails before any content fails over like any request;
- beyond ``max_concurrent_requests + max_queued_requests`` a request is answered
  ``overloaded`` at once, with ``retry_after_ms``;
- SIGTERM under load: every request the agent took is answered (a completion within the
  grace period, else ``shutting_down``); one published after it left the queue group gets
  NATS's "no responders" status at once, never silence;
- nats-server restarted under load: the agent reconnects by itself and every request sent
  once it has resubscribed is answered exactly once. Requests published while the server
  is down are buffered by the caller's client and sent when it reconnects: until the agent
  has resubscribed (``reconnect_time_wait`` 0.5 s) they get "no responders". An answer the
  agent finished meanwhile is buffered by its client and delivered once both are back; one
  can be lost only if it reaches the server before the caller has resubscribed, and a
  request inside the server when it stopped is lost with it (the caller's timeout covers
  both; none was lost in these runs).

Breakers and backoffs are made short through the config overlay (``cooldown_s``,
``retry.initial_s``) so recovery happens within a test. Waits are for signals (answers,
``provider_health``, the emulator's counters, the nats-py connection callbacks); none is a
sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml

import signals as sig
from router_agent.bus import EmbeddedNats, sync_subscriptions
from router_agent.emulator import start_emulator
from tests.conftest import deep_merge

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "router_agent"]
ROOT = Path(__file__).resolve().parent.parent
FAST_RECOVERY = {
    "router": {
        "circuit_breaker": {"failure_threshold": 3, "cooldown_s": 0.2, "max_cooldown_s": 0.5},
        "retry": {"initial_s": 0.01, "max_s": 0.05},
    }
}
PRIVATE = sig.Task(privacy_level="high")
PII_SUFFIX = "(reply to jane.doe@example.com)"
PII_PROMPT = f"About her invoice {PII_SUFFIX}"


# --------------------------------------------------------------------------- counting answers


class Traffic:
    """Sends ``llm_request`` with a reply subject each, and files every message that comes
    back under its request id: terminal answers, stream chunks, "no responders" statuses."""

    def __init__(self, nc: nats.NATS, subjects: sig.Subjects):
        self.nc = nc
        self.subjects = subjects
        self.inbox = f"_CHAOS.{os.urandom(6).hex()}."
        self.sent: dict[str, sig.LlmRequest] = {}
        self.answers: dict[str, list[sig.LlmResponse]] = {}
        self.chunks: dict[str, list[sig.LlmChunk]] = {}
        self.no_responders: set[str] = set()
        self.late_chunks: set[str] = set()
        """Request ids with a chunk after their answer (never expected)."""
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)
        self._tag = os.urandom(3).hex()

    async def start(self) -> Traffic:
        await self.nc.subscribe(self.inbox + "*", cb=self._on_msg)
        await sync_subscriptions(self.nc)
        return self

    def request(self, model: str, content: str = "hello chaos", **fields: Any) -> sig.LlmRequest:
        return sig.LlmRequest(request_id=f"{self._tag}-{next(self._ids)}", agent_id="chaos", model=model,
                              messages=[sig.ChatMessage(role="user", content=content)], **fields)

    def mixed(self, count: int, model: str, content: str = "hello chaos", **fields: Any) -> list[sig.LlmRequest]:
        """``count`` requests, one in five private: every tenth says ``privacy_level: high``,
        every other tenth carries an e-mail address."""
        return [self.request(model, content, task=PRIVATE, **fields) if i % 10 == 0
                else self.request(model, f"{content} {PII_SUFFIX}" if i % 10 == 5 else content, **fields)
                for i in range(count)]

    async def send(self, request: sig.LlmRequest) -> str:
        rid = request.request_id
        self.sent[rid] = request
        await self.nc.publish(self.subjects.llm_request, sig.encode_event("llm_request", request),
                              reply=self.inbox + rid)
        return rid

    async def send_all(self, requests: Iterable[sig.LlmRequest]) -> list[str]:
        rids = [await self.send(r) for r in requests]
        await self.nc.flush()
        return rids

    async def _on_msg(self, msg: Any) -> None:
        rid = msg.subject[len(self.inbox):]
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            self.no_responders.add(rid)
        elif msgspec.json.decode(msg.data)["type"].startswith("io.llmrouter.llm_chunk."):
            if rid in self.answers:
                self.late_chunks.add(rid)
            self.chunks.setdefault(rid, []).append(sig.decode_data(msg.data, "llm_chunk"))
        else:
            self.answers.setdefault(rid, []).append(sig.decode_data(msg.data, "llm_response"))
        self._changed.set()

    def settled(self, rid: str) -> bool:
        return rid in self.answers or rid in self.no_responders

    async def until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait (bounded) until ``predicate()`` holds; re-checked whenever a message comes in."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def answered(self, rids: list[str]) -> list[sig.LlmResponse]:
        """Wait until each of ``rids`` has an answer; their first answers, in order."""
        try:
            await self.until(lambda: all(r in self.answers for r in rids))
        except TimeoutError:
            lost = [r for r in rids if r not in self.answers]
            pytest.fail(f"{len(lost)} of {len(rids)} requests never answered: {lost[:10]}")
        return [self.answers[r][0] for r in rids]

    def twice(self) -> list[str]:
        return sorted(r for r, answers in self.answers.items() if len(answers) > 1)

    def lost(self) -> list[str]:
        return sorted(r for r in self.sent if not self.settled(r))


def attempt_kinds(response: sig.LlmResponse) -> Counter[str]:
    """Retries, hedges and failovers among an answer's attempts (listed as they ended, so the
    first attempt may follow its hedge): every plain attempt after the first is a failover."""
    tried = [a for a in response.attempts if a.outcome != "skipped"]
    retries = sum(a.retry and not a.hedge for a in tried)
    hedges = sum(a.hedge for a in tried)
    return Counter(retries=retries, hedges=hedges, failovers=max(0, len(tried) - retries - hedges - 1))


def is_private(request: sig.LlmRequest) -> bool:
    return (request.task is not None and request.task.privacy_level == "high") or PII_SUFFIX in str(request.messages)


async def check(agent: Any, traffic: Traffic) -> None:
    """Every request sent answered exactly once, and no private one near a cloud model.

    First a barrier after which any second answer would have arrived: the agent's request
    tasks have ended, the server has all the agent published, and the client everything the
    server routed to it before the client's PONG."""
    if tasks := set(agent.requests.tasks):
        await asyncio.wait(tasks, timeout=10)
    await agent.nc.flush()
    await traffic.nc.flush()
    assert not traffic.twice(), f"answered twice: {traffic.twice()[:10]}"
    assert not traffic.lost(), f"{len(traffic.lost())} never answered: {traffic.lost()[:10]}"
    assert not traffic.late_chunks, f"chunks after the answer: {sorted(traffic.late_chunks)[:10]}"
    # The agent's counters say what the answers' attempts say.
    listed = sum((attempt_kinds(answers[0]) for answers in traffic.answers.values()), Counter())
    m = agent.state.metrics
    assert (m.retries, m.failovers, m.hedges) == (listed["retries"], listed["failovers"], listed["hedges"])
    private = [traffic.answers[rid][0] for rid, request in traffic.sent.items() if is_private(request)]
    reached = {a.provider for r in private for a in r.attempts if a.outcome != "skipped"}
    assert private and not {p for p in reached if agent.state.providers[p].type == "cloud"}


# --------------------------------------------------------------------------- providers at the emulator


async def register(client: Any, provider: str, base_url: str, models: dict[str, str], *, kind: str = "local",
                   api: str = "openai", timeout_ms: int | None = None) -> None:
    """A provider serving ``models`` (router name -> the emulator's model id, which faults key on)."""
    specs = [sig.ModelSpec(name=name, model_id=model_id, capabilities=["general_reasoning"],
                           cost_per_1k_tokens=sig.ModelPrice(input=0.001, output=0.002))
             for name, model_id in models.items()]
    fields: dict[str, Any] = {"timeout_ms": timeout_ms} if timeout_ms else {}
    answer = await client.control("provider_register", sig.ProviderRegister(
        provider=provider, base_url=base_url, type=kind, api=api, models=specs, **fields))
    assert answer.accepted, answer.errors


@contextlib.asynccontextmanager
async def slow_emulator(latency_ms: float) -> AsyncIterator[Any]:
    slow = await start_emulator(latency_ms=latency_ms)
    try:
        yield slow
    finally:
        await slow.close()


def attempts_on(responses: Iterable[sig.LlmResponse], provider: str) -> list[sig.Attempt]:
    return [a for r in responses for a in r.attempts if a.provider == provider and a.outcome != "skipped"]


def breaker_signal(provider: str, circuit: str) -> Callable[[Any], bool]:
    return lambda h: (isinstance(h, sig.ProviderHealth) and h.origin == "router" and h.provider == provider
                      and h.circuit == circuit)


def all_ok(responses: list[sig.LlmResponse]) -> bool:
    return all(r.status == "ok" for r in responses)


def codes(responses: list[sig.LlmResponse]) -> Counter[str]:
    return Counter(r.error.code if r.error else "ok" for r in responses)


@pytest.fixture
async def traffic(client: Any, subjects: sig.Subjects) -> Traffic:
    return await Traffic(client.nc, subjects).start()


# --------------------------------------------------------------------------- faults under load


async def test_thirty_percent_server_errors_on_one_provider(agents, client, emulator, traffic):
    agent = await agents.start(FAST_RECOVERY)
    await register(client, "flaky", emulator.url, {"chat": "flaky-chat"}, kind="cloud")
    await register(client, "steady", emulator.url, {"chat": "steady-chat"}, api="anthropic")
    emulator.set_fault("flaky-chat", {"error_rates": {500: 0.3}})

    rids = await traffic.send_all(traffic.mixed(150, "chat"))
    responses = await traffic.answered(rids)
    await check(agent, traffic)

    assert all_ok(responses), codes(responses)
    failed = [a for a in attempts_on(responses, "flaky") if a.outcome != "ok"]
    assert failed and {a.error.code for a in failed} == {"server_error"}
    assert not [a for a in attempts_on(responses, "steady") if a.outcome != "ok"]
    # Every 500 the emulator sent shows in some answer's attempts: nothing was retried unseen.
    assert emulator.stats()["faults"]["flaky-chat"]["error 500"] == len(failed)


async def test_a_429_storm_with_retry_after_is_waited_out_or_sent_elsewhere(agents, client, emulator, traffic):
    agent = await agents.start(FAST_RECOVERY)
    await register(client, "stormy", emulator.url, {"chat": "stormy-chat", "solo": "stormy-solo"}, kind="cloud")
    await register(client, "steady", emulator.url, {"chat": "steady-chat"})
    for model_id, burst in (("stormy-chat", 40), ("stormy-solo", 10)):
        emulator.set_fault(model_id, {"rate_limit_burst": burst, "retry_after_s": 0.3})

    # "chat" has a healthy alternative; "solo" has none, and waits out the Retry-After instead.
    rids = await traffic.send_all([*traffic.mixed(80, "chat"),
                                   *(traffic.request("solo", timeout_ms=10_000) for _ in range(20))])
    responses = await traffic.answered(rids)
    await check(agent, traffic)

    assert all_ok(responses), codes(responses)
    limited = [a for a in attempts_on(responses, "stormy") if a.outcome != "ok"]
    assert limited and {a.error.code for a in limited} == {"rate_limited"}
    assert len(limited) == 40 + 10 - sum(s.rate_limit_burst for s in emulator.runtime.faults.specs().values())
    # The limiter learnt Retry-After: after a 429 a "chat" request went to the other provider.
    after_429 = [b for r in responses if r.model == "chat"
                 for a, b in itertools.pairwise(r.attempts) if a.outcome == "error"]
    assert after_429 and {b.provider for b in after_429} == {"steady"}
    solo_waited = [r for r in responses if r.model == "solo" and len(r.attempts) > 1]
    assert solo_waited and all(r.attempts[-1].provider == "stormy" for r in solo_waited)


async def test_hanging_provider_is_given_up_on_and_its_connections_freed(agents, client, emulator, traffic):
    agent = await agents.start(FAST_RECOVERY)
    # The provider's own timeout_ms bounds an attempt: a hang costs 300 ms, then the chain moves on.
    await register(client, "sticky", emulator.url, {"chat": "sticky-chat", "stuck": "sticky-stuck"},
                   timeout_ms=300)
    await register(client, "steady", emulator.url, {"chat": "steady-chat"})
    emulator.set_fault("sticky-chat", {"hang_rate": 0.5, "hang_s": 60})
    emulator.set_fault("sticky-stuck", {"hang_rate": 1.0, "hang_s": 60})

    # "stuck" has nobody else: its requests end in one typed error each, within their deadline.
    rids = await traffic.send_all([*traffic.mixed(60, "chat", timeout_ms=5_000),
                                   *(traffic.request("stuck", timeout_ms=1_000) for _ in range(5))])
    responses = await traffic.answered(rids)
    await check(agent, traffic)

    chat = [r for r in responses if r.model == "chat"]
    stuck = [r for r in responses if r.model != "chat"]
    assert all_ok(chat), codes(chat)
    hung = [a for a in attempts_on(chat, "sticky") if a.outcome != "ok"]
    assert hung and {a.outcome for a in hung} == {"timeout"}
    assert {(r.status, r.error.code) for r in stuck} <= {("error", "timeout"), ("error", "all_providers_failed")}
    # The router hung up on every hanging call: the emulator holds none of them any more.
    async with asyncio.timeout(10):
        await emulator.wait_for(lambda r: r.hanging == 0)


async def test_hedges_race_hanging_calls_and_only_the_winner_answers(agents, client, emulator, traffic):
    # performance_optimized hedges (parallel_requests); 20 ms before anything is observed.
    agent = await agents.start(deep_merge(FAST_RECOVERY, {
        "agents": {"chaos": {"strategy": "performance_optimized"}},
        "router": {"hedging": {"unobserved_delay_ms": 20, "min_delay_ms": 20}}}))
    await register(client, "sticky", emulator.url, {"chat": "sticky-chat"}, kind="cloud", timeout_ms=2_000)
    await register(client, "steady", emulator.url, {"chat": "steady-chat"})
    emulator.set_fault("sticky-chat", {"hang_rate": 0.5, "hang_s": 60})

    rids = await traffic.send_all(traffic.mixed(60, "chat", timeout_ms=5_000))
    responses = await traffic.answered(rids)
    await check(agent, traffic)

    assert all_ok(responses), codes(responses)
    raced = [r for r in responses if any(a.hedge for a in r.attempts)]
    assert raced, "no request was hedged"
    cancelled = 0
    for response in raced:
        outcomes = Counter(a.outcome for a in response.attempts)
        # One answer; a loser is cancelled, unless both calls finished before the chain woke
        # (a loaded machine): both were then billed, and both are reported as they ended.
        assert outcomes["ok"] >= 1 and set(outcomes) <= {"ok", "cancelled", "timeout", "error"}, response.attempts
        assert (response.provider, "ok") in {(a.provider, a.outcome) for a in response.attempts}
        assert response.cost_usd == pytest.approx(sum(a.cost_usd or 0 for a in response.attempts))
        cancelled += outcomes["cancelled"]
    assert cancelled, "no hanging call was cancelled by the hedge that beat it"
    async with asyncio.timeout(10):  # the losers' connections are closed, not left hanging
        await emulator.wait_for(lambda r: r.hanging == 0)


async def test_beyond_its_queue_the_agent_sheds_load_with_an_answer(agents, client, traffic):
    agent = await agents.start({"router": {"max_concurrent_requests": 5, "max_queued_requests": 5}})
    async with slow_emulator(latency_ms=200) as slow:
        await register(client, "slowpoke", slow.url, {"chat": "slow-chat"})
        rids = await traffic.send_all(traffic.mixed(60, "chat"))
        responses = await traffic.answered(rids)
        await check(agent, traffic)

    shed = [r for r in responses if r.status == "error"]
    assert {r.error.code for r in shed} == {"overloaded"}
    assert all(r.error.retryable and r.error.retry_after_ms for r in shed)
    assert 10 <= len(responses) - len(shed) < len(responses)  # the 5 in flight and the 5 queued, at least
    assert agent.state.metrics.shed == len(shed)


async def test_a_provider_going_down_and_coming_back_opens_then_closes_its_breaker(agents, client, emulator,
                                                                                   traffic, subjects):
    agent = await agents.start(FAST_RECOVERY)
    health = await client.collect(subjects.provider_health)
    await register(client, "wobbly", emulator.url, {"chat": "wobbly-chat"}, kind="cloud", api="gemini")
    await register(client, "steady", emulator.url, {"chat": "steady-chat"})

    async def load_until(predicate: Callable[[Any], bool]) -> list[str]:
        """Keep requests flowing, 10 at a time, until a provider_health signal satisfies
        ``predicate`` (the breaker's cooldown runs meanwhile; the time is bounded)."""
        rids: list[str] = []
        async with asyncio.timeout(15):
            while not any(predicate(h) for h in health.data):
                rids += await traffic.send_all(traffic.mixed(10, "chat"))
                await traffic.answered(rids)
        return rids

    emulator.set_fault("wobbly-chat", 503)
    down = await load_until(breaker_signal("wobbly", "open"))
    emulator.set_fault("wobbly-chat", None)
    back = await load_until(breaker_signal("wobbly", "closed"))
    after = await traffic.send_all(traffic.mixed(20, "chat"))
    await traffic.answered(after)
    healed = await load_until(lambda h: h.provider == "wobbly" and h.status == "healthy")
    await check(agent, traffic)

    answers = {rid: traffic.answers[rid][0] for rid in traffic.sent}
    assert all_ok(list(answers.values())), codes(list(answers.values()))
    opened = await health.wait_for(breaker_signal("wobbly", "open"))
    assert opened.model == "chat" and opened.reporter == agent.instance_id
    assert {a.error.code for a in attempts_on((answers[r] for r in down), "wobbly")} == {"overloaded"}
    # While open (then probing), it got far less than the half of the requests round robin gives it.
    assert len(attempts_on((answers[r] for r in back), "wobbly")) < len(back) / 2
    # Closed again, it serves its share once more, and its health recovers.
    assert "wobbly" in {answers[r].provider for r in [*after, *healed]}
    assert agent.state.circuit_breakers[("wobbly", "chat")].state == "closed"
    assert agent.state.provider_states["wobbly"].health == "healthy"


async def test_streams_cut_midway_are_answered_once_with_what_they_delivered(agents, client, emulator, traffic):
    agent = await agents.start(FAST_RECOVERY)
    # Its timeout_ms bounds the time to the first token: a hang before any content fails over.
    await register(client, "snippy", emulator.url, {"chat": "snippy-chat"}, kind="cloud", api="anthropic",
                   timeout_ms=300)
    await register(client, "steady", emulator.url, {"chat": "steady-chat"})
    emulator.set_fault("snippy-chat", {"cut_rate": 0.2, "stall_rate": 0.1, "hang_rate": 0.3, "hang_s": 0.5})
    long_prompt = " ".join(f"word{i}" for i in range(12))  # a reply of several pieces, cut in the middle

    rids = await traffic.send_all(traffic.mixed(80, "chat", long_prompt, stream=True, timeout_ms=5_000))
    responses = await traffic.answered(rids)
    await check(agent, traffic)

    cut = failed_over = 0
    for rid, response in zip(rids, responses, strict=True):
        chunks = traffic.chunks.get(rid, [])
        assert [c.seq for c in chunks] == list(range(len(chunks)))  # in order, none lost
        delivered = "".join(c.content for c in chunks)
        assert response.streamed is not None and response.streamed.chunks == len(chunks)
        if response.status == "ok":
            assert response.message.content == delivered
            failed_over += len(response.attempts) > 1
            continue
        # Content had reached the caller: no failover, an error that carries exactly that content.
        cut += 1
        assert chunks and response.provider == "snippy" and response.finish_reason == "error"
        assert response.message.content == delivered and "ended early" in response.error.message
    faults = emulator.stats()["faults"]["snippy-chat"]
    assert 0 < cut <= faults.get("cut", 0) + faults.get("stall", 0)
    assert failed_over > 0
    assert cut < len(rids) / 2  # the uncut ones (and the failures before content) were completions


async def test_private_requests_never_reach_a_cloud_model_when_local_ones_fail(agents, client, emulator, traffic):
    agent = await agents.start(FAST_RECOVERY)
    await register(client, "cloudy", emulator.url, {"chat": "cloudy-chat", "doomed": "cloudy-doomed"}, kind="cloud")
    await register(client, "local-down", emulator.url, {"chat": "down-chat", "doomed": "down-doomed"})
    await register(client, "local-steady", emulator.url, {"chat": "steady-chat"}, api="ollama")
    emulator.set_fault("down-chat", 503)
    emulator.set_fault("down-doomed", 503)

    # "chat" keeps a healthy local model for private requests; "doomed" has only a broken one.
    private = [traffic.request(model, task=PRIVATE) for model in ("chat", "doomed") for _ in range(30)]
    personal = [traffic.request(model, PII_PROMPT) for model in ("chat", "doomed") for _ in range(30)]
    ordinary = [traffic.request(model) for model in ("chat", "doomed") for _ in range(30)]
    rids = await traffic.send_all([*private, *personal, *ordinary])
    await traffic.answered(rids)
    await check(agent, traffic)

    answers = {rid: traffic.answers[rid][0] for rid in rids}
    kept_local = [answers[r.request_id] for r in [*private, *personal]]
    assert not attempts_on(kept_local, "cloudy"), "a private request reached a cloud model"
    assert all(r.provider != "cloudy" for r in kept_local)
    # With a working local model, private requests succeed; with none, they fail, typed, and stay local.
    for response in kept_local:
        if response.model == "chat":
            assert response.status == "ok", response.error
        else:
            assert response.status == "error" and response.error.code in {"all_providers_failed", "no_candidates"}
    assert all(answers[r.request_id].status == "ok" for r in ordinary)
    # The emulator saw exactly the cloud calls the ordinary requests' answers list: none hidden.
    seen = emulator.stats()["requests"]
    cloud_attempts = attempts_on([answers[r.request_id] for r in ordinary], "cloudy")
    assert seen.get("cloudy-chat", 0) + seen.get("cloudy-doomed", 0) == len(cloud_attempts)


# --------------------------------------------------------------------------- the agent as a process


class AgentProcess:
    """``router-agent run`` in a child process, as an operator starts it. Its output is read
    as it comes (a full pipe would block the child) and kept for failure messages."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lines: list[str] = []
        self.ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace"))
            if self.lines[-1].startswith("router-agent ready:"):
                self.ready.set()
        self.ready.set()  # it ended: the caller finds out from the output

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def terminated(self) -> int:
        """SIGTERM, as a supervisor stops it; its exit code once it has drained and exited."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self.proc.wait()
            await self._reader
        return code


@contextlib.asynccontextmanager
async def agent_process(nats_url: str, emulator_url: str, overlay: Path) -> AsyncIterator[AgentProcess]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", "--nats-url", nats_url, "--emulator-url", emulator_url, "--overlay", str(overlay),
        "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    agent = AgentProcess(proc)
    try:
        async with asyncio.timeout(30):
            await agent.ready.wait()
        assert proc.returncode is None, agent.output
        yield agent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        agent._reader.cancel()


@pytest.fixture
def overlay(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "chaos-overlay.yaml"
    path.write_text(yaml.safe_dump({"router": {"subject_prefix": prefix, "shutdown_grace_s": 5},
                                    "emulation": {"mode": "always"}}))
    return path


def setter(event: asyncio.Event) -> Callable[[], Any]:
    """A nats-py connection callback (a coroutine function) that sets ``event``."""
    async def callback() -> None:
        event.set()

    return callback


class Load:
    """Requests that flow until stopped, one every ``every_s`` (a rate, not a wait)."""

    def __init__(self, traffic: Traffic, model: str, every_s: float = 0.005):
        self.traffic, self.model, self.every_s = traffic, model, every_s
        self.sent: list[str] = []
        self._sent_more = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sent.append(await self.traffic.send(self.traffic.request(self.model)))
            self._sent_more.set()
            await asyncio.sleep(self.every_s)

    async def reach(self, count: int) -> None:
        """Return once ``count`` requests have been sent in all (bounded)."""
        async with asyncio.timeout(10):
            while len(self.sent) < count:
                self._sent_more.clear()
                await self._sent_more.wait()

    def stop(self) -> list[str]:
        self._task.cancel()
        return self.sent


async def test_sigterm_under_load_answers_every_request_the_agent_took(nats_url, traffic, overlay):
    async with slow_emulator(latency_ms=200) as slow, agent_process(nats_url, slow.url, overlay) as agent:
        first = await traffic.send_all(traffic.request("llama-3-70b") for _ in range(100))
        load = Load(traffic, "llama-3-70b")
        # Stop while requests are at the provider, with more flowing all along.
        async with asyncio.timeout(10):
            await slow.wait_for(lambda r: sum(r.requests.values()) >= 110)
        code = await agent.terminated()
        during = load.stop()
        assert code == 0, agent.output
        await traffic.nc.flush()
        await traffic.until(lambda: all(traffic.settled(r) for r in during), timeout=5)

    # Every request the agent took is answered once, with a completion (within the grace
    # period); the others were never taken, and NATS said so at once ("no responders").
    assert not traffic.twice(), traffic.twice()[:10]
    assert not traffic.lost(), traffic.lost()[:10]
    assert not traffic.no_responders & set(traffic.answers)
    assert all(r in traffic.answers for r in first)
    taken = [traffic.answers[r][0] for r in [*first, *during] if r in traffic.answers]
    assert all_ok(taken), codes(taken)
    assert "router-agent stopped" in agent.output


async def test_nats_server_restart_under_load_the_agent_reconnects_and_serves_again(tmp_path, prefix, overlay):
    server = EmbeddedNats(tmp_path / "nats", port=0).start()
    disconnected, reconnected = asyncio.Event(), asyncio.Event()
    nc = await nats.connect(server.url, name="chaos-client", reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                            disconnected_cb=setter(disconnected), reconnected_cb=setter(reconnected))
    traffic = await Traffic(nc, sig.Subjects(prefix)).start()
    try:  # 50 ms upstream: requests are inside the agent when the server stops
        async with slow_emulator(latency_ms=50) as slow, agent_process(server.url, slow.url, overlay) as agent:
            load = Load(traffic, "llama-3-70b")
            await traffic.until(lambda: len(traffic.answers) >= 20)
            await asyncio.to_thread(server.stop)  # requests in flight, more being sent
            async with asyncio.timeout(10):
                await disconnected.wait()
            await load.reach(len(load.sent) + 20)  # the caller keeps sending into the outage
            await asyncio.to_thread(server.start)  # the same port and JetStream folder
            async with asyncio.timeout(15):
                await reconnected.wait()
            resumed_at = len(load.sent)
            # Nobody restarts the agent: answers to requests sent after the restart come back.
            await traffic.until(lambda: sum(r in traffic.answers for r in load.sent[resumed_at:]) >= 20)
            tail = load.stop()[resumed_at:]
            served_again = tail[next(i for i, r in enumerate(tail) if r in traffic.answers):]
            await traffic.until(lambda: all(traffic.settled(r) for r in served_again), timeout=10)
            assert await agent.terminated() == 0, agent.output
            await nc.flush()
    finally:
        await nc.close()
        server.stop()

    # From the agent's first answer after the restart, every request is answered, once, as a
    # completion. Before it, a request may have had "no responders", or nothing at all.
    assert not traffic.twice(), traffic.twice()[:10]
    assert all(r in traffic.answers for r in served_again)
    assert all_ok([traffic.answers[r][0] for r in served_again])


def test_the_chaos_benchmark_counts_every_answer_on_a_small_run(tmp_path):
    """``python -m bench.chaos`` end to end, small: its figures add up and its goals hold."""
    out = tmp_path / "chaos.json"
    argv = [sys.executable, "-m", "bench.chaos", "--requests", "300", "--concurrency", "50", "--json", str(out)]
    done = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["sent"] == figures["answered"] == 300
    assert figures["answered_twice"] == figures["lost"] == figures["private_to_cloud"] == 0
    assert figures["faults_injected"] and figures["retries"] + figures["failovers"] > 0
    assert "answered twice" in done.stdout and "PASS  0 lost" in done.stdout
