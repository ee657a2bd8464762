"""A model as one provider serves it: the ``Deployment``, the unit the router picks.

There is one runtime representation of a model. Config (``models.yaml``) and signals
(``provider_register``) describe models in their own input shapes; ``registry.py`` turns
either into a ``Deployment`` in one place, and everything after that (state, routing,
adapters, reports) reads the same object.

Composite keys are tuples: provider and model names may contain ``/``, so a key joined
with a separator would let provider ``a`` and provider ``a/b`` collide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DeploymentKey = tuple[str, str]
"""``(provider, model)``."""


@dataclass(slots=True, frozen=True)
class Deployment:
    """One model served by one provider. Immutable: a change builds a new one."""

    provider: str
    model: str
    """The router's name for the model (what callers and ``agents.yaml`` say)."""
    model_id: str
    """The provider's own id for it (sent upstream)."""
    api: str
    """Wire format of the endpoint; picks the adapter."""
    type: str
    """``cloud`` or ``local``."""
    base_url: str
    capabilities: frozenset[str] = frozenset()
    price_in: float = 0.0
    """USD per 1k input tokens."""
    price_out: float = 0.0
    """USD per 1k output tokens."""
    price_cached_in: float = 0.0
    """USD per 1k input tokens read from the provider's prompt cache; 0: none, such tokens
    cost ``price_in``."""
    context_window: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_second: float | None = None
    """Expected generation speed (``performance.tokens_per_second``), for the latency prior."""
    enabled: bool = True
    key: DeploymentKey = field(init=False, repr=False, compare=False)
    """``(provider, model)``, made once: routing reads it for every candidate of every request."""
    quality: int = field(init=False, repr=False, compare=False)
    """0-10, matched against task complexity: cloud 7, local 5, +2 for ``complex_reasoning``,
    +1 each for ``architecture_design`` and ``general_reasoning``."""
    capacity: int = field(init=False, repr=False, compare=False)
    """Concurrent attempts it takes well (``CAPACITY`` by type): what ``least_loaded`` divides by."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.provider, self.model))
        object.__setattr__(self, "capacity", CAPACITY.get(self.type, CAPACITY["cloud"]))
        strong = sum(_STRONG.get(c, 0) for c in self.capabilities)
        object.__setattr__(self, "quality", min(10, (7 if self.type == "cloud" else 5) + strong))

    def __hash__(self) -> int:
        # Equal deployments have equal keys; the generated hash would hash every field (an
        # attempt chain hashes its deployment a few times per request).
        return hash(self.key)


CAPACITY = {"local": 4, "cloud": 64}
"""Concurrent attempts a deployment takes well, by type."""
_STRONG = {"complex_reasoning": 2, "architecture_design": 1, "general_reasoning": 1}
