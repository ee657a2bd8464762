"""The runtime control service over a real nats-server: discovery, changes, the event, expiry.

Every agent here gets a ``FakeClock``: an override's expiry is reached by moving the clock,
never by waiting. Tests wait for the message they expect (an answer, the event, the other
instance's "applied" hook), never on a sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import msgspec.inspect as mi
import nats
import pytest

import signals as sig
from router_agent.agent import RouterAgent
from router_agent.control_service import ENDPOINTS, MAX_OVERRIDES, SERVICE_NAME, version
from tests.conftest import decode_any
from tests.fast import FakeClock
from tests.test_bus_permissions import login, router, secured_nats  # noqa: F401  (fixtures)
from tests.test_cli import run_cli
from tests.test_contract_bounds import _walk

pytestmark = pytest.mark.integration

Start = Callable[..., Awaitable[RouterAgent]]


async def call(nc, subjects: sig.Subjects, endpoint: str, body: Any, envelope: bool = False) -> tuple[Any, Any]:
    """One request to an endpoint; the decoded answer and the raw message (for its headers)."""
    if envelope:
        payload = sig.encode_event(ENDPOINTS[endpoint], body, source="ops-console")
    elif isinstance(body, bytes):
        payload = body
    else:
        payload = json.dumps(body).encode()
    msg = await nc.request(f"{subjects.router_control}.{endpoint}", payload, timeout=10)
    return decode_any(msg.data), msg


async def srv(nc, verb: str, agent: RouterAgent) -> dict[str, Any]:
    """``$SRV.<verb>`` addressed to this agent's service instance."""
    service_id = agent.control_service.service.id
    msg = await nc.request(f"$SRV.{verb}.{SERVICE_NAME}.{service_id}", b"", timeout=10)
    return json.loads(msg.data)


# --------------------------------------------------------------------------- discovery


async def test_ping_is_answered_with_the_service_name_and_the_instance(routers, operator):
    agent = await routers("ctl-a")
    answers: asyncio.Queue = asyncio.Queue()
    inbox = operator.new_inbox()
    await operator.subscribe(inbox, cb=answers.put)
    await operator.publish("$SRV.PING", b"", reply=inbox)  # every service on the bus answers
    async with asyncio.timeout(10):
        while True:
            ping = json.loads((await answers.get()).data)
            if ping["id"] == agent.control_service.service.id:
                break
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert ping["name"] == SERVICE_NAME == "llm-router-control"
    assert ping["version"] == version()
    assert ping["metadata"] == {"instance_id": "ctl-a", "subject_prefix": agent.subjects.prefix}


async def test_info_lists_every_endpoint_under_the_prefix(routers, operator):
    agent = await routers("ctl-a")
    info = await srv(operator, "INFO", agent)
    assert info["name"] == SERVICE_NAME
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert set(endpoints) == {"set_primary", "override_strategy", "force_model", "clear", "table", "cost_report"}
    for name, endpoint in endpoints.items():
        assert endpoint["subject"] == f"{agent.subjects.prefix}router_control.{name}"
        assert endpoint["queue_group"] == "router"
        assert endpoint["metadata"] == {"signal": ENDPOINTS[name]}


async def test_stats_count_requests_and_refusals(routers, operator, subjects):
    agent = await routers("ctl-a")
    await call(operator, subjects, "table", {})
    await call(operator, subjects, "set_primary", {"agent_id": "cto_agent", "model": "nope", "reason": "x"})
    stats = {e["name"]: e for e in (await srv(operator, "STATS", agent))["endpoints"]}
    assert stats["table"]["num_requests"] == 1 and stats["table"]["data"] == {"accepted": 1, "refused": 0}
    assert stats["set_primary"]["data"] == {"accepted": 0, "refused": 1}


async def test_the_service_stops_with_the_agent(routers, operator, subjects):
    agent = await routers("ctl-a")
    await agent.stop()
    with pytest.raises(nats.errors.NoRespondersError):
        await operator.request(f"{subjects.router_control}.table", b"{}", timeout=5)


# --------------------------------------------------------------------------- changes


async def test_a_strategy_override_is_applied_answered_published_and_shown(routers, operator, subjects):
    clock = FakeClock()
    agent = await routers("ctl-a", clock)
    events: asyncio.Queue = asyncio.Queue()
    await operator.subscribe(subjects.routing_control, cb=events.put)
    await operator.flush()

    result, msg = await call(operator, subjects, "override_strategy", {
        "strategy": "privacy_first", "duration_s": 7200, "reason": "audit", "requested_by": "ops",
    })

    assert isinstance(result, sig.ControlResult) and result.accepted, result.errors
    assert msg.headers is None or "Nats-Service-Error" not in msg.headers
    assert result.instance_id == "ctl-a" and result.changed and result.expires_at
    assert result.change == sig.RoutingChange(
        action="set", kind="strategy", strategy="privacy_first", duration_s=7200.0, reason="audit", requested_by="ops",
    )
    live = agent.state.routing_overrides.strategy_for("cto_agent", clock())
    assert (live.strategy, live.scope, live.expires_at) == ("privacy_first", None, clock() + 7200)

    event = decode_any((await asyncio.wait_for(events.get(), 10)).data)
    assert event == sig.RoutingControl(instance_id="ctl-a", change=result.change, expires_at=result.expires_at)

    table, _ = await call(operator, subjects, "table", {})
    assert isinstance(table, sig.RoutingTable)
    assert table.strategy == "privacy_first" and table.default_strategy == "round_robin"
    assert table.agents["cto_agent"].strategy == "privacy_first"
    assert table.agents["cto_agent"].strategy_source == "global_override"
    assert table.overrides == [sig.OverrideInfo(kind="strategy", strategy="privacy_first", reason="audit",
                                                expires_in_s=7200.0)]


async def test_set_primary_resolves_an_alias_and_the_table_shows_it(routers, operator, subjects):
    clock = FakeClock()
    agent = await routers("ctl-a", clock)
    result, _ = await call(operator, subjects, "set_primary",
                           {"agent_id": "cto_agent", "model": "llama", "reason": "cost review"}, envelope=True)
    assert result.accepted, result.errors
    assert result.change.model == "llama-3-70b"  # the alias of models.yaml
    assert result.change.requested_by == "ops-console"  # the CloudEvent's source stands in
    assert agent.state.routing_overrides.primary_for("cto_agent", clock()).model == "llama-3-70b"
    table, _ = await call(operator, subjects, "table", {"agent_id": "cto_agent"}, envelope=True)
    row = table.agents["cto_agent"]
    assert (row.primary, row.primary_source, row.routing_rules) == ("llama-3-70b", "override", 3)
    assert row.model_preferences["primary"] == "claude-3-opus"
    assert list(table.agents) == ["cto_agent"]


async def test_force_model_and_clear(routers, operator, subjects):
    clock = FakeClock()
    agent = await routers("ctl-a", clock)
    result, _ = await call(operator, subjects, "force_model",
                           {"task_id": "task-9", "model": "gpt-4-turbo", "reason": "repro", "duration_s": 600})
    assert result.accepted, result.errors
    assert agent.state.routing_overrides.forced_for("task-9", clock()).model == "gpt-4-turbo"
    cleared, _ = await call(operator, subjects, "clear", {"kind": "forced", "key": "task-9"})
    assert cleared.accepted and cleared.changed
    assert agent.state.routing_overrides.forced_for("task-9", clock()) is None
    again, _ = await call(operator, subjects, "clear", {"kind": "forced", "key": "task-9"})
    assert again.accepted and not again.changed  # nothing left: accepted, nothing published


async def test_an_override_expires_when_the_clock_passes_it(routers, operator, subjects):
    clock = FakeClock()
    agent = await routers("ctl-a", clock)
    result, _ = await call(operator, subjects, "override_strategy", {
        "strategy": "cost_optimized", "agent_id": "qa_agent", "duration_s": 60, "reason": "budget"})
    assert result.accepted, result.errors
    clock.advance(59.5)
    table, _ = await call(operator, subjects, "table", {})
    assert table.agents["qa_agent"].strategy == "cost_optimized"
    assert table.overrides[0].expires_in_s == 0.5
    clock.advance(0.5)
    assert agent.state.routing_overrides.strategy_for("qa_agent", clock()) is None
    table, _ = await call(operator, subjects, "table", {})
    assert (table.agents["qa_agent"].strategy, table.agents["qa_agent"].strategy_source) == ("round_robin", "config")
    assert table.overrides == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "field"),
    [
        ("set_primary", {"agent_id": "cto_agent", "model": "no-such-model", "reason": "x"}, "invalid_request", "$.model"),
        ("set_primary", {"agent_id": "ghost_agent", "model": "gpt-4-turbo", "reason": "x"}, "invalid_request",
         "$.agent_id"),
        ("set_primary", {"agent_id": "cto_agent", "model": "gpt-4-turbo"}, "invalid_request", "$.reason"),
        ("override_strategy", {"strategy": "fastest_please", "reason": "x"}, "invalid_request", "$.strategy"),
        ("override_strategy", {"strategy": "privacy_first", "reason": "x", "duration_s": 0}, "invalid_request",
         "$.duration_s"),
        ("override_strategy", {"strategy": "privacy_first", "reason": "x", "duration_s": 31 * 86400},
         "invalid_request", "$.duration_s"),
        ("override_strategy", {"strategy": "privacy_first", "reason": "x", "agent_id": "a b"}, "invalid_request",
         "$.agent_id"),
        ("force_model", {"task_id": "t", "model": "gpt-4-turbo", "reason": "x", "colour": "red"}, "invalid_request",
         "$.colour"),
        ("clear", {"kind": "forced"}, "invalid_request", "$.key"),
        ("clear", {"kind": "weights", "key": "a"}, "invalid_request", "$.kind"),
        ("table", b"{not json", "malformed_json", None),
        ("table", b"[1, 2]", "invalid_request", "$"),
    ],
)
async def test_bad_input_gets_a_typed_error_and_changes_nothing(routers, operator, subjects, endpoint, body, code,
                                                                 field):
    agent = await routers("ctl-a")
    result, msg = await call(operator, subjects, endpoint, body)
    assert isinstance(result, sig.ControlResult)
    assert not result.accepted and result.action == endpoint and result.instance_id == "ctl-a"
    assert result.errors[0].code == code
    assert result.errors[0].field == field
    assert msg.headers["Nats-Service-Error-Code"] == "400"
    assert len(agent.state.routing_overrides) == 0
    assert agent.state.metrics.invalid_by_code[code] == 1


async def test_bad_input_in_a_cloudevent_names_the_field_under_data(routers, operator, subjects):
    await routers("ctl-a")
    payload = json.loads(sig.encode_event("control_force_model", sig.ControlForceModel(
        task_id="t", model="gpt-4-turbo", reason="x")))
    payload["data"]["model"] = "nope"
    result, _ = await call(operator, subjects, "force_model", json.dumps(payload).encode())
    assert [(e.code, e.field) for e in result.errors] == [("invalid_request", "$.data.model")]


async def test_the_table_is_bounded(routers, operator, subjects, monkeypatch):
    monkeypatch.setattr("router_agent.control_service.MAX_OVERRIDES", 2)
    await routers("ctl-a")
    for task in ("t1", "t2"):
        assert (await call(operator, subjects, "force_model", {"task_id": task, "model": "llama", "reason": "x"}))[0].accepted
    full, _ = await call(operator, subjects, "force_model", {"task_id": "t3", "model": "llama", "reason": "x"})
    assert not full.accepted and "full" in full.errors[0].message
    replaced, _ = await call(operator, subjects, "force_model", {"task_id": "t1", "model": "gpt-4-turbo", "reason": "y"})
    assert replaced.accepted  # replacing an entry adds none
    assert MAX_OVERRIDES >= 1000  # the real bound


# --------------------------------------------------------------------------- several instances


async def test_a_second_instance_applies_the_change_from_the_event(routers, operator, subjects):
    clock_a, clock_b = FakeClock(), FakeClock(5_000.0)
    a = await routers("ctl-a", clock_a)
    b = await routers("ctl-b", clock_b)
    applied: dict[str, asyncio.Future] = {}
    for agent in (a, b):
        applied[agent.instance_id] = asyncio.get_running_loop().create_future()
        agent.control_service.on_applied = lambda event, f=applied[agent.instance_id]: f.done() or f.set_result(event)

    result, _ = await call(operator, subjects, "override_strategy",
                           {"strategy": "privacy_first", "agent_id": "cto_agent", "duration_s": 60, "reason": "audit"})
    assert result.accepted, result.errors
    origin = {"ctl-a": a, "ctl-b": b}[result.instance_id]
    other = b if origin is a else a
    event = await asyncio.wait_for(applied[other.instance_id], 10)
    assert event.instance_id == origin.instance_id
    live = other.state.routing_overrides.strategy_for("cto_agent", other.control_service.clock())
    assert live.strategy == "privacy_first"
    # Each instance counts the duration on its own clock, from when it applied the change.
    assert live.expires_at == other.control_service.clock() + 60
    assert not applied[origin.instance_id].done()  # an instance ignores its own event


async def test_an_instance_refuses_an_event_it_cannot_apply(routers, operator, subjects):
    agent = await routers("ctl-a")
    errors = asyncio.Queue()
    await operator.subscribe(subjects.router_error, cb=errors.put)
    await operator.flush()
    bogus = sig.RoutingControl(instance_id="ctl-elsewhere", change=sig.RoutingChange(
        action="set", kind="primary", key="cto_agent", model="not-served-here", reason="x"))
    await operator.publish(subjects.routing_control, sig.encode_event("routing_control", bogus))
    error = decode_any((await asyncio.wait_for(errors.get(), 10)).data)
    assert error.subject == subjects.routing_control
    assert (error.error.code, error.error.field) == ("invalid_request", "$.data.change.model")
    assert len(agent.state.routing_overrides) == 0


# --------------------------------------------------------------------------- the contract


def test_every_number_string_and_collection_in_control_input_is_bounded():
    unbounded = []
    for signal in (*ENDPOINTS.values(), "routing_control"):
        for path, info in _walk(mi.type_info(sig.SIGNAL_TYPES[signal]), signal, set()):
            if isinstance(info, (mi.IntType, mi.FloatType)):
                if (info.ge is None and info.gt is None) or (info.le is None and info.lt is None):
                    unbounded.append(path)
            elif isinstance(info, (mi.StrType, mi.ListType, mi.DictType)) and info.max_length is None:
                unbounded.append(path)
    assert unbounded == []


def test_the_snapshot_carries_the_overrides(make_config):
    clock = FakeClock()
    agent = RouterAgent(make_config(), nc=None, clock=clock)
    agent.state.routing_overrides.set_strategy(None, "privacy_first", 60, "audit", clock())
    snapshot = agent.snapshot()
    assert snapshot["routing_overrides"]["global_strategy"]["strategy"] == "privacy_first"
    assert msgspec.json.encode(snapshot)


# --------------------------------------------------------------------------- the CLI


async def test_the_cli_sets_reads_and_discovers(routers, nats_url, prefix):
    agent = await routers("ctl-cli")
    bus = ("--nats-url", nats_url, "--prefix", prefix)
    code, out, err = await run_cli("control", "override-strategy", "privacy_first", "--duration", "2h",
                                   "--reason", "audit", "--by", "ops", *bus)
    assert code == 0, err
    assert out.startswith("strategy override for every agent: privacy_first, until ")
    assert agent.state.routing_overrides.global_strategy.strategy == "privacy_first"

    code, out, err = await run_cli("control", "table", "--json", *bus)
    assert code == 0, err
    table = msgspec.convert(json.loads(out), sig.RoutingTable)
    assert table.strategy == "privacy_first" and table.overrides[0].expires_in_s == 7200.0

    code, out, _ = await run_cli("control", "set-primary", "cto_agent", "no-such-model", "--reason", "x", *bus)
    assert code == 1
    assert "refused by ctl-cli" in out and "no-such-model" in out

    code, out, err = await run_cli("control", "info", "--timeout", "0.5", *bus)
    assert code == 0, err
    assert f"{SERVICE_NAME} {version()} id {agent.control_service.service.id} instance ctl-cli" in out
    assert f"{prefix}router_control.set_primary (queue router)" in out


# --------------------------------------------------------------------------- behind the bus permissions

async def test_operators_use_the_control_service_and_agents_cannot(router, login, subjects):  # noqa: F811
    agent, router_refusals = router
    operator_nc, operator_refusals = await login("operator", "NATS_OPERATOR_PASSWORD")
    events: asyncio.Queue = asyncio.Queue()
    await operator_nc.subscribe(subjects.routing_control, cb=events.put)
    await operator_nc.flush()

    result, _ = await call(operator_nc, subjects, "override_strategy",
                           {"strategy": "privacy_first", "agent_id": "cto_agent", "reason": "audit"})
    assert result.accepted, result.errors
    assert decode_any((await asyncio.wait_for(events.get(), 10)).data).change == result.change
    ping = await srv(operator_nc, "PING", agent)
    assert ping["name"] == SERVICE_NAME

    cto, cto_refusals = await login("cto_agent", "NATS_AGENT_CTO_AGENT_PASSWORD")
    for subject in (f"{subjects.router_control}.clear", subjects.routing_control):
        await cto.publish(subject, b"{}")
        await cto_refusals.wait_for(f'publish to "{subject}"')
    await operator_nc.publish(subjects.routing_control, b"{}")  # only routers announce changes
    await operator_refusals.wait_for(f'publish to "{subjects.routing_control}"')
    assert agent.state.routing_overrides.strategy_for("cto_agent", 0.0).strategy == "privacy_first"
    assert router_refusals.seen == []
