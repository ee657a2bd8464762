"""Candidate selection: hard constraints filter, the strategy orders what is left.

``route()`` is pure: given the request, the deployments that could serve it and the
provider/breaker view, it returns the ordered candidates (first = chosen, rest = fallbacks)
and, for every candidate removed, the constraint that removed it. A fallback is always
one of the ordered candidates, so no fallback can break a hard constraint.

The strategy here is round robin over the healthy candidates; the full scoring engine
(cost, latency, load, rules) plugs in at ``_order``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router_agent.core.breaker import Breaker
from router_agent.core.cost import cost_usd, estimate_input_tokens, estimate_output_tokens
from signals import Candidate, LlmRequest, Rejection


@dataclass(slots=True)
class Deployment:
    """One model as served by one provider: the unit the router picks."""

    provider: str
    model: str
    model_id: str
    type: str
    base_url: str
    capabilities: frozenset[str] = frozenset()
    price_in: float = 0.0
    price_out: float = 0.0
    context_window: int | None = None
    enabled: bool = True
    key: str = ""

    def __post_init__(self) -> None:
        self.key = f"{self.provider}/{self.model}"


@dataclass(slots=True)
class ProviderView:
    """What routing needs to know of a provider's run-time state."""

    enabled: bool = True
    health: str = "healthy"


@dataclass(slots=True)
class Decision:
    ordered: list[Deployment]
    estimates: list[float]
    rejected: list[Rejection] = field(default_factory=list)
    reason: str = ""
    strategy: str = "round_robin"

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(provider=d.provider, model=d.model, estimated_cost_usd=round(c, 8))
            for d, c in zip(self.ordered, self.estimates)
        ]


def candidate_models(
    request: LlmRequest,
    model_names: list[str],
    aliases: Mapping[str, str],
    preferences: Mapping[str, str] | None,
) -> tuple[list[str], str]:
    """Which models may serve the request, and why those."""
    if request.model is not None:
        name = request.model if request.model in model_names else aliases.get(request.model)
        if name is None:
            return [], f"model {request.model!r} is not known"
        return [name], f"caller asked for model {name!r}"
    if preferences:
        ordered = list(dict.fromkeys(m for m in preferences.values() if m in model_names))
        if ordered:
            return ordered, f"agent {request.agent_id!r} model preferences"
    return list(model_names), "all models"


def route(
    request: LlmRequest,
    deployments: list[Deployment],
    providers: Mapping[str, ProviderView],
    breakers: Mapping[str, Breaker],
    now: float,
    cursor: int,
) -> Decision:
    """Filter ``deployments`` by the request's hard constraints, then order round robin."""
    est_in = estimate_input_tokens(request)
    est_out = estimate_output_tokens(request)
    task = request.task
    req = request.requirements
    private = task.privacy_level == "high"
    needed = req.capabilities
    kept: list[Deployment] = []
    estimates: list[float] = []
    rejected: list[Rejection] = []

    for dep in deployments:
        provider = providers.get(dep.provider)
        constraint, detail = "", ""
        estimate = cost_usd(est_in, est_out, dep.price_in, dep.price_out)
        if provider is None or not provider.enabled or not dep.enabled:
            constraint, detail = "disabled", "provider or model is disabled"
        elif provider.health == "unhealthy":
            constraint, detail = "unhealthy", "provider reported unhealthy"
        elif private and dep.type != "local":
            constraint, detail = "privacy", "privacy_level high allows local models only"
        elif req.model_type is not None and dep.type != req.model_type:
            constraint, detail = "model_type", f"requires a {req.model_type} model"
        elif needed and not dep.capabilities.issuperset(needed):
            missing = sorted(set(needed) - dep.capabilities)
            constraint, detail = "capability", f"lacks {', '.join(missing)}"
        elif dep.context_window is not None and est_in + est_out > dep.context_window:
            constraint = "context_window"
            detail = f"needs ~{est_in + est_out} tokens, window is {dep.context_window}"
        elif req.max_cost_usd is not None and estimate > req.max_cost_usd:
            constraint = "max_cost"
            detail = f"estimated ${estimate:.6f} exceeds ${req.max_cost_usd:.6f}"
        else:
            breaker = breakers.get(dep.key)
            if breaker is not None and not breaker.allows(now):
                constraint, detail = "circuit_open", f"circuit is {breaker.state}"
        if constraint:
            rejected.append(
                Rejection(provider=dep.provider, model=dep.model, constraint=constraint, detail=detail)
            )
        else:
            kept.append(dep)
            estimates.append(estimate)

    if not kept:
        return Decision([], [], rejected, reason="no candidate passed the hard constraints")
    shift = cursor % len(kept)
    order = kept[shift:] + kept[:shift]
    costs = estimates[shift:] + estimates[:shift]
    return Decision(order, costs, rejected, reason=f"round robin over {len(kept)} healthy candidates")
