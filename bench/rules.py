"""``python -m bench.rules``: what a rule condition costs per evaluation, for every shipped one.

    python -m bench.rules                      every condition in config/agents.yaml and routing.yaml
    python -m bench.rules --number 10000 --repeat 3
    python -m bench.rules --config some/dir    another config folder

For each condition it prints the parse time (once per config load) and the time of one
``rule.evaluate(context)``, best of ``--repeat`` runs of ``--number`` calls each (``timeit``),
against two contexts: every field the rule reads present, and every field absent. The first
rows are baselines measured the same way: an empty call and one ``dict.get``, the floor any
evaluator pays. Figures are printed, never asserted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from router_agent.core.rules import parse

CONFIG = Path(__file__).resolve().parent.parent / "config"

PRESENT: dict[str, Any] = {
    "task.type": "code_generation", "task.complexity": 9, "task.privacy_level": "high",
    "task.critical": True, "task.involves_ui_design": True, "task.requires_reasoning": False,
    "data.contains_pii": False, "model.id": "llama-3-70b", "model.provider": "local",
    "model.type": "local", "model.capabilities": ["code_generation", "general_reasoning"],
    "model.rate_limit_approaching": False, "cost_limit_reached": False, "budget_mode": True,
    "daily_cost": 85.0, "budget": 100.0,
}
"""A request context where every default field is present (values chosen to make rules fire)."""


def shipped_conditions(config: Path = CONFIG) -> list[tuple[str, str]]:
    """``(where, condition)`` for every rule condition in ``agents.yaml`` and ``routing.yaml``."""
    found: list[tuple[str, str]] = []
    agents = yaml.safe_load((config / "agents.yaml").read_text(encoding="utf-8")) or {}
    for agent_id, agent in (agents.get("agents") or {}).items():
        for i, rule in enumerate(agent.get("routing_rules") or []):
            found.append((f"agents.yaml: agents.{agent_id}.routing_rules[{i}]", rule["condition"]))
    routing = yaml.safe_load((config / "routing.yaml").read_text(encoding="utf-8")) or {}
    for i, rule in enumerate((routing.get("routing") or {}).get("global_rules") or []):
        found.append((f"routing.yaml: routing.global_rules[{i}]", rule["condition"]))
    return found


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in µs per call."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m bench.rules", description=__doc__.split("\n")[0])
    ap.add_argument("--number", type=int, default=200_000, help="calls per run (default 200000)")
    ap.add_argument("--repeat", type=int, default=7, help="runs; the best is kept (default 7)")
    ap.add_argument("--config", type=Path, default=CONFIG, help="config folder")
    args = ap.parse_args(argv)
    n, r = args.number, args.repeat
    present, absent = PRESENT, {}

    def noop(ctx: dict[str, Any]) -> bool:
        return True

    print(f"rule evaluation, best of {r} x {n} calls (timeit), µs per call")
    print(f"{'baseline: empty call':58} {best_us(lambda: noop(present), n, r):8.3f}")
    print(f"{'baseline: one dict.get':58} {best_us(lambda: present.get('budget'), n, r):8.3f}")
    print()
    print(f"{'condition':44} {'parse':>8} {'present':>8} {'absent':>8}  result (present/absent)")
    rows = []
    for where, cond in shipped_conditions(args.config):
        parse_us = best_us(lambda c=cond: parse(c), max(n // 100, 1), r)
        f = parse(cond).evaluate
        p_us = best_us(lambda f=f: f(present), n, r)
        a_us = best_us(lambda f=f: f(absent), n, r)
        row = {"where": where, "condition": cond, "parse_us": parse_us, "present_us": p_us,
               "absent_us": a_us, "present": f(present), "absent": f(absent)}
        rows.append(row)
        print(f"{cond:44} {parse_us:8.2f} {p_us:8.3f} {a_us:8.3f}  {row['present']}/{row['absent']}")
    if rows:
        worst = max(max(row["present_us"], row["absent_us"]) for row in rows)
        print(f"\n{len(rows)} conditions; slowest evaluation {worst:.3f} µs (the timeit loop's own "
              "call is included, see the empty-call baseline)")
    return rows


if __name__ == "__main__":
    main()
