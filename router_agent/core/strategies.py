"""Scoring and ordering of the candidates that passed the hard constraints (pure).

Every candidate gets a ``Scored`` record: the figures a strategy needs, the five
``routing_factors`` (each 0-1) and their weighted ``score``, and its ``suitability`` (1-5)
for the request's task type. ``order(base, ...)`` returns them in the base strategy's order
(``core.policy`` documents each); randomness comes from the ``random.Random`` passed in, so
the same inputs and seed give the same order.

Figures and priors (documented in docs/routing.md):

- latency: the deployment's observed EWMA, else a prior (cloud 800 ms; local 100 ms plus
  the expected output at the model's ``tokens_per_second``, else 1,200 ms);
- capacity: concurrent attempts a deployment takes well (local 4, cloud 64);
- quality (0-10, matched against task complexity): ``Deployment.quality``.

Speed: the hard-constraint loop builds a ``Scored`` per surviving candidate; the factors,
the score and the suitability are computed only where they are used (the orders that rank
by them, and the candidates a plan reports), so a decision over 1,000 models stays cheap.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from router_agent.core.model import Deployment
from router_agent.core.observed import DeploymentStats

CLOUD_PRIOR_MS, LOCAL_PRIOR_MS, LOCAL_BASE_MS = 800.0, 1200.0, 100.0
ADAPTIVE_FLOOR = 0.05
"""An adaptive weight never falls below this share of a healthy one: some traffic keeps
showing whether a degraded model has recovered."""
_GOLDEN = 0.6180339887498949  # low-discrepancy step: weighted rotations spread evenly over cursors


class Scored(msgspec.Struct, gc=False):
    """One candidate that passed the hard constraints. A msgspec Struct, not a dataclass:
    routing builds one per candidate per request, and a Struct is built in C (~85 ns
    against ~240 ns; 1,000 candidates save 0.15 ms). No cycles (it refers to its frozen
    ``Deployment`` and floats), so the garbage collector need not track it."""

    dep: Deployment
    estimate: float
    """Estimated cost of this request on it, USD."""
    weight: float
    """Provider weight (0: only ever a fallback in weighted orders)."""
    latency: float
    load: float
    """In-flight attempts relative to capacity."""
    error_rate: float
    health: float
    """1 healthy, 0.5 degraded or half-open."""
    rate_share: float
    """Share of its per-minute rate limit used."""
    effective_latency: float = 0.0
    """Latency scaled up by load and down-weighted health: what performance_first ranks by."""
    stats: DeploymentStats | None = None
    """What the deployment has shown (the filter looked it up already): adaptive weights read it.
    Before ``score``: the filter passes it by position, cheaper than by keyword."""
    score: float = -1.0
    """The routing_factors score, 0-1; -1 until ``score_all`` has run on it."""
    suitability: int = 0
    """1-5; 0 until ``suitability`` has run on it."""
    factors: tuple[float, ...] = ()


def adaptive_health(cands: list[Scored]) -> list[float]:
    """Each candidate's health weight, 0-1: its error rate and its latency against its own
    longer history (``baseline_ms``), times its health; never below ``ADAPTIVE_FLOOR``.
    One loop over the candidates, no call per candidate: adaptive orders read it for all."""
    out = []
    append = out.append
    for c in cands:
        health = 1.0 - c.error_rate
        health *= health * c.health
        stats = c.stats
        if stats is not None:
            latency, baseline = stats.latency_ms, stats.baseline_ms
            if latency and baseline and baseline < latency:  # degraded: slower than it used to be
                health *= baseline / latency
        append(health if health > ADAPTIVE_FLOOR else ADAPTIVE_FLOOR)  # noqa: FURB136 - cheaper than max()
    return out


def latency_prior(dep: Deployment, est_out: int) -> float:
    if dep.type == "cloud":
        return CLOUD_PRIOR_MS
    if dep.tokens_per_second:
        return LOCAL_BASE_MS + est_out / dep.tokens_per_second * 1000.0
    return LOCAL_PRIOR_MS


def suitability(dep: Deployment, task_type: str | None, complexity: int, stats: DeploymentStats | None) -> int:
    """1-5: declared fit for the task type, strength for its complexity, observed outcomes."""
    if task_type is None:
        level = 3
    elif task_type in dep.capabilities:
        level = 4 + (dep.quality >= complexity)
    else:
        level = 2
    if stats is not None and stats.successes + stats.failures >= 10:
        if stats.error_rate > 0.25:
            level -= 1
        elif stats.error_rate < 0.02 and level < 5 and task_type in dep.capabilities:
            level += 1
    return max(1, min(5, level))


@dataclass(slots=True)
class Scale:
    """What the relative factors compare against: the dearest and the fastest candidate that
    passed the constraints (not only the ones scored)."""

    top_cost: float
    fastest: float

    @classmethod
    def of(cls, cands: list[Scored]) -> Scale:
        return cls(max(c.estimate for c in cands), min(c.latency for c in cands))


def complexity_fit(complexity: int, quality: int) -> float:
    """The task_complexity factor, 0-1: a model weaker than the task loses 0.2 a point, a
    stronger one 0.05 (it costs more than the task needs)."""
    gap = complexity - quality
    return max(0.0, 1.0 - 0.2 * gap if gap > 0 else 1.0 + 0.05 * gap)


_QUALITIES = 11  # Deployment.quality is 0-10


def score_all(cands: list[Scored], weights: tuple[float, ...], complexity: int, sensitivity: float,
              scale: Scale, store: bool = True, adaptive: bool = False) -> list[float]:
    """Each candidate's score; ``store`` fills in its factors and score (a candidate already
    scored keeps its own). ``sensitivity`` is 0-1 (1: PII or high privacy).

    An order that ranks every candidate by score needs only the figures (``store=False``:
    the plan stores the ones it reports); with ``adaptive`` each figure
    is the score times the candidate's adaptive health (``adaptive_health``; 0 for a provider
    weight of 0), what dynamic ``balanced`` ranks by. One loop either way: it runs for every
    candidate of every request."""
    top_cost, fastest = scale.top_cost, scale.fastest
    w_complex, w_cost, w_privacy, w_perf, w_avail = weights
    cloud_privacy = 1.0 - sensitivity
    # The weights folded into per-request constants; the part of a score that depends only on
    # the model's quality and type is a table lookup per candidate.
    cost_per_usd = w_cost / top_cost if top_cost > 0 else 0.0
    perf_scaled = w_perf * fastest
    fixed_local: list[float | None] = [None] * _QUALITIES  # filled as qualities turn up
    fixed_cloud: list[float | None] = [None] * _QUALITIES
    floor = ADAPTIVE_FLOOR
    scores: list[float] = []
    append = scores.append
    for c in cands:
        score = c.score
        if score < 0:
            dep = c.dep
            latency, load, rate_share = c.latency, c.load, c.rate_share
            if load or rate_share:
                f_avail = ((1.0 - load if load < 1.0 else 0.0) * (1.0 - rate_share if rate_share < 1.0 else 0.0)
                           * c.health)
            else:
                f_avail = c.health
            local = dep.type == "local"
            table, quality = fixed_local if local else fixed_cloud, dep.quality
            fixed = table[quality]
            if fixed is None:
                fixed = table[quality] = (w_complex * complexity_fit(complexity, quality) + w_cost
                                          + (w_privacy if local else w_privacy * cloud_privacy))
            score = fixed - c.estimate * cost_per_usd + (perf_scaled / latency if latency > 0 else w_perf) + w_avail * f_avail
            if store:
                c.factors = (complexity_fit(complexity, quality), 1.0 - c.estimate / top_cost if top_cost > 0 else 1.0,
                             1.0 if local else cloud_privacy,
                             fastest / latency if latency > 0 else 1.0, f_avail)
                c.score = score
        if adaptive:  # adaptive_health, inlined
            if c.weight > 0:
                health = 1.0 - c.error_rate
                health *= health * c.health
                stats = c.stats  # baseline_ms is set with latency_ms, which c.latency then is
                if stats is not None:
                    baseline = stats.baseline_ms
                    if baseline and baseline < c.latency:
                        health *= baseline / c.latency
                score *= health if health > floor else floor  # noqa: FURB136
            else:
                score = 0.0
        append(score)
    return scores


def _draw(cands: list[Scored], weights: list[float], point: float) -> list[Scored]:
    """The candidate at ``point`` (0-1) of the cumulative weights first, the rest by weight."""
    total = sum(weights)
    if total <= 0:
        return cands
    at = point * total
    acc, pick = 0.0, len(cands) - 1
    for i, w in enumerate(weights):
        acc += w
        if at < acc:
            pick = i
            break
    # Heaviest first; reverse keeps the sort stable, so equal weights keep their order.
    rest = sorted(range(len(cands)), key=weights.__getitem__, reverse=True)
    return [cands[pick]] + [cands[i] for i in rest if i != pick]


def _round_robin(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    n = len(cands)
    weights = [c.weight for c in cands]
    if n == 1 or weights.count(weights[0]) == n or sum(weights) <= 0:
        shift = ctx.cursor % n
    else:  # weighted: a golden-ratio walk over the cumulative weights
        point = (ctx.cursor * _GOLDEN) % 1.0 * sum(weights)
        acc, shift = 0.0, max(range(n), key=weights.__getitem__)
        for i, w in enumerate(weights):
            acc += w
            if point < acc:
                shift = i
                break
    return cands[shift:] + cands[:shift]


def _weighted(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    mw = ctx.model_weights
    weights = [c.weight * (mw.get(c.dep.model, 0.0) if mw else 1.0) for c in cands]
    if ctx.sticky is not None:  # the same key lands on the same arm while the arms stay the same
        point = zlib.crc32(ctx.sticky.encode()) / 2**32
    else:
        point = ctx.rng.random()
    return _draw(cands, weights, point)


# attrgetter keys run in C: a Python key function called for each of 1,000 candidates
# costs more than the sort itself. Two orders by one field, the tie-breaker first, give the
# order by (field, tie-breaker) (sorts are stable) at a third of the cost of tuple keys.
_LOAD, _COST, _LATENCY = attrgetter("load"), attrgetter("estimate"), attrgetter("latency")
_BY_SPEED = attrgetter("effective_latency")


def _least_loaded(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    return sorted(sorted(cands, key=_COST), key=_LOAD)


def _cost(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    return sorted(sorted(cands, key=_LATENCY), key=_COST)


def _performance(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    ranked = sorted(cands, key=_BY_SPEED)
    if len(ranked) > 2:  # power of two choices: the faster of two random ones leads
        a, b = ctx.rng.sample(range(len(ranked)), 2)
        lead = ranked[min(a, b)]
        ranked.remove(lead)
        ranked.insert(0, lead)
    return ranked


def _capability(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    wanted = ctx.wanted
    return sorted(cands, key=lambda c: (-len(wanted & c.dep.capabilities), c.estimate))


def _hybrid(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    cw, lw, rw = ctx.hybrid
    top, fastest = ctx.scale.top_cost, ctx.scale.fastest

    def value(c: Scored) -> float:
        cost = 1.0 - c.estimate / top if top > 0 else 1.0
        return cw * cost + lw * fastest / c.latency + rw * (1.0 - c.error_rate) * c.health
    return sorted(cands, key=value, reverse=True)


def _adaptive(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    weights = [c.weight * h for c, h in zip(cands, adaptive_health(cands))]
    return _draw(cands, weights, ctx.rng.random())


def _balanced(cands: list[Scored], ctx: OrderContext) -> list[Scored]:
    # By score (times the health weight when dynamic), highest first; reverse keeps ties in order.
    keys = ctx.score(cands, False, ctx.dynamic)
    return [cands[i] for i in sorted(range(len(cands)), key=keys.__getitem__, reverse=True)]


@dataclass(slots=True)
class OrderContext:
    rng: random.Random
    cursor: int
    scale: Scale
    score: Callable[..., list[float]]
    """``score_all`` with the request's figures: (candidates, store, adaptive) -> their scores."""
    wanted: frozenset[str] = frozenset()
    hybrid: tuple[float, float, float] = (0.4, 0.4, 0.2)
    model_weights: dict | None = None
    sticky: str | None = None
    dynamic: bool = False


def sticky_key(strategy: str, value: str | None) -> str | None:
    """A sticky assignment's key; the strategy's name salts it: two experiments do not split
    users alike."""
    return None if value is None else f"{strategy}\0{value}"


ORDERS: dict[str, Callable[[list[Scored], OrderContext], list[Scored]]] = {
    "round_robin": _round_robin,
    "weighted": _weighted,
    "least_loaded": _least_loaded,
    "cost_optimized": _cost,
    "performance_first": _performance,
    "capability_based": _capability,
    "hybrid": _hybrid,
    "adaptive": _adaptive,
    "balanced": _balanced,
}


def order(base: str, cands: list[Scored], ctx: OrderContext, prefer_type: str | None = None) -> list[Scored]:
    """``cands`` in the base strategy's order; ``prefer_type`` ranks that type first."""
    if not cands:
        return cands
    ranked = ORDERS[base](cands, ctx)
    if prefer_type is not None:
        ranked = [c for c in ranked if c.dep.type == prefer_type] + [c for c in ranked if c.dep.type != prefer_type]
    return ranked


# ------------------------------------------------------------------ what a plan reports


def best_local_confidence(kept: list[Scored], task_type: str | None, complexity: int,
                           enough: float | None) -> float:
    """The best local candidate's suitability / 5; stops at the first that reaches ``enough``."""
    best = 0.0
    for c in kept:
        if c.dep.type == "local":
            best = max(best, suitability(c.dep, task_type, complexity, c.stats) / 5)
            if enough is not None and best >= enough:
                break
    return best



def verifier_for(ordered: list[Scored], private: bool) -> Scored | None:
    """A stronger model than the first choice: cloud first, unless the data is private (then
    only the local ones that passed the constraints are there to ask)."""
    first = ordered[0]
    bar = first.dep.quality
    stronger = [c for c in ordered[1:] if c.dep.model != first.dep.model and c.dep.quality > bar]
    if not stronger:
        return None
    return max(stronger, key=lambda c: (not private and c.dep.type == "cloud", c.dep.quality, -c.estimate))



def confidence(ordered: list[Scored], decided_by: str) -> float:
    """1.0 when the caller or an operator named the model; else 60 % the first choice's
    suitability and 40 % its score's margin over the runner-up."""
    if decided_by in ("caller", "forced"):
        return 1.0
    first = ordered[0]
    runner_up = ordered[1].score if len(ordered) > 1 and ordered[1].score >= 0 else None
    margin = 1.0 if runner_up is None else min(1.0, max(0.0, 0.5 + 4 * (first.score - runner_up)))
    return round(0.6 * first.suitability / 5 + 0.4 * margin, 3)
