"""Candidate selection: hard constraints filter, the strategy orders what is left.

``route()`` is pure: given the request, the deployments that could serve it and the
provider/breaker view, it returns the ordered candidates (first = chosen, rest = fallbacks)
and, for every candidate removed, the constraint that removed it. A fallback is always
one of the ordered candidates, so no fallback can break a hard constraint.

The strategy here is round robin over the healthy candidates, weighted by provider
``weight`` (equal weights: a plain rotation; weight 0: only ever a fallback). The full
scoring engine (cost, latency, load, rules) plugs in at the ordering step.

``requirements.max_latency_ms`` is judged against the latency the router has observed for
the deployment (an average of its successful attempts). A deployment with no observation
yet is kept: nothing says it is slow, and the per-attempt timeout still bounds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from router_agent.core.breaker import Breaker
from router_agent.core.cost import cost_usd, estimate_input_tokens, estimate_output_tokens
from router_agent.core.model import Deployment, DeploymentKey
from signals import Candidate, LlmRequest, Rejection

STRATEGIES = ("round_robin",)
"""Strategies the engine implements; config naming another as default is refused."""

_GOLDEN = 0.6180339887498949  # low-discrepancy step: weighted picks spread evenly over cursors


@dataclass(slots=True)
class ProviderView:
    """What routing needs to know of a provider's run-time state."""

    enabled: bool = True
    health: str = "healthy"
    weight: float = 1.0
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    """Observed latency by model name (the registry's live table)."""


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
    model_names: Collection[str],
    aliases: Mapping[str, str],
    preferences: Mapping[str, str] | None,
    default_pool: Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """Which models may serve the request, and why those.

    ``model_names`` are every name served (pass a dict or set: membership is tested);
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
        ordered = list(dict.fromkeys(m for m in preferences.values() if m in model_names))
        if ordered:
            return ordered, f"agent {request.agent_id!r} model preferences"
    return list(model_names if default_pool is None else default_pool), "all models"


def route(
    request: LlmRequest,
    deployments: list[Deployment],
    providers: Mapping[str, ProviderView],
    breakers: Mapping[DeploymentKey, Breaker],
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
    weights: list[float] = []
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
        elif req.max_latency_ms is not None and provider.latency_ms.get(dep.model, 0.0) > req.max_latency_ms:
            constraint = "max_latency"
            detail = f"observed {provider.latency_ms[dep.model]:.0f} ms exceeds {req.max_latency_ms} ms"
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
            weights.append(provider.weight)  # type: ignore[union-attr]  # None was rejected above
            estimates.append(estimate)

    if not kept:
        return Decision([], [], rejected, reason="no candidate passed the hard constraints")
    shift = _first_choice(weights, cursor)
    order = kept[shift:] + kept[:shift]
    costs = estimates[shift:] + estimates[:shift]
    return Decision(order, costs, rejected, reason=f"round robin over {len(kept)} healthy candidates")


def _first_choice(weights: list[float], cursor: int) -> int:
    """Index of the first choice: a rotation when weights are equal, else weighted.

    Weighted picks walk a golden-ratio sequence over the cumulative weights, so over any
    run of cursors each candidate leads in proportion to its weight, evenly spread.
    """
    n = len(weights)
    if n == 1 or weights.count(weights[0]) == n:  # no generator: this runs for every request
        return cursor % n
    total = sum(weights)
    if total <= 0:
        return cursor % n
    point = (cursor * _GOLDEN) % 1.0 * total
    acc = 0.0
    for index, weight in enumerate(weights):
        acc += weight
        if point < acc:
            return index
    return max(range(len(weights)), key=weights.__getitem__)  # rounding at the very top
