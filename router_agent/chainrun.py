"""One request's walk through its candidates: what the attempt chain keeps, and returns.

Plain data, written only by ``chain.py`` (and read by ``requests.py`` to answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from router_agent.core.model import Deployment
from router_agent.providers.base import Completion, ProviderError
from signals import Attempt, ErrorInfo, LlmRequest

log = logging.getLogger("router_agent")

if TYPE_CHECKING:
    from router_agent.core.lifecycle import RequestLifecycle
    from router_agent.state import ActiveRequest, Metrics
    from router_agent.streaming import StreamRelay

NOTHING: Mapping[Any, Any] = MappingProxyType({})
"""The empty mapping ``ChainRun`` fields start as (read-only: a write replaces it with a dict)."""


@dataclass(slots=True)
class Outcome:
    """How one attempt ended (``completion`` set on success, else ``error``)."""

    dep: Deployment
    completion: Completion | None = None
    error: ProviderError | None = None
    cost: float = 0.0
    deadline_hit: bool = False
    """The request's deadline (not the provider's timeout) ended it."""


@dataclass(slots=True)
class ChainRun:
    """One request's walk through its candidates."""

    request: LlmRequest
    candidates: list[Deployment]
    deadline: float
    active: ActiveRequest
    attempts: list[Attempt]
    life: RequestLifecycle
    relay: StreamRelay | None = None
    hedge: bool = False
    traceparent: str | None = None
    """The request span's, for the attempts' spans."""
    dropped: dict[tuple[str, str], None] = field(default_factory=dict)
    """Deployments out of this chain (a dict used as a set: an empty dict is 64 bytes, an empty
    set 216, and every request in flight holds one)."""
    # Most requests never retry nor hedge: these three start as one shared empty mapping and
    # become a dict of their own on the first write (``chain.py``), 192 bytes less per request.
    not_before: Mapping[tuple[str, str], float] = field(default_factory=lambda: NOTHING)
    retries: Mapping[tuple[str, str], int] = field(default_factory=lambda: NOTHING)
    running: Mapping[asyncio.Task[Outcome], Deployment] = field(default_factory=lambda: NOTHING)
    last_error: ProviderError | None = None
    rate_wait_s: float = 0.0
    """The shortest wait a rate limiter asked for when nothing else could go (for the answer)."""
    too_large: bool = False
    """A candidate was passed over because the request exceeds its tokens per minute."""
    lease_short: Deployment | None = None
    """A candidate refused only because this instance's budget lease ran short."""
    lease_renewed: bool = False
    won: bool = False
    """An attempt succeeded: the others still running are cancelled (and billed)."""
    budget_refusal: str = ""
    """Why the last candidate was refused by a budget, when that is why nothing was tried."""
    after_answer: list[Callable[[], None]] | None = None
    """Where an attempt leaves the bookkeeping its answer does not wait for (settling its
    cost, its outcome's effect on breakers, stats and limiters): the request shell runs it
    once the answer is on its way. None: run at once."""


def book_after_answer(after: list[Callable[[], None]], metrics: Metrics) -> None:
    """Run an answered request's bookkeeping (``ChainRun.after_answer``); a failing step is
    logged and counted, and the others still run."""
    for book in after:
        try:
            book()
        except Exception:
            log.exception("bookkeeping after an answer failed")
            metrics.internal_errors += 1


def skipped(dep: Deployment, code: Any, message: str) -> Attempt:
    """An attempt that was never sent (a budget refused it)."""
    return Attempt(provider=dep.provider, model=dep.model, outcome="skipped",
                   error=ErrorInfo(code=code, message=message, retryable=False))
