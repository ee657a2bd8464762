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
from router_agent.core.model import Deployment, DeploymentKey
from router_agent.core.observed import WINDOW_S, DeploymentStats
from router_agent.core.strategies import CAPACITY, Scale, Scored, latency_prior
from signals import LlmRequest, Rejection

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
) -> tuple[list[Scored], list[Rejection], Scale]:
    """The survivors (in input order), the removed with their constraint, and the scale the
    relative factors use (the dearest estimate and the fastest latency among survivors)."""
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
    scored = Scored
    # The request's own limits, when it has none, cost nothing per candidate.
    limited = bool(cloud_ban or model_type or needed or max_cost is not None or max_latency is not None)
    for dep in deployments:
        # The common case (a healthy, enabled, closed deployment and a request without
        # limits) takes the fewest branches: this loop runs for every candidate of every request.
        provider = get_view(dep.provider)
        if provider is None or not provider.enabled or not dep.enabled:
            reject(Rejection(provider=dep.provider, model=dep.model, constraint="disabled",
                             detail="provider or model is disabled"))
            continue
        if provider.health == "unhealthy":
            reject(Rejection(provider=dep.provider, model=dep.model, constraint="unhealthy",
                             detail="provider reported unhealthy"))
            continue
        constraint = detail = ""
        estimate = (est_in * dep.price_in + est_out * dep.price_out) / 1000.0
        key = dep.key
        seen = get_stats(key)
        if limited:
            constraint, detail = _request_limit(dep, cloud_ban, model_type, needed, max_cost, max_latency,
                                                estimate, seen)
        if not constraint and dep.context_window is not None and tokens > dep.context_window:
            constraint, detail = "context_window", f"needs ~{tokens} tokens, window is {dep.context_window}"
        health = 0.5 if provider.health == "degraded" else 1.0
        breaker = get_breaker(key)
        if not constraint and breaker is not None and breaker.state != "closed":
            if not breaker.allows(now):
                constraint, detail = "circuit_open", f"circuit is {breaker.state}"
            elif breaker.state == "half_open":
                health = 0.5
        share = 0.0
        if seen is not None and not constraint:
            rpm, tpm = dep.requests_per_minute, dep.tokens_per_minute
            if rpm or tpm:  # observed.DeploymentStats.used_share, inlined: it runs per candidate
                if now - seen.window_start < WINDOW_S:
                    share = seen.window_requests / rpm if rpm else 0.0
                    if tpm and (seen.window_tokens + tokens) / tpm > share:
                        share = (seen.window_tokens + tokens) / tpm
                elif tpm:
                    share = tokens / tpm
                if share >= 1.0:
                    constraint, detail = "rate_limited", "its per-minute rate limit is used up"
        if constraint:
            reject(Rejection(provider=dep.provider, model=dep.model, constraint=constraint, detail=detail))
            continue
        if seen is None:
            latency, load, errors = latency_prior(dep, est_out), 0.0, 0.0
        else:
            latency, load, errors = seen.latency_ms, seen.in_flight / CAPACITY[dep.type], seen.error_rate
            if latency is None:
                latency = latency_prior(dep, est_out)
        if estimate > top_cost:  # noqa: PLR1730 - an if is cheaper than a call, per candidate
            top_cost = estimate
        if latency < fastest:  # noqa: PLR1730
            fastest = latency
        keep(scored(dep, estimate, provider.weight, latency, load, errors, health, share,
                    latency * (1.0 + load) / health))
    return kept, rejected, Scale(top_cost, fastest)


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
