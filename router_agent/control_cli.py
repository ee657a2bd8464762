"""``router-agent control ...``: the control service from the command line.

``ping``, ``info`` and ``stats`` ask every instance (nats.micro's ``$SRV.<VERB>.llm-router-control``)
and print one answer per instance that uses the same subject prefix; they wait ``--timeout``
seconds for answers, as ``nats micro ping`` does. ``table``, ``set-primary``,
``override-strategy``, ``force-model`` and ``clear`` are requests to the service's endpoints,
which one instance answers. Exit codes as the rest of the CLI: 0 ok, 1 refused, 2 usage or
no answer, 3 cannot reach the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors

import signals as sig
from router_agent.bus import connect
from router_agent.config import NatsConfig
from router_agent.control_service import SERVICE_NAME

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 90, 90s, 30m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_parser(sub: Any, bus: Callable[[argparse.ArgumentParser], None]) -> None:
    control = sub.add_parser("control", help="change routing at run time (the control service)")
    actions = control.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser, timeout: float = 5.0) -> None:
        bus(p)
        p.add_argument("--timeout", type=float, default=timeout, help="seconds to wait for answers")
        p.add_argument("--json", action="store_true", help="print the answers as JSON")

    def change(p: argparse.ArgumentParser, reason_required: bool = True) -> None:
        common(p)
        p.add_argument("--reason", required=reason_required, default="", help="why (shown in the table and the event)")
        p.add_argument("--by", default=os.environ.get("USER", ""), help="who asks (default: $USER)")

    for verb in ("ping", "info", "stats"):
        common(actions.add_parser(verb, help=f"$SRV.{verb.upper()} of every control service instance"), 1.0)
    table = actions.add_parser("table", help="the current routing table and overrides")
    common(table)
    table.add_argument("--agent", default=None, help="only this agent")
    primary = actions.add_parser("set-primary", help="set an agent's primary model")
    primary.add_argument("agent"), primary.add_argument("model")
    primary.add_argument("--duration", type=duration, default=None, help="revert after (90s, 30m, 2h, 1d)")
    change(primary)
    strategy = actions.add_parser("override-strategy", help="override the strategy, globally or for one agent")
    strategy.add_argument("strategy")
    strategy.add_argument("--agent", default=None, help="only this agent (default: every agent)")
    strategy.add_argument("--duration", type=duration, default=None, help="revert after (90s, 30m, 2h, 1d)")
    change(strategy)
    force = actions.add_parser("force-model", help="force a model for one task id")
    force.add_argument("task"), force.add_argument("model")
    force.add_argument("--duration", type=duration, default=None, help="revert after (90s, 30m, 2h, 1d)")
    change(force)
    clear = actions.add_parser("clear", help="remove an override (strategy without KEY: the global one)")
    clear.add_argument("kind", choices=["primary", "strategy", "forced"])
    clear.add_argument("key", nargs="?", default=None, help="agent id or task id")
    change(clear, reason_required=False)


def run(args: argparse.Namespace, url: str) -> int:
    if args.action in ("ping", "info", "stats"):
        return asyncio.run(_discover(args, url))
    endpoint, signal, body = _request(args)
    try:
        data = msgspec.convert(body, sig.SIGNAL_TYPES[signal])
    except msgspec.ValidationError as exc:
        print(f"router-agent: invalid {args.action}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_ask(args, url, endpoint, signal, data))


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    who = {"requested_by": args.by} if getattr(args, "by", "") else {}
    if args.action == "table":
        return "table", "control_table", {"agent_id": args.agent} if args.agent else {}
    if args.action == "set-primary":
        body = {"agent_id": args.agent, "model": args.model, "reason": args.reason, "duration_s": args.duration}
        return "set_primary", "control_set_primary", {**_present(body), **who}
    if args.action == "override-strategy":
        body = {"strategy": args.strategy, "agent_id": args.agent, "reason": args.reason, "duration_s": args.duration}
        return "override_strategy", "control_override_strategy", {**_present(body), **who}
    if args.action == "force-model":
        body = {"task_id": args.task, "model": args.model, "reason": args.reason, "duration_s": args.duration}
        return "force_model", "control_force_model", {**_present(body), **who}
    body = {"kind": args.kind, "key": args.key, "reason": args.reason}
    return "clear", "control_clear", {**_present(body), **who}


def _present(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None and v != ""}


async def _ask(args: argparse.Namespace, url: str, endpoint: str, signal: str, data: Any) -> int:
    subjects = sig.Subjects(args.prefix)
    nc = await connect(url, NatsConfig(), name="router-agent-control")
    try:
        reply = await nc.request(
            f"{subjects.router_control}.{endpoint}", sig.encode_event(signal, data, source="router-agent-cli"),
            timeout=args.timeout,
        )
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        print(f"router-agent: no answer from the control service ({type(exc).__name__}; is a router running?)",
              file=sys.stderr)
        return 2
    finally:
        await nc.close()
    kind = msgspec.json.decode(reply.data).get("type", "")
    answer = sig.decode_data(reply.data, "routing_table" if ".routing_table." in kind else "control_result")
    if args.json:
        print(json.dumps(msgspec.to_builtins(answer)))
    elif isinstance(answer, sig.RoutingTable):
        _print_table(answer)
    else:
        _print_result(answer)
    return 0 if isinstance(answer, sig.RoutingTable) or answer.accepted else 1


def _print_result(result: sig.ControlResult) -> None:
    if not result.accepted:
        print(f"refused by {result.instance_id or 'the router'}:")
        for error in result.errors:
            print(f"  {error.code}: {error.message}{' at ' + error.field if error.field else ''}")
        return
    change = result.change
    assert change is not None
    what = change.model or change.strategy or ""
    key = change.key or "every agent"
    if change.action == "clear":
        print(f"cleared {change.kind} override for {key}" if result.changed else f"no {change.kind} override for {key}")
        return
    until = f"until {result.expires_at}" if result.expires_at else "until cleared"
    print(f"{change.kind} override for {key}: {what}, {until} (by {result.instance_id})")


def _print_table(table: sig.RoutingTable) -> None:
    print(f"instance {table.instance_id}: default strategy {table.default_strategy}, now {table.strategy}")
    print(f"{'agent':<20} {'strategy':<34} {'primary':<30} rules")
    for agent_id, row in table.agents.items():
        strategy = f"{row.strategy} ({row.strategy_source})"
        primary = f"{row.primary or '-'} ({row.primary_source})"
        print(f"{agent_id:<20} {strategy:<34} {primary:<30} {row.routing_rules}")
    if table.overrides:
        print("overrides:")
    for o in table.overrides:
        left = "until cleared" if o.expires_in_s is None else f"expires in {o.expires_in_s:.0f}s"
        print(f"  {o.kind:<8} {o.key or '(global)':<20} {o.model or o.strategy}  {left}  {o.reason}")


async def _discover(args: argparse.Namespace, url: str) -> int:
    prefix = sig.Subjects(args.prefix).prefix
    nc = await connect(url, NatsConfig(), name="router-agent-control")
    answers: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def on_answer(msg: Any) -> None:
        try:
            answer = json.loads(msg.data)
        except ValueError:
            return
        if (answer.get("metadata") or {}).get("subject_prefix", "") == prefix:
            answers.append(answer)

    try:
        await nc.subscribe(inbox, cb=on_answer)
        await nc.publish(f"$SRV.{args.action.upper()}.{SERVICE_NAME}", b"", reply=inbox)
        await asyncio.sleep(args.timeout)  # a discovery waits for every instance's answer, like `nats micro`
    finally:
        await nc.close()
    if not answers:
        print(f"router-agent: no control service answered within {args.timeout}s", file=sys.stderr)
        return 2
    for answer in sorted(answers, key=lambda a: a.get("metadata", {}).get("instance_id", "")):
        if args.json:
            print(json.dumps(answer))
            continue
        instance = answer.get("metadata", {}).get("instance_id", "?")
        print(f"{answer['name']} {answer['version']} id {answer['id']} instance {instance}")
        if args.action == "info":
            for e in answer.get("endpoints", []):
                print(f"  {e['name']:<18} {e['subject']} (queue {e['queue_group']})")
        elif args.action == "stats":
            for e in answer.get("endpoints", []):
                data = e.get("data") or {}
                print(f"  {e['name']:<18} requests {e['num_requests']}, accepted {data.get('accepted', 0)}, "
                      f"refused {data.get('refused', 0)}, avg {e['average_processing_time'] / 1000:.0f} us")
    return 0
