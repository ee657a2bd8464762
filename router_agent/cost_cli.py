"""``router-agent cost``: the cost report, asked of the routers on the bus.

One instance answers ``router_control.cost_report`` (the control service's queue group);
with the shared ledger its figures are every instance's. Exit codes as the rest of the CLI:
0 ok, 1 refused, 2 no answer, 3 cannot reach the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors

import signals as sig
from router_agent.bus import connect
from router_agent.config import NatsConfig


def add_parser(sub: Any, bus: Callable[[argparse.ArgumentParser], None]) -> None:
    cost = sub.add_parser("cost", help="print the cost report: spend by day, provider, model and agent; budgets")
    bus(cost)
    cost.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    cost.add_argument("--cached", action="store_true",
                      help="answer from the last periodic read of the other instances' spend")
    cost.add_argument("--json", action="store_true", help="print the cost_report signal as JSON")


def run(args: argparse.Namespace, url: str) -> int:
    return asyncio.run(_ask(args, url))


async def _ask(args: argparse.Namespace, url: str) -> int:
    subjects = sig.Subjects(args.prefix)
    nc = await connect(url, NatsConfig(), name="router-agent-cost")
    try:
        reply = await nc.request(
            f"{subjects.router_control}.cost_report",
            sig.encode_event("cost_query", sig.CostQuery(refresh=not args.cached), source="router-agent-cli"),
            timeout=args.timeout,
        )
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        print(f"router-agent: no cost report ({type(exc).__name__}; is a router running?)", file=sys.stderr)
        return 2
    finally:
        await nc.close()
    kind = msgspec.json.decode(reply.data).get("type", "")
    if ".cost_report." not in kind:
        result = sig.decode_data(reply.data, "control_result")
        for error in result.errors:
            print(f"router-agent: refused: {error.code}: {error.message}", file=sys.stderr)
        return 1
    report = sig.decode_data(reply.data, "cost_report")
    if args.json:
        print(json.dumps(msgspec.to_builtins(report)))
    else:
        print_report(report)
    return 0


def print_report(report: sig.CostReport) -> None:
    scope = "every instance (shared ledger)" if report.shared else "this instance only (in-memory ledger)"
    print(f"cost report from {report.instance_id}, {scope}; today {report.day} ({report.time_zone})")
    today = report.by_day.get(report.day, sig.CostLine())
    line = f"today: ${today.cost_usd:.6f} over {today.requests} billed attempt(s)"
    if report.projected_day_usd is not None:
        line += f", projected ${report.projected_day_usd:.2f} by the end of the day"
    print(line)
    if report.budgets:
        print("budgets:")
    for b in report.budgets:
        name = f"{b.scope} {b.name}".strip()
        print(f"  {name:<28} ${b.used_usd:.4f} of ${b.limit_usd:.2f} used, ${b.reserved_usd:.4f} in flight, "
              f"${b.remaining_usd:.4f} left  [{b.state}]")
    for title, lines in (("day", report.by_day), ("provider", report.by_provider),
                         ("model", report.by_model), ("agent", report.by_agent)):
        if not lines:
            continue
        print(f"{'by ' + title:<28} {'attempts':>9} {'input':>11} {'cached':>11} {'output':>11} {'USD':>14}")
        for key, c in lines.items():
            print(f"  {key:<26} {c.requests:>9} {c.input_tokens:>11} {c.cached_input_tokens:>11} "
                  f"{c.output_tokens:>11} {c.cost_usd:>14.6f}")
    t = report.total
    print(f"{'total':<28} {t.requests:>9} {t.input_tokens:>11} {t.cached_input_tokens:>11} "
          f"{t.output_tokens:>11} {t.cost_usd:>14.6f}")
