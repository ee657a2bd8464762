"""Candidates and hard constraints: which deployments may serve a request at all (pure).

``candidate_models`` says which model names are in play (forced by an operator, asked for
by the caller, the agent's preferences, or every model of the default pool).
``filter_candidates`` removes each deployment that breaks a hard constraint, naming the
constraint, and builds a ``Scored`` record for each one kept. Hard constraints filter, they
never weigh: a removed deployment is never a fallback either.

``requirements.max_latency_ms`` is judged against the latency the router has observed for
the deployment (an EWMA of its successful attempts). A deployment with no observation yet
is kept: nothing says it is slow, and the per-attempt timeout still bounds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from router_agent.core.breaker import Breaker
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment, DeploymentKey
from router_agent.core.observed import DeploymentStats
from router_agent.core.strategies import Scale, Scored, latency_prior
from signals import LlmRequest, Rejection

_NEVER = float("inf")
ALL_MODELS = "all models"
"""Why a request's candidates are the whole default pool."""


@dataclass(slots=True)
class ProviderView:
    """What routing needs to know of a provider's run-time state."""

    enabled: bool = True
    health: str = "healthy"
    weight: float = 1.0


def candidate_models(
    request: LlmRequest,
    model_names: Collection[str],
    aliases: Mapping[str, str],
    preferences: Sequence[str] | None,
    default_pool: Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """Which models may serve the request, and why those.

    ``model_names`` are every name served (pass a dict or set: membership is tested);
    ``preferences`` the agent's models in preference order (primary first);
    ``default_pool`` the names a request that says nothing may go to (all of
    ``model_names`` when None). Keeping runtime registrations out of the default pool
    keeps a registration from adding work to every request that did not ask for it.
    """
    if request.model is not None:
        name = request.model if request.model in model_names else aliases.get(request.model)
        if name is None:
            return [], f"model {request.model!r} is not known"
        return [name], f"caller asked for model {name!r}"
    if preferences:
        ordered = list(dict.fromkeys(m for m in preferences if m in model_names))
        if ordered:
            return ordered, f"agent {request.agent_id!r} model preferences"
    return list(model_names if default_pool is None else default_pool), ALL_MODELS


@dataclass(slots=True)
class Limits:
    """The request's hard limits, computed once per request by the engine."""

    est_in: int
    est_out: int
    capabilities: frozenset[str]
    local_only: tuple[str, str] | None
    """``(constraint, detail)`` when only local models may serve, else None."""
    cloud_budget_left: bool = True
    budget_detail: str = ""


def filter_candidates(
    request: LlmRequest,
    deployments: list[Deployment],
    limits: Limits,
    providers: Mapping[str, ProviderView],
    stats: Mapping[DeploymentKey, DeploymentStats],
    breakers: Mapping[DeploymentKey, Breaker],
    now: float,
    limiters: Mapping[DeploymentKey, DeploymentLimiter] | None = None,
) -> tuple[list[Scored], list[Rejection], Scale]:
    """The survivors (in input order), the removed with their constraint, and the scale the
    relative factors use (the dearest estimate and the fastest latency among survivors).

    A deployment whose rate limiter cannot take the request now is kept, with a
    ``rate_share`` of at least 1: it is a candidate to wait for when no other can serve
    (the request shell tries the others first). When several deployments passed the other
    constraints and every one is cooling down behind an open breaker, the one whose
    cooldown ends first is kept (and probed) rather than failing blind; a single candidate
    (the caller insisted on one model) fails fast, which is what its breaker is for.

    ``breakers``: a deployment without one here is closed, so a caller may pass only the
    breakers that are not (the agent does: ``ProviderRegistry.tripped``)."""
    req = request.requirements
    est_in, est_out = limits.est_in, limits.est_out
    tokens = est_in + est_out
    needed = limits.capabilities
    cloud_ban = limits.local_only or (None if limits.cloud_budget_left else ("budget", limits.budget_detail))
    model_type, max_cost, max_latency = req.model_type, req.max_cost_usd, req.max_latency_ms
    kept: list[Scored] = []
    rejected: list[Rejection] = []
    reject = rejected.append
    keep = kept.append
    top_cost, fastest = 0.0, float("inf")
    get_view, get_stats, get_breaker = providers.get, stats.get, breakers.get
    get_limiter = (limiters or {}).get
    any_breaker = bool(breakers)  # the agent passes only the breakers that are not closed
    cooling: list[tuple[float, Deployment, float]] = []
    scored = Scored
    # The request's own limits, when it has none, cost nothing per candidate.
    limited = bool(cloud_ban or model_type or needed or max_cost is not None or max_latency is not None)
    for dep in deployments:
        # The common case (a healthy, enabled, closed deployment and a request without
        # limits) takes the fewest branches: this loop runs for every candidate of every
        # request, so each check rejects and moves on at once.
        provider = get_view(dep.provider)
        if provider is None or not provider.enabled or not dep.enabled:
            reject(Rejection(provider=dep.provider, model=dep.model, constraint="disabled",
                             detail="provider or model is disabled"))
            continue
        health = 1.0
        if provider.health != "healthy":
            if provider.health == "unhealthy":
                reject(Rejection(provider=dep.provider, model=dep.model, constraint="unhealthy",
                                 detail="provider reported unhealthy"))
                continue
            health = 0.5  # degraded
        estimate = (est_in * dep.price_in + est_out * dep.price_out) / 1000.0
        key = dep.key
        seen = get_stats(key)
        if limited:
            constraint, detail = _request_limit(dep, cloud_ban, model_type, needed, max_cost, max_latency,
                                                estimate, seen)
            if constraint:
                reject(Rejection(provider=dep.provider, model=dep.model, constraint=constraint, detail=detail))
                continue
        if dep.context_window is not None and tokens > dep.context_window:
            reject(Rejection(provider=dep.provider, model=dep.model, constraint="context_window",
                             detail=f"needs ~{tokens} tokens, window is {dep.context_window}"))
            continue
        breaker = get_breaker(key) if any_breaker else None
        if breaker is not None and breaker.state != "closed":
            if not breaker.allows(now):
                reject(Rejection(provider=dep.provider, model=dep.model, constraint="circuit_open",
                                 detail=f"circuit is {breaker.state}"))
                retry_at = breaker.retry_at(now)
                if retry_at != _NEVER:  # every probe slot taken: it cannot be probed now
                    cooling.append((retry_at, dep, estimate))
                continue
            if breaker.state == "half_open":
                health = 0.5
        share = 0.0
        limiter = get_limiter(key)  # only limited (or provider-blocked) deployments have one
        if limiter is not None and now < limiter.full_at:  # else full: nothing used, nothing to read
            share = 1.0 - limiter.headroom(now)
            # allows() only where it can differ: below half a bucket left (a request
            # larger than that is rare, and the attempt chain checks it anyway).
            if share >= 0.5 and (share >= 1.0 or not limiter.allows(now, tokens)):
                share = max(share, 1.0)
        if seen is None:
            latency, load, errors = latency_prior(dep, est_out), 0.0, 0.0
        else:
            latency, load, errors = seen.latency_ms, seen.in_flight / dep.capacity, seen.error_rate
            if latency is None:
                latency = latency_prior(dep, est_out)
        if estimate > top_cost:  # noqa: PLR1730 - an if is cheaper than a call, per candidate
            top_cost = estimate
        if latency < fastest:  # noqa: PLR1730
            fastest = latency
        keep(scored(dep, estimate, provider.weight, latency, load, errors, health, share,
                    latency * (1.0 + load) / health, seen))
    if not kept and len(cooling) > 1:
        _, dep, estimate = min(cooling, key=_first)
        rejected[:] = [r for r in rejected if (r.provider, r.model) != dep.key]
        seen = get_stats(dep.key)
        latency = latency_prior(dep, est_out) if seen is None or seen.latency_ms is None else seen.latency_ms
        provider = providers[dep.provider]
        kept.append(scored(dep, estimate, provider.weight, latency, 0.0, seen.error_rate if seen else 0.0, 0.5,
                           0.0, latency * 2.0, seen))
        return kept, rejected, Scale(estimate, latency)
    return kept, rejected, Scale(top_cost, fastest)


def _first(item: tuple[float, Deployment, float]) -> float:
    return item[0]


def _request_limit(dep: Deployment, cloud_ban: tuple[str, str] | None, model_type: str | None,
                   needed: frozenset[str], max_cost: float | None, max_latency: int | None, estimate: float,
                   seen: DeploymentStats | None) -> tuple[str, str]:
    """The first of the request's own limits ``dep`` breaks, as (constraint, detail), or ("", "")."""
    if cloud_ban is not None and dep.type != "local":
        return cloud_ban
    if model_type is not None and dep.type != model_type:
        return "model_type", f"requires a {model_type} model"
    if needed and not dep.capabilities.issuperset(needed):
        return "capability", f"lacks {', '.join(sorted(needed - dep.capabilities))}"
    if max_cost is not None and estimate > max_cost:
        return "max_cost", f"estimated ${estimate:.6f} exceeds ${max_cost:.6f}"
    if max_latency is not None and seen is not None and seen.latency_ms is not None and seen.latency_ms > max_latency:
        return "max_latency", f"observed {seen.latency_ms:.0f} ms exceeds {max_latency} ms"
    return "", ""
