"""Each building-block strategy through the engine (core/engine.decide), distributions
checked under fixed seeds: a draw's share over n decisions is compared with its expected
probability within ~4.5 standard deviations, so the bounds hold for any seed and are tight
enough to catch a wrong split. Nothing here is timed."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from router_agent.core.model import CAPACITY
from router_agent.core.observed import DeploymentStats
from router_agent.core.policy import BUILDING_BLOCKS, StrategySpec
from router_agent.core.routing import ProviderView
from router_agent.core.strategies import ADAPTIVE_FLOOR, CLOUD_PRIOR_MS
from signals import Params, Requirements, Task
from tests.test_engine import catalog, dep, first, models, policy_of, req, run

SEED = 20240601


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def firsts(policy, cat, n: int, request=None, seed: int = SEED, **kw) -> Counter:
    """First choices over n decisions sharing one random source (as the planner does)."""
    rng = random.Random(seed)
    request = request if request is not None else req("x")
    return Counter(first(run(request, cat, policy, rng=rng, cursor=i, **kw)) for i in range(n))


def block(name: str, names, **raw) -> object:
    return policy_of({"default_strategy": name, "strategies": {name: raw}}, {}, names)


ABC = [dep("a"), dep("b"), dep("c")]


@pytest.mark.parametrize("name", BUILDING_BLOCKS)
def test_every_building_block_is_selectable_and_keeps_every_candidate(name):
    cat = catalog([dep("a", "cloud", price_in=1.0), dep("b", "local"), dep("c", "cloud", caps={"x"})])
    plan = run(req("x"), cat, block(name, ["a", "b", "c"]))
    assert plan.strategy == name and sorted(models(plan)) == ["a", "b", "c"]
    assert plan.decided_by == "strategy"


# --------------------------------------------------------------------------- round robin


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_round_robin_is_exactly_even_over_every_n_cursors(n):
    deps = [dep(f"m{i}") for i in range(n)]
    counts = Counter(first(run(req("x"), catalog(deps), cursor=c)) for c in range(40 * n))
    assert counts == Counter({d.model: 40 for d in deps})


def test_round_robin_fallbacks_are_the_rotation():
    plan = run(req("x"), catalog(ABC), cursor=4)
    assert models(plan) == ["b", "c", "a"]


def test_weighted_round_robin_spreads_by_provider_weight_over_cursors():
    cat = catalog(ABC, views={"p-a": ProviderView(weight=5.0), "p-b": ProviderView(weight=3.0),
                              "p-c": ProviderView(weight=2.0)})
    counts = Counter(first(run(req("x"), cat, cursor=c)) for c in range(1000))
    # a golden-ratio walk: low discrepancy, so much tighter than a random draw
    assert abs(counts["a"] - 500) <= 5 and abs(counts["b"] - 300) <= 5 and abs(counts["c"] - 200) <= 5


# --------------------------------------------------------------------------- weighted / A/B


@pytest.mark.parametrize("seed", [1, SEED])
def test_weighted_model_weights_split_first_choices_within_bounds(seed):
    policy = block("weighted", ["a", "b", "c"], model_weights={"a": 70, "b": 20, "c": 10})
    n = 10_000
    counts = firsts(policy, catalog(ABC), n, seed=seed)
    for model, p in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        assert within(counts[model], n, p), counts


def test_a_model_without_weight_is_a_fallback_only():
    policy = block("weighted", ["a", "b", "c"], model_weights={"a": 1, "b": 1})
    rng = random.Random(SEED)
    for i in range(500):
        plan = run(req("x"), catalog(ABC), policy, rng=rng, cursor=i)
        assert models(plan)[-1] == "c" and set(models(plan)) == {"a", "b", "c"}


def test_weighted_multiplies_model_weights_by_provider_weights():
    policy = block("weighted", ["a", "b"], model_weights={"a": 1, "b": 1})
    cat = catalog(ABC[:2], views={"p-a": ProviderView(weight=3.0)})
    n = 8000
    counts = firsts(policy, cat, n)
    assert within(counts["a"], n, 0.75), counts


def test_weighted_without_model_weights_splits_evenly():
    n = 9000
    counts = firsts(block("weighted", []), catalog(ABC), n)
    assert all(within(counts[m], n, 1 / 3) for m in "abc"), counts


def test_weighted_fallbacks_follow_weight():
    policy = block("weighted", ["a", "b", "c"], model_weights={"a": 1, "b": 5, "c": 3})
    rng = random.Random(SEED)
    for i in range(200):
        ordered = models(run(req("x"), catalog(ABC), policy, rng=rng))
        rest = ordered[1:]
        weights = {"a": 1, "b": 5, "c": 3}
        assert [weights[m] for m in rest] == sorted((weights[m] for m in rest), reverse=True)


AB = {"a": 30, "b": 70}


def sticky_policy(weights=AB):
    return block("weighted", list(weights), model_weights=weights, sticky_key="user")


def test_sticky_ab_gives_the_same_user_the_same_arm_whatever_the_seed_or_cursor():
    policy = sticky_policy()
    cat = catalog(ABC[:2])
    for u in range(300):
        request = req("x", metadata={"user": f"user-{u}"})
        arms = {first(run(request, cat, policy, seed=s, cursor=s * 13)) for s in range(6)}
        assert len(arms) == 1, (u, arms)


def test_sticky_ab_splits_users_by_weight():
    policy = sticky_policy()
    cat = catalog(ABC[:2])
    n = 6000
    counts = Counter(first(run(req("x", metadata={"user": f"user-{u}"}), cat, policy)) for u in range(n))
    assert within(counts["a"], n, 0.3), counts
    # e-mail-like keys too (a hash, not the key's shape, decides)
    counts = Counter(first(run(req("x", metadata={"user": f"{u}@corp"}), cat, policy)) for u in range(n))
    assert within(counts["a"], n, 0.3), counts


def test_sticky_ab_without_the_key_draws_at_random_by_weight():
    policy = sticky_policy()
    n = 8000
    counts = firsts(policy, catalog(ABC[:2]), n, request=req("x", metadata={"team": "t"}))
    assert within(counts["a"], n, 0.3), counts


def test_sticky_ab_is_a_split_of_users_not_of_requests():
    # two users with a fixed arm each keep it over many requests while others spread
    policy = sticky_policy({"a": 50, "b": 50})
    cat = catalog(ABC[:2])
    per_user = {u: Counter(first(run(req("x", metadata={"user": u}), cat, policy, seed=s)) for s in range(50))
                for u in ("alice", "bob", "carol", "dave")}
    assert all(len(c) == 1 and sum(c.values()) == 50 for c in per_user.values())


def test_ab_split_from_the_shipped_config_format(tmp_path):
    from router_agent.config import load_config
    overlay = tmp_path / "ab.yaml"
    overlay.write_text(
        "routing:\n  default_strategy: ab\n  strategies:\n    ab:\n      base: weighted\n"
        "      sticky_key: user\n      model_weights: {gpt-4-turbo: 90, claude-3-opus: 10}\n")
    config = load_config(environment="", overlays=[overlay])
    from tests.test_engine import shipped_catalog
    cat = shipped_catalog(config)
    n = 4000
    counts = Counter(first(run(req("someone", metadata={"user": f"u{u}"}), cat, config.policy)) for u in range(n))
    assert set(counts) == {"gpt-4-turbo", "claude-3-opus"}
    assert within(counts["claude-3-opus"], n, 0.1), counts


# --------------------------------------------------------------------------- least loaded


def test_least_loaded_follows_in_flight_relative_to_capacity():
    local, cloud = dep("l", "local"), dep("c", "cloud")
    policy = block("least_loaded", [])
    # local capacity 4, cloud 64: 2 local in flight (0.5) is busier than 16 cloud (0.25)
    stats = {local.key: DeploymentStats(in_flight=2), cloud.key: DeploymentStats(in_flight=16)}
    assert models(run(req("x"), catalog([local, cloud], stats=stats), policy)) == ["c", "l"]
    stats[cloud.key] = DeploymentStats(in_flight=48)  # 0.75
    assert models(run(req("x"), catalog([local, cloud], stats=stats), policy)) == ["l", "c"]
    assert CAPACITY == {"local": 4, "cloud": 64}


def test_least_loaded_orders_every_candidate_by_load_then_cost():
    deps = [dep(f"m{i}", price_in=float(i)) for i in range(5)]
    loads = [3, 0, 7, 0, 1]
    stats = {d.key: DeploymentStats(in_flight=x) for d, x in zip(deps, loads)}
    plan = run(req("x"), catalog(deps, stats=stats), block("least_loaded", []))
    assert models(plan) == ["m1", "m3", "m4", "m0", "m2"]


def test_least_loaded_moves_traffic_as_load_changes():
    a, b = dep("a"), dep("b")
    stats = {a.key: DeploymentStats(), b.key: DeploymentStats()}
    cat = catalog([a, b], stats=stats)
    policy = block("least_loaded", [])
    chosen = []
    for _ in range(20):  # each choice takes a slot; nothing ends: they alternate
        plan = run(req("x"), cat, policy)
        chosen.append(first(plan))
        stats[plan.ordered[0].dep.key].in_flight += 1
    assert Counter(chosen) == Counter({"a": 10, "b": 10})


# --------------------------------------------------------------------------- cost optimized


def test_cost_optimized_picks_the_cheapest_estimate_for_this_request():
    # in-heavy vs out-heavy prices: which is cheaper depends on the request's shape
    in_cheap = dep("in-cheap", price_in=0.001, price_out=0.1)
    out_cheap = dep("out-cheap", price_in=0.1, price_out=0.001)
    policy = block("cost_optimized", [])
    cat = catalog([in_cheap, out_cheap])
    long_prompt = req("x", "y" * 40_000, params=Params(max_tokens=10))
    short_prompt = req("x", "y", params=Params(max_tokens=4000))
    assert models(run(long_prompt, cat, policy)) == ["in-cheap", "out-cheap"]
    assert models(run(short_prompt, cat, policy)) == ["out-cheap", "in-cheap"]


def test_cost_optimized_orders_all_by_estimate():
    deps = [dep(f"m{i}", price_in=p, price_out=p) for i, p in enumerate([0.5, 0.0, 3.0, 0.01])]
    plan = run(req("x"), catalog(deps), block("cost_optimized", []))
    assert models(plan) == ["m1", "m3", "m0", "m2"]
    assert [c.estimate for c in plan.ordered] == sorted(c.estimate for c in plan.ordered)


# --------------------------------------------------------------------------- performance first


def perf_world(latencies):
    deps = [dep(f"m{i}") for i in range(len(latencies))]
    stats = {d.key: DeploymentStats(latency_ms=ms) for d, ms in zip(deps, latencies) if ms is not None}
    return catalog(deps, stats=stats)


def test_performance_first_with_two_candidates_always_picks_the_faster():
    counts = firsts(block("performance_first", []), perf_world([300.0, 100.0]), 500)
    assert counts == Counter({"m1": 500})


def test_performance_first_power_of_two_choices_does_not_stampede_the_fastest():
    # ranked m2 < m0 < m3 < m1: the first is the faster of two random ones.
    n = 6_000
    counts = firsts(block("performance_first", []), perf_world([200.0, 900.0, 100.0, 400.0]), n)
    expected = {"m2": 3 / 6, "m0": 2 / 6, "m3": 1 / 6}  # pairs (of 6) whose faster member it is
    assert counts["m1"] == 0  # the slowest never leads
    for model, p in expected.items():
        assert within(counts[model], n, p), counts


@pytest.mark.parametrize("k", [3, 5, 8])
def test_performance_first_fastest_gets_two_in_k_of_first_choices(k):
    n = 3000
    counts = firsts(block("performance_first", []), perf_world([100.0 * (i + 1) for i in range(k)]), n)
    assert within(counts["m0"], n, 2 / k), counts
    assert counts["m0"] < n


def test_performance_first_fallbacks_are_by_latency():
    rng = random.Random(SEED)
    cat = perf_world([200.0, 900.0, 100.0, 400.0])
    for _ in range(100):
        rest = models(run(req("x"), cat, block("performance_first", []), rng=rng))[1:]
        lat = {"m0": 200, "m1": 900, "m2": 100, "m3": 400}
        assert [lat[m] for m in rest] == sorted(lat[m] for m in rest)


def test_performance_first_uses_priors_for_unobserved_models():
    policy = block("performance_first", [])
    # an unobserved cloud model counts as 800 ms: ahead of one observed at 1000, behind one at 500
    assert CLOUD_PRIOR_MS == 800.0
    assert models(run(req("x"), perf_world([1000.0, None]), policy)) == ["m1", "m0"]
    assert models(run(req("x"), perf_world([500.0, None]), policy)) == ["m0", "m1"]
    # a local model's prior: 100 ms + the expected output at its tokens_per_second
    fast_local = dep("l", "local", tokens_per_second=1000.0)  # 100 + 100 tokens / 1000 t/s = 200 ms
    observed = dep("o")
    cat = catalog([observed, fast_local], stats={observed.key: DeploymentStats(latency_ms=300.0)})
    assert models(run(req("x", params=Params(max_tokens=100)), cat, policy)) == ["l", "o"]
    # ... and a long expected answer makes it slower: 100 + 1000/1000 s = 1100 ms
    assert models(run(req("x", params=Params(max_tokens=1000)), cat, policy)) == ["o", "l"]


def test_performance_first_counts_load_and_health():
    a, b = dep("a"), dep("b")
    stats = {a.key: DeploymentStats(latency_ms=100.0, in_flight=64 * 3), b.key: DeploymentStats(latency_ms=300.0)}
    assert models(run(req("x"), catalog([a, b], stats=stats), block("performance_first", []))) == ["b", "a"]
    stats = {a.key: DeploymentStats(latency_ms=100.0), b.key: DeploymentStats(latency_ms=180.0)}
    cat = catalog([a, b], views={"p-a": ProviderView(health="degraded")}, stats=stats)
    assert models(run(req("x"), cat, block("performance_first", []))) == ["b", "a"]


# --------------------------------------------------------------------------- capability based


def test_capability_based_ranks_by_match_with_the_agent_then_cost():
    deps = [dep("none", price_in=0.0), dep("one-cheap", caps={"code_generation"}, price_in=0.001),
            dep("one-dear", caps={"ui_design"}, price_in=0.01),
            dep("both", caps={"code_generation", "ui_design", "vision"}, price_in=0.1)]
    policy = policy_of({"default_strategy": "capability_based"},
                       {"fe": {"capabilities_required": ["code_generation", "ui_design"]}}, [])
    assert models(run(req("fe"), catalog(deps), policy)) == ["both", "one-cheap", "one-dear", "none"]


def test_capability_based_counts_the_task_type():
    deps = [dep("coder", caps={"code_generation"}, price_in=0.01), dep("tester", caps={"test_generation"}, price_in=0.02),
            dep("cheap")]
    policy = block("capability_based", [])
    assert models(run(req("x", task=Task(type="test_generation")), catalog(deps), policy))[0] == "tester"
    assert models(run(req("x", task=Task(type="code_generation")), catalog(deps), policy))[0] == "coder"
    assert models(run(req("x"), catalog(deps), policy))[0] == "cheap"  # no match anywhere: cost


def test_capability_based_does_not_filter_on_agent_capabilities():
    policy = policy_of({"default_strategy": "capability_based"}, {"fe": {"capabilities_required": ["ui_design"]}}, [])
    plan = run(req("fe"), catalog([dep("plain")]), policy)
    assert models(plan) == ["plain"] and plan.rejected == []


# --------------------------------------------------------------------------- hybrid


def test_hybrid_weights_change_the_winner():
    cheap_slow = dep("cheap-slow", price_in=0.001, price_out=0.001)
    dear_fast = dep("dear-fast", price_in=0.05, price_out=0.05)
    flaky = dep("flaky", price_in=0.001, price_out=0.001)
    stats = {cheap_slow.key: DeploymentStats(latency_ms=3000.0), dear_fast.key: DeploymentStats(latency_ms=200.0),
             flaky.key: DeploymentStats(latency_ms=200.0, error_rate=0.9)}
    cat = catalog([cheap_slow, dear_fast, flaky], stats=stats)

    def winner(**w):
        return first(run(req("x"), cat, block("hybrid", [], weights=w)))
    assert winner(cost_weight=1.0) in ("cheap-slow", "flaky")
    assert winner(cost_weight=1.0, reliability_weight=0.5) == "cheap-slow"
    assert winner(latency_weight=1.0, reliability_weight=0.1) in ("dear-fast", "flaky")
    assert winner(latency_weight=1.0, reliability_weight=0.5) == "dear-fast"
    assert winner(cost_weight=0.5, latency_weight=0.5) == "flaky"  # cheap and fast, if unreliable
    assert winner(cost_weight=0.4, latency_weight=0.4, reliability_weight=0.2) == "flaky"
    assert winner(cost_weight=0.3, latency_weight=0.3, reliability_weight=0.4) != "flaky"


def test_hybrid_default_weights_are_the_design_s():
    spec = StrategySpec("hybrid", "hybrid")
    assert spec.hybrid == (0.4, 0.4, 0.2)


# --------------------------------------------------------------------------- adaptive


def adaptive_shares(stats, n=6000, seed=SEED):
    deps = [dep("a"), dep("b"), dep("c")]
    return firsts(block("adaptive", []), catalog(deps, stats=stats), n, seed=seed)


def keyed(**stats):
    return {("p-" + m, m): s for m, s in stats.items()}


def outcomes(s: DeploymentStats, ok: int = 0, failed: int = 0, ms: float = 100.0) -> DeploymentStats:
    for _ in range(failed):
        s.in_flight += 1
        s.failed()
    for _ in range(ok):
        s.in_flight += 1
        s.succeeded(ms)
    return s


def test_adaptive_splits_evenly_between_healthy_models():
    n = 6000
    counts = adaptive_shares({}, n)
    assert all(within(counts[m], n, 1 / 3) for m in "abc"), counts


def test_adaptive_moves_traffic_away_from_errors_and_back_on_recovery():
    n = 6000
    a = outcomes(DeploymentStats(), ok=50)
    healthy = {"b": outcomes(DeploymentStats(), ok=50), "c": outcomes(DeploymentStats(), ok=50)}
    outcomes(a, failed=7)  # error rate EWMA: 1 - 0.9**7 ~ 0.52
    w = (1 - a.error_rate) ** 2
    degraded = adaptive_shares(keyed(a=a, **healthy), n)
    assert within(degraded["a"], n, w / (w + 2)), (degraded, a.error_rate)
    assert degraded["a"] < n / 6
    outcomes(a, ok=60)  # recovers: error rate ~ 0.001
    recovered = adaptive_shares(keyed(a=a, **healthy), n)
    assert within(recovered["a"], n, 1 / 3, sigmas=6), recovered


def test_adaptive_moves_traffic_away_from_latency_above_its_baseline_and_back():
    n = 6000
    a = outcomes(DeploymentStats(), ok=200, ms=100.0)
    others = {"b": outcomes(DeploymentStats(), ok=200), "c": outcomes(DeploymentStats(), ok=200)}
    outcomes(a, ok=10, ms=1000.0)  # the fast EWMA follows, the slow baseline lags
    degradation = a.baseline_ms / a.latency_ms
    assert degradation < 0.3
    slow = adaptive_shares(keyed(a=a, **others), n)
    assert within(slow["a"], n, degradation / (degradation + 2)), (slow, degradation)
    outcomes(a, ok=60, ms=100.0)
    back = adaptive_shares(keyed(a=a, **others), n)
    assert within(back["a"], n, 1 / 3), back


def test_adaptive_floor_keeps_some_traffic_on_a_failing_model():
    n = 10_000
    a = outcomes(DeploymentStats(), failed=200)  # error rate ~ 1
    counts = adaptive_shares(keyed(a=a), n)
    p = ADAPTIVE_FLOOR / (ADAPTIVE_FLOOR + 2)
    assert counts["a"] > 0 and within(counts["a"], n, p), counts


def test_adaptive_keeps_the_failing_model_as_a_fallback():
    a = outcomes(DeploymentStats(), failed=200)
    plan = run(req("x"), catalog([dep("a"), dep("b"), dep("c")], stats=keyed(a=a)), block("adaptive", []))
    assert sorted(models(plan)) == ["a", "b", "c"]


# --------------------------------------------------------------------------- balanced


def test_balanced_orders_by_score():
    deps = [dep("dear", "cloud", price_in=0.05), dep("local", "local", tokens_per_second=50.0),
            dep("cheap", "cloud", price_in=0.001, caps={"complex_reasoning"})]
    for complexity in range(11):
        plan = run(req("x", task=Task(complexity=complexity)), catalog(deps), block("balanced", []))
        scores = [c.score for c in plan.ordered]
        assert scores == sorted(scores, reverse=True)


def test_balanced_factor_weights_change_the_order():
    dear_fast = dep("dear-fast", price_in=0.05, price_out=0.05)
    cheap_slow = dep("cheap-slow", price_in=0.0001)
    stats = {dear_fast.key: DeploymentStats(latency_ms=100.0), cheap_slow.key: DeploymentStats(latency_ms=5000.0)}
    cat = catalog([dear_fast, cheap_slow], stats=stats)

    def order(**weights):
        factors = [{"name": k, "weight": v} for k, v in weights.items()]
        return models(run(req("x"), cat, policy_of({"default_strategy": "balanced", "routing_factors": factors}, {}, [])))
    assert order(cost_efficiency=1.0) == ["cheap-slow", "dear-fast"]
    assert order(performance_needs=1.0) == ["dear-fast", "cheap-slow"]


def test_balanced_privacy_factor_prefers_local_for_sensitive_work():
    deps = [dep("cloud", "cloud"), dep("local", "local")]
    policy = policy_of({"default_strategy": "balanced", "routing_factors": [{"name": "privacy_requirements", "weight": 1}]}, {}, [])
    plan = run(req("x", task=Task(privacy_level="low")), catalog(deps), policy)
    assert plan.ordered[0].score == plan.ordered[1].score  # not sensitive: a tie
    # normal sensitivity 0.3: local scores 1.0, cloud 0.7
    plan = run(req("x"), catalog(deps), policy)
    assert models(plan) == ["local", "cloud"]
    assert [round(c.score, 6) for c in plan.ordered] == [1.0, 0.7]


def test_balanced_with_dynamic_routing_demotes_a_failing_model():
    good, bad = dep("good"), dep("bad", price_in=0.0)
    stats = {bad.key: outcomes(DeploymentStats(), failed=50)}
    policy = policy_of({"default_strategy": "b", "strategies": {"b": {"base": "balanced", "rules": [{"dynamic_routing": True}]}}}, {}, [])
    plan = run(req("x"), catalog([bad, good], stats=stats), policy)
    assert models(plan) == ["good", "bad"]


@pytest.mark.parametrize("complexity, lead", [(2, "local"), (3, "local"), (5, None), (7, "cloud"), (9, "cloud")])
def test_balanced_complexity_split(complexity, lead):
    deps = [dep("c1", "cloud"), dep("l1", "local"), dep("c2", "cloud", price_in=1.0), dep("l2", "local")]
    policy = policy_of({"default_strategy": "bal", "strategies": {"bal": {"base": "balanced", "rules": [
        {"cloud_for_complex_tasks": True}, {"local_for_routine_tasks": True}]}}}, {}, [])
    plan = run(req("x", task=Task(complexity=complexity)), catalog(deps), policy)
    types = [c.dep.type for c in plan.ordered]
    if lead is None:
        scores = [c.score for c in plan.ordered]
        assert scores == sorted(scores, reverse=True)
    else:
        other = "cloud" if lead == "local" else "local"
        assert types == [lead, lead, other, other]


# --------------------------------------------------------------------------- every strategy, request constraints


@pytest.mark.parametrize("name", BUILDING_BLOCKS)
def test_no_strategy_brings_back_a_removed_candidate(name):
    deps = [dep("cloud", "cloud"), dep("local", "local"), dep("vision", "local", caps={"vision"})]
    for seed in range(20):
        plan = run(req("x", task=Task(privacy_level="high"), requirements=Requirements(capabilities=["vision"])),
                   catalog(deps), block(name, []), seed=seed, cursor=seed)
        assert models(plan) == ["vision"]
        assert {r.model: r.constraint for r in plan.rejected} == {"cloud": "privacy", "local": "capability"}
