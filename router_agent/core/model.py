"""A model as one provider serves it: the ``Deployment``, the unit the router picks.

There is one runtime representation of a model. Config (``models.yaml``) and signals
(``provider_register``) describe models in their own input shapes; ``registry.py`` turns
either into a ``Deployment`` in one place, and everything after that (state, routing,
adapters, reports) reads the same object.

Composite keys are tuples: provider and model names may contain ``/``, so a key joined
with a separator would let provider ``a`` and provider ``a/b`` collide.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    context_window: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    enabled: bool = True

    @property
    def key(self) -> DeploymentKey:
        return (self.provider, self.model)
