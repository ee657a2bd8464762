"""One attempt of a request on one deployment: the call within its bound, and what its end
means for the books.

Writes nothing itself: the outcome goes to ``Outcomes`` (breakers, limiters, stats, health),
the cost to the ledger (``settle`` when the provider billed, ``release`` when it did not),
and the attempt to the request's ``attempts``. ``chain.py`` decides what happens next.

How an attempt ends:

- answered: billed with the vendor's usage;
- a ``ProviderError``: not billed (a stream cut after content is billed by estimate, by
  ``requests.py``); counted against the provider as its error class says;
- its own bound expired (the provider's ``timeout_ms`` or its share of the deadline): the
  provider's failure, a ``timeout`` attempt;
- the request's deadline expired: abandoned, not the provider's fault;
- cancelled: a shutdown (abandoned), or a hedge that lost to another attempt; a lost hedge
  was sent, so its estimated input is billed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from router_agent.chainrun import ChainRun, Outcome
from router_agent.core.cost import usd
from router_agent.core.model import Deployment
from router_agent.core.redact import redact
from router_agent.ledger_service import Hold, LedgerService
from router_agent.outcomes import Outcomes, Pass
from router_agent.providers.base import ProviderError
from router_agent.registry import ProviderRegistry
from router_agent.telemetry import Telemetry
from signals import Attempt, ErrorInfo, Usage


class OneAttempt:
    def __init__(self, registry: ProviderRegistry, outcomes: Outcomes, ledger: LedgerService,
                 clock: Callable[[], float], tracing: Telemetry):
        self.registry = registry
        self.outcomes = outcomes
        self.ledger = ledger
        self.clock = clock
        self.tracing = tracing

    async def traced(self, run: ChainRun, dep: Deployment, attempt: Coroutine[Any, Any, Outcome]) -> Outcome:
        """The attempt inside a GenAI client span (only when telemetry is on)."""
        span, _ = self.tracing.attempt_start(dep, run.traceparent)
        try:
            outcome = await attempt
        except BaseException as exc:
            self.tracing.attempt_end(span, error_type="cancelled" if isinstance(exc, asyncio.CancelledError)
                                     else "internal")
            raise
        done = outcome.completion
        if done is not None:
            self.tracing.attempt_end(span, dep.model_id, done.input_tokens, done.output_tokens,
                                     finish_reason=done.finish_reason)
        else:
            self.tracing.attempt_end(span, error_type=outcome.error.code if outcome.error else "timeout")
        return outcome

    async def attempt(self, run: ChainRun, dep: Deployment, admission: Pass, hold: Hold, began: float,
                       bound: float, own_timeout: bool, is_retry: bool, hedge: bool) -> Outcome:
        registry, outcomes = self.registry, self.outcomes
        request = run.request
        relay = run.relay
        key = registry.secrets.get(dep.provider)
        scope = asyncio.timeout(bound)
        outcome = Outcome(dep)
        try:
            async with scope:
                if relay is None:
                    completion = await registry.adapter(dep).complete(request, dep, key)
                else:
                    relay.deployment = dep
                    completion = await relay.attempt(registry.adapter(dep).stream(request, dep, key),
                                                     scope, run.deadline)
        except ProviderError as exc:
            self.ledger.release(hold)  # a failed call is not billed (a cut stream is, by estimate: requests.py)
            latency = (self.clock() - began) * 1000
            outcomes.record_failure(dep, admission, latency, self.clock(), exc, run.active.tokens)
            run.attempts.append(Attempt(
                provider=dep.provider, model=dep.model, outcome="error", latency_ms=round(latency, 3),
                retry=is_retry, hedge=hedge,
                # Upstream text may echo a key: none that the agent knows, nor any key-shaped string, leaves.
                error=ErrorInfo(code=exc.code, message=redact(exc.message, registry.secrets.known()),
                                retryable=exc.retryable),
            ))
            outcome.error = exc
            return outcome
        except TimeoutError:
            self.ledger.release(hold)
            latency = (self.clock() - began) * 1000
            if not scope.expired():  # not our bound: a bug below, contained by serve()
                self._broken(run, dep, admission, latency)
                raise
            if own_timeout and (relay is None or not relay.committed):
                # The attempt's own bound: the provider's failure; the chain moves on.
                outcomes.record_timeout(dep, admission, latency, self.clock())
                run.attempts.append(Attempt(
                    provider=dep.provider, model=dep.model, outcome="timeout", latency_ms=round(latency, 3),
                    retry=is_retry, hedge=hedge,
                    error=ErrorInfo(code="timeout", retryable=True,
                                    message=f"provider did not answer within {bound * 1000:.0f} ms"),
                ))
                return outcome
            outcomes.record_abandon(dep, admission, run.active.tokens)  # the caller's deadline
            run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="timeout",
                                        latency_ms=round(latency, 3), retry=is_retry, hedge=hedge))
            outcome.deadline_hit = True
            return outcome
        except asyncio.CancelledError:
            # A lost hedge or a shutdown: not the provider's fault. A lost hedge was sent,
            # so the provider bills its input: booked by estimate.
            outcomes.record_abandon(dep, admission, run.active.tokens)
            cost = 0.0
            if run.won:
                cost = usd(self.ledger.settle(hold, Usage(input_tokens=run.active.input_tokens, estimated=True)))
                self.registry.state.metrics.total_cost += cost
            else:
                self.ledger.release(hold)
            run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="cancelled",
                                        latency_ms=round((self.clock() - began) * 1000, 3),
                                        retry=is_retry, hedge=hedge, cost_usd=round(cost, 10)))
            raise
        except Exception:
            self.ledger.release(hold)
            self._broken(run, dep, admission, (self.clock() - began) * 1000)
            raise
        latency = (self.clock() - began) * 1000
        cost = usd(self.ledger.settle(hold, completion.usage()))
        self.registry.state.metrics.total_cost += cost
        outcomes.record_success(dep, admission, latency, completion, cost, run.active.tokens, self.clock())
        run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="ok", latency_ms=round(latency, 3),
                                    retry=is_retry, hedge=hedge, cost_usd=round(cost, 10)))
        outcome.completion = completion
        outcome.cost = cost
        return outcome

    def _broken(self, run: ChainRun, dep: Deployment, admission: Pass, latency_ms: float) -> None:
        """An adapter raised what it must not (a bug): give the admission back, say so in the
        attempts, and let serve() answer ``internal``. Not counted against the provider."""
        self.outcomes.record_abandon(dep, admission, run.active.tokens)
        run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="error",
                                    latency_ms=round(latency_ms, 3),
                                    error=ErrorInfo(code="internal", message="internal router error")))
