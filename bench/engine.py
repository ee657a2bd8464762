"""``python -m bench.engine``: what one routing decision costs, by registry size and strategy.

    python -m bench.engine                         10, 100 and 1,000 models, every strategy
    python -m bench.engine --models 10,1000 --strategies round_robin,balanced --number 2000

Each row is one call of ``core.engine.decide`` (the whole pipeline: facts, global rules,
candidate gathering, hard constraints, scoring, the strategy's order and per-model rules)
with the shipped policy (``config/``) over a synthetic registry of N models, half cloud and
half local, every one healthy and observed. The request names no model and comes from an
agent without preferences, so every model of the registry is a candidate: the worst case.
"PII excluded" scans nothing (the agent switched detection off); the PII scan has its own
bench (``python -m bench.pii``) and the last column shows the decision with it on, for a
short prompt. Best of ``--repeat`` runs of ``--number`` calls, in µs per decision.
Figures are printed, never asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from router_agent.config import load_config
from router_agent.core.breaker import Breaker
from router_agent.core.engine import decide
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats
from router_agent.core.policy import BUILDING_BLOCKS, build_policy
from router_agent.core.routing import ProviderView
from signals import ChatMessage, LlmRequest, Task

CAPS = ("code_generation", "general_reasoning", "code_analysis", "test_generation", "multilingual")
PROMPT = "Write a function that parses ISO dates and returns the weekday, with tests."


def registry(n: int, now: float) -> SimpleNamespace:
    rnd = random.Random(n)
    by_model: dict[str, list[Deployment]] = {}
    stats: dict[tuple[str, str], DeploymentStats] = {}
    limiters: dict[tuple[str, str], DeploymentLimiter] = {}
    views: dict[str, ProviderView] = {}
    breakers: dict[tuple[str, str], Breaker] = {}
    for i in range(n):
        cloud = i % 2 == 0
        provider = f"p{i % 8}{'c' if cloud else 'l'}"
        dep = Deployment(
            provider=provider, model=f"model-{i}", model_id=f"model-{i}", api="openai",
            type="cloud" if cloud else "local", base_url="http://127.0.0.1:9/v1",
            capabilities=frozenset(rnd.sample(CAPS, 3)), price_in=0.01 if cloud else 0.0,
            price_out=0.03 if cloud else 0.0, context_window=128_000, requests_per_minute=1000,
            tokens_per_minute=1_000_000, tokens_per_second=None if cloud else 40.0,
        )
        by_model[dep.model] = [dep]
        seen = stats[dep.key] = DeploymentStats()
        seen.started()
        seen.succeeded(rnd.uniform(150, 900))
        limiters[dep.key] = DeploymentLimiter.per_minute(dep.requests_per_minute, dep.tokens_per_minute, now - 5.0)
        views[provider] = ProviderView()
        breakers[dep.key] = Breaker()
    # Like the agent, routing is given only the breakers that are not closed (none here).
    tripped = {key: b for key, b in breakers.items() if b.state != "closed"}
    return SimpleNamespace(deployments_by_model=by_model, default_pool=list(by_model), views=views,
                           stats=stats, breakers=breakers, tripped=tripped, limiters=limiters,
                           pool_deployments=[d for deps in by_model.values() for d in deps])


def best_us(fn: Any, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="10,100,1000", help="registry sizes (default 10,100,1000)")
    ap.add_argument("--strategies", default=",".join(BUILDING_BLOCKS))
    ap.add_argument("--number", type=int, default=0, help="calls per run (default: ~0.2 s worth)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    config = load_config()
    agents = {a: c.model_dump() for a, c in config.agents.items()}
    agents["bench"] = {"pii_detection": False}
    agents["bench_pii"] = {"pii_detection": True}
    routing = config.routing.model_dump()
    now = 10_000.0
    rows = []
    print(f"{'models':>7} {'strategy':<18} {'µs/decision (PII excluded)':>27} {'with PII scan':>14}")
    for n in (int(x) for x in args.models.split(",")):
        reg = registry(n, now)
        for strategy in args.strategies.split(","):
            policy = build_policy(agents, {**routing, "default_strategy": strategy}, reg.deployments_by_model)
            rng = random.Random(7)
            figures = []
            for agent in ("bench", "bench_pii"):
                request = LlmRequest(request_id="r", agent_id=agent, messages=[ChatMessage(role="user", content=PROMPT)],
                                     task=Task(type="code_generation"))

                def one(request: LlmRequest = request, policy: Any = policy, reg: Any = reg, rng: Any = rng) -> None:
                    decide(request, policy=policy, catalog=reg, aliases={}, breakers=reg.tripped, overrides=None,
                           daily_cloud_cost=10.0, now=now, rng=rng, cursor=3, limit=3)

                number = args.number or max(20, int(200_000 / n))
                figures.append(best_us(one, number, args.repeat))
            rows.append({"models": n, "strategy": strategy, "us": figures[0], "us_with_pii": figures[1]})
            print(f"{n:>7} {strategy:<18} {figures[0]:>27.1f} {figures[1]:>14.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
