"""What ``provider_metrics`` and ``provider_health`` say of a provider (issue 10, reliability):
uptime, the last error (redacted, with its wall-clock time), errors by code, each deployment's
breaker, rate headroom and latency, the retries, failovers and hedges that went to it; and a
breaker going half open is announced like any other change.

Three speeds: the registry and ``Outcomes`` driven directly with a fake clock (no bus, no
loop), the agent on the in-memory bus with the scriptable mock (the attempt chain's
counting), and one scenario over a real nats-server and the HTTP emulator. Waits are for
signals or answers, never sleeps; time moves only when a fake clock is told to.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import signals as sig
from router_agent.core.model import Deployment
from router_agent.http import HttpClient
from router_agent.outcomes import Outcomes
from router_agent.providers import ADAPTERS
from router_agent.providers.base import Completion, ProviderError
from router_agent.providers.mock import Behaviour, MockAdapter
from router_agent.registry import ProviderRegistry, build_deployment
from router_agent.state import ProviderEntry, RouterState
from tests.fast import FakeClock, fast_fixture  # noqa: F401 - fast_fixture is the `fast` fixture

SECRET = "sk-live-METRICS-0123456789abcdefABCDEF"
COOLDOWN_S = 60.0  # make_config's circuit_breaker: failure_threshold 3, cooldown_s 60
THRESHOLD = 3
WAIT = 5.0


# --------------------------------------------------------------------------- a registry, driven directly


class Rig:
    """A registry and its outcomes on a fake clock, every circuit change recorded."""

    def __init__(self, make_config: Any, overrides: dict[str, Any] | None = None):
        self.clock = FakeClock()
        self.registry = ProviderRegistry(make_config(overrides), RouterState(), HttpClient(),
                                         "http://mock.invalid/v1", dict.fromkeys(ADAPTERS, MockAdapter()), self.clock)
        self.outcomes = Outcomes(self.registry, self.clock)
        self.changes: list[tuple[tuple[str, str], tuple[str, str], tuple[str, str]]] = []
        self.registry.on_circuit_change = lambda dep, before, after: self.changes.append((dep.key, before, after))

    def add(self, provider: str, *models: str, rpm: int | None = None, key: str | None = SECRET) -> list[Deployment]:
        url = "http://127.0.0.1:9/v1"
        deployments = {
            m: build_deployment(provider, m, sig.ModelSpec(name=m, rate_limits=sig.RateLimits(requests_per_minute=rpm)),
                                api="openai", type="local", base_url=url)
            for m in models
        }
        self.registry.add(ProviderEntry(name=provider, api="openai", type="local", base_url=url, models=deployments,
                                        source="runtime"), key)
        return list(deployments.values())

    def fail(self, dep: Deployment, code: str = "server_error", message: str = "upstream server error (500)") -> None:
        now = self.clock.now
        admission = self.outcomes.admit(dep, now)
        assert admission is not None, f"{dep.key} refused"
        self.outcomes.attempt_started(dep, now, 0)
        self.outcomes.record_failure(dep, admission, 5.0, now, ProviderError(code, message, True), 0)  # type: ignore[arg-type]

    def succeed(self, dep: Deployment, latency_ms: float) -> None:
        now = self.clock.now
        admission = self.outcomes.admit(dep, now)
        assert admission is not None, f"{dep.key} refused"
        self.outcomes.attempt_started(dep, now, 0)
        self.outcomes.record_success(dep, admission, latency_ms, Completion("hi", "stop", 10, 5), 0.0, 15, now)

    def stats(self, provider: str) -> sig.ProviderStats:
        return self.registry.provider_stats(provider)


@pytest.fixture
def rig(make_config: Any) -> Rig:
    return Rig(make_config)


def test_a_breaker_going_half_open_is_announced_and_reported(rig: Rig):
    [dep] = rig.add("p", "m")
    for _ in range(THRESHOLD):
        rig.fail(dep)
    assert rig.changes == [(("p", "m"), ("closed", "closed"), ("open", "closed"))]
    rig.clock.advance(20)
    [shown] = rig.stats("p").deployments
    assert (shown.model, shown.circuit, shown.retry_in_s) == ("m", "open", COOLDOWN_S - 20)
    rig.clock.advance(COOLDOWN_S - 20)
    assert rig.stats("p").deployments[0].retry_in_s == 0  # over: the next attempt probes it

    admission = rig.outcomes.admit(dep, rig.clock.now)

    assert admission == ("probe", "admitted")
    assert rig.changes[-1] == (("p", "m"), ("open", "closed"), ("half_open", "closed"))
    stats = rig.stats("p")
    assert (stats.circuit, stats.deployments[0].circuit, stats.deployments[0].retry_in_s) == (
        "half_open", "half_open", None)
    # Half open with its probe out, it refuses, and nothing moved: nothing more is announced.
    assert rig.outcomes.admit(dep, rig.clock.now) is None
    assert len(rig.changes) == 2


def test_an_admission_refused_after_the_provider_breaker_half_opened_is_announced(rig: Rig):
    flaky, down = rig.add("p", "flaky", "down")
    for _ in range(THRESHOLD):
        rig.fail(flaky)  # flaky's breaker opens (cooldown 60); the provider's stays closed
    rig.clock.advance(COOLDOWN_S)
    rig.fail(flaky)  # its probe fails: open again, for twice the cooldown (until t0 + 180)
    rig.clock.advance(1)
    for _ in range(THRESHOLD):
        rig.fail(down, "connection_error", "cannot reach provider")  # condemns the endpoint: until t0 + 121
    assert rig.registry.provider_breakers["p"].state == "open"
    rig.clock.advance(COOLDOWN_S)
    rig.changes.clear()

    # The provider's breaker admits a probe, flaky's still refuses: the probe is abandoned,
    # but the provider's breaker has moved to half open, and that is said.
    assert rig.outcomes.admit(flaky, rig.clock.now) is None

    assert rig.changes == [(("p", "flaky"), ("open", "open"), ("open", "half_open"))]
    stats = rig.stats("p")
    assert (stats.provider_circuit, stats.circuit) == ("half_open", "open")
    assert {d.model: d.retry_in_s for d in stats.deployments} == {"flaky": 180 - 121, "down": 0}


def test_the_last_error_is_kept_redacted_with_its_wall_clock_time(rig: Rig):
    [dep] = rig.add("p", "m")
    echoed = f"invalid header: Authorization: Bearer {SECRET} " + "x" * 400
    rig.clock.advance(12.5)
    rig.fail(dep, "server_error", echoed)

    state = rig.registry.state.provider_states["p"]
    health = rig.registry.health["p"]
    stats = rig.stats("p")
    assert (stats.last_error_code, stats.errors_by_code) == ("server_error", {"server_error": 1})
    assert stats.last_error.startswith("invalid header: Authorization:") and len(stats.last_error) <= 200
    expected = datetime.fromtimestamp(rig.registry.wall_offset + rig.clock.now, UTC)
    assert abs(datetime.fromisoformat(stats.last_error_at) - expected).total_seconds() < 0.001
    assert stats.last_error_at.endswith("Z") and state.last_error_at == stats.last_error_at
    # The key is nowhere: not in the state, the health machine, the report or its encoding.
    wire = sig.encode_event("provider_metrics", sig.ProviderMetrics(instance_id="i", window_s=1.0, stats=stats))
    for text in (state.last_error, state.health_detail, health.last_error, health.detail, stats.last_error,
                 wire.decode()):
        assert SECRET not in text
    assert SECRET[-12:] not in wire.decode()


def test_a_failed_probe_is_a_last_error_too_and_is_redacted_on_the_way_out(rig: Rig):
    rig.add("p", "m")
    rig.registry.probe_result("p", False, f"http://127.0.0.1:9/v1 said no to {SECRET}")
    stats = rig.stats("p")
    assert stats.last_error_code == "probe_failed" and "said no to" in stats.last_error
    assert SECRET not in stats.last_error and stats.last_error_at


def test_uptime_is_the_routable_share_of_the_time_since_first_seen(rig: Rig):
    [dep] = rig.add("p", "m")
    assert (rig.stats("p").uptime_ratio, rig.stats("p").uptime_s) == (1.0, 0.0)
    rig.clock.advance(10)
    for _ in range(THRESHOLD):
        rig.fail(dep, "connection_error", "cannot reach provider")  # the provider's breaker: unhealthy
    rig.clock.advance(30)
    stats = rig.stats("p")
    assert (stats.health, stats.provider_circuit) == ("unhealthy", "open")
    assert (stats.uptime_s, stats.uptime_ratio) == (10.0, 0.25)


def test_each_deployment_shows_its_headroom_latency_and_load(rig: Rig):
    limited, busy = rig.add("p", "limited", "busy", rpm=10)
    limiter = rig.registry.limiters[limited.key]
    for latency in (100.0, 200.0):
        assert limiter.admit(rig.clock.now, 15) == 0.0  # as the attempt chain takes its share
        rig.succeed(limited, latency)
    rig.outcomes.attempt_started(busy, rig.clock.now, 0)  # one in flight, not ended here

    shown = {d.model: d for d in rig.stats("p").deployments}
    assert shown["limited"].headroom == pytest.approx(0.8)  # 2 of 10 requests this minute
    assert (shown["limited"].latency_ms, shown["limited"].p95_ms) == (120.0, 160.0)  # EWMA 0.2; + 2 deviations
    assert (shown["limited"].in_flight, shown["busy"].in_flight) == (0, 1)
    assert (shown["busy"].headroom, shown["busy"].latency_ms, shown["busy"].p95_ms) == (1.0, None, None)


def test_an_unlimited_deployment_has_no_headroom_and_an_idle_provider_reports_little(rig: Rig):
    rig.add("p", "m")
    stats = rig.stats("p")
    [shown] = stats.deployments
    assert shown == sig.DeploymentMetrics(model="m")
    assert (stats.last_error, stats.last_error_at, stats.errors_by_code) == ("", "", {})
    # Defaults are left off the wire: an idle provider's report grows by little.
    encoded = msgspec.json.decode(msgspec.json.encode(stats))
    assert not {"last_error", "last_error_code", "last_error_at", "errors_by_code", "retries", "failovers",
                "hedges", "provider_circuit"} & set(encoded)
    assert encoded["deployments"] == [{"model": "m"}]


def test_old_and_new_readers_agree_on_the_fields_they_share():
    old = b'{"provider":"p","health":"healthy","circuit":"closed","enabled":true,"emulated":false,"requests":3}'
    stats = msgspec.json.decode(old, type=sig.ProviderStats)
    assert (stats.requests, stats.deployments, stats.uptime_ratio, stats.failovers) == (3, [], 1.0, 0)

    class OldProviderStats(msgspec.Struct, kw_only=True):
        provider: str
        requests: int = 0

    new = sig.ProviderStats(provider="p", health="healthy", circuit="open", enabled=True, emulated=False,
                            requests=3, failovers=2, deployments=[sig.DeploymentMetrics(model="m", circuit="open")])
    assert msgspec.json.decode(msgspec.json.encode(new), type=OldProviderStats) == OldProviderStats(
        provider="p", requests=3)


# --------------------------------------------------------------------------- the attempt chain's counters


def kinds_by_provider(responses: list[sig.LlmResponse]) -> defaultdict[str, Counter[str]]:
    """Retries, failovers and hedges per provider, as the answers' attempts list them (as the
    chain counts them: every attempt that is neither a retry nor a hedge, after a request's
    first, is a failover; a hedge may be listed before the attempt it raced)."""
    seen: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for response in responses:
        tried = [a for a in response.attempts if a.outcome != "skipped"]
        plain = 0
        for attempt in tried:
            kind = "hedges" if attempt.hedge else "retries" if attempt.retry else None
            if kind is None:
                plain += 1
                kind = "failovers" if plain > 1 else None
            if kind is not None:
                seen[attempt.provider][kind] += 1
    return seen


async def test_retries_failovers_and_hedges_are_counted_per_provider(fast):
    f = await fast.start({
        "router": {"retry": {"initial_s": 0.001, "max_s": 0.002}, "cache": {"enabled": False},
                   "hedging": {"delay": "immediately"}},
        "agents": {"hedger": {"strategy": "performance_optimized"}},
    })
    for provider, model in (("one", "m"), ("two", "m"), ("solo", "s")):
        assert (await f.register(provider, model)).accepted
    # Both servers of "m" refuse the model once (not worth a retry): whichever goes second
    # is a failover, then the request fails.
    gone = Behaviour(error=ProviderError("not_found", "upstream not found (404)", False, 404, fallback=True))
    f.mock.script(("one", "m"), gone)
    f.mock.script(("two", "m"), gone)
    responses = [await ask(f, model="m", content="first")]
    assert responses[0].error is not None and responses[0].error.code == "all_providers_failed"
    # The only server of "s" fails once, retryably: it is retried after a backoff.
    f.mock.script(("solo", "s"), [Behaviour(error=ProviderError("server_error", "upstream error (500)", True, 500)),
                                  Behaviour()])
    responses.append(await ask(f, model="s", content="second"))
    # A hedged request (parallel_requests): both start at once (each takes a moment to
    # answer, so the second starts before the first is back), the first answer wins.
    f.mock.script(("one", "m"), Behaviour(latency_s=0.05))
    f.mock.script(("two", "m"), Behaviour(latency_s=0.05))
    responses.append(await ask(f, agent_id="hedger", model="m", content="third"))
    assert [r.status for r in responses] == ["error", "ok", "ok"], [r.error for r in responses]

    listed = kinds_by_provider(responses)
    states = f.state.provider_states
    for provider in ("one", "two", "solo"):
        stats = f.agent.provider_stats(provider)
        counted = (stats.retries, stats.failovers, stats.hedges)
        assert counted == (states[provider].retries, states[provider].failovers, states[provider].hedges)
        want = listed[provider]
        assert counted == (want["retries"], want["failovers"], want["hedges"]), (provider, responses)
    m = f.metrics
    total = sum(listed.values(), Counter())
    assert (m.retries, m.failovers, m.hedges) == (total["retries"], total["failovers"], total["hedges"])
    assert (total["retries"], total["failovers"], total["hedges"]) == (1, 1, 1), listed
    assert listed["solo"] == Counter(retries=1)


async def ask(f: Any, **fields: Any) -> sig.LlmResponse:
    return await f.client.ask(f.client.new_request(**fields), timeout=WAIT)


# --------------------------------------------------------------------------- over a real nats-server


@pytest.mark.integration
async def test_a_failing_provider_shows_in_provider_metrics_over_the_bus(agents, client, emulator, subjects):
    agent = await agents.start({"router": {"metrics_interval_s": 0.1, "retry": {"initial_s": 0.01, "max_s": 0.05}}})
    health = await client.collect(subjects.provider_health)
    shaky_metrics = await client.collect(subjects.provider_metrics("shaky"))
    steady_metrics = await client.collect(subjects.provider_metrics("steady"))
    for provider in ("shaky", "steady"):
        answer = await client.control("provider_register", sig.ProviderRegister(
            provider=provider, base_url=emulator.url, type="local", models=[
                sig.ModelSpec(name="chat", model_id=f"{provider}-chat", capabilities=["general_reasoning"])]))
        assert answer.accepted, answer.errors
    emulator.set_fault("shaky-chat", 500)

    def opened(h: Any) -> bool:
        return isinstance(h, sig.ProviderHealth) and h.provider == "shaky" and h.circuit == "open"

    responses: list[sig.LlmResponse] = []
    async with asyncio.timeout(15):  # round robin gives shaky its turns: 3 failures open its breaker
        while not any(opened(h) for h in health.data):
            responses.append(await client.ask(client.new_request(model="chat")))
    assert all(r.status == "ok" and r.provider == "steady" for r in responses), responses
    on_shaky = [a for r in responses for a in r.attempts if a.provider == "shaky"]
    assert len(on_shaky) == THRESHOLD and {a.error.code for a in on_shaky} == {"server_error"}
    # A failed attempt on shaky is followed by steady (a failover) or, when its short backoff
    # is already over, by a retry of shaky first: the answers' attempts say which.
    listed = kinds_by_provider(responses)
    assert listed["steady"]["failovers"] >= 1 and "hedges" not in listed["steady"]

    shaky = (await shaky_metrics.wait_for(
        lambda m: m.stats.deployments and m.stats.deployments[0].circuit == "open")).stats
    assert (shaky.last_error_code, shaky.errors_by_code) == ("server_error", {"server_error": THRESHOLD})
    assert shaky.failures == THRESHOLD and shaky.health == "degraded" and shaky.last_error_at
    assert (shaky.retries, shaky.failovers) == (listed["shaky"]["retries"], listed["shaky"]["failovers"])
    [chat] = shaky.deployments
    assert chat.model == "chat" and 0 < chat.retry_in_s <= COOLDOWN_S
    steady = (await steady_metrics.wait_for(lambda m: m.stats.failovers == listed["steady"]["failovers"])).stats
    assert steady.successes == len(responses) and steady.deployments[0].circuit == "closed"
    assert agent.state.metrics.failovers == listed["steady"]["failovers"] + listed["shaky"]["failovers"]
