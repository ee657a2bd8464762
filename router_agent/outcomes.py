"""Outcomes of attempts: what each one teaches the breakers, limiters, stats and health.

Writes ``circuit_breakers``, ``provider_breakers``, ``rate_limiters`` (their levels),
``deployment_stats`` and ``provider_states`` (counters); the registry decides which
providers and deployments exist, this module what their attempts showed.

The attempt chain claims passage (``admit``) and hands the ``Pass`` back with the outcome,
exactly once: ``record_success``, ``record_failure`` (an error the provider answered, or
its own timeout) or ``record_abandon`` (the caller's deadline, a lost hedge, a shutdown:
not the provider's doing, nothing counted). Only failures that say something about the
provider count against its breakers and health (``core.breaker.counts_against_deployment``:
a caller's ``bad_request`` does not, a 429 is the limiter's business); connection and key
failures also count against the provider's own breaker (``condemns_provider``).
"""

from __future__ import annotations

from collections.abc import Callable

from router_agent.core.breaker import Admission, condemns_provider, counts_against_deployment
from router_agent.core.limiter import DeploymentLimiter
from router_agent.core.model import Deployment
from router_agent.core.redact import redact
from router_agent.providers.base import Completion, ProviderError
from router_agent.registry import ProviderRegistry
from router_agent.state import ProviderState

Pass = tuple[Admission, Admission]
"""What the breakers admitted for one attempt: (the deployment's, the provider's)."""

CLOSED = ("closed", "closed")
MAX_ERROR_CHARS = 200
"""Longest error message kept as a provider's last error."""


class Outcomes:
    def __init__(self, registry: ProviderRegistry, clock: Callable[[], float]):
        self.registry = registry
        self.state = registry.state
        self.clock = clock

    # ------------------------------------------------------------------ admission

    def admit(self, deployment: Deployment, now: float, *, forced: bool = False) -> Pass | None:
        """Claim passage through the provider's and the deployment's breakers; None when
        either refuses. ``forced``: the probe of a deployment whose cooldown has not ended
        (every candidate is cooling down: this one's ends first)."""
        provider_breaker = self.registry.provider_breakers[deployment.provider]
        breaker = self.state.circuit_breakers[deployment.key]
        before = (breaker.state, provider_breaker.state)
        first = provider_breaker.process_forced_probe(now) if forced and not provider_breaker.allows(now) \
            else provider_breaker.process_attempt(now)
        if first == "refused":
            return None
        second = breaker.process_forced_probe(now) if forced else breaker.process_attempt(now)
        if second == "refused":
            provider_breaker.process_abandon(first)  # an abandoned probe leaves it half open
            admission = None
        else:
            admission = second, first
        if before != CLOSED:  # an admission moves only an open breaker (to half_open): announce it
            self._changed(deployment, before, now)
        return admission

    def provider_allows(self, provider: str, now: float) -> bool:
        return self.registry.provider_breakers[provider].allows(now)

    def typical_latency_ms(self) -> float:
        """The average attempt latency over every provider (the hint an ``overloaded`` answer
        gives for when to ask again); 1 s before anything was observed."""
        total = requests = 0.0
        for p in self.state.provider_states.values():
            total += p.latency_ms_total
            requests += p.requests
        return round(total / requests, 1) if requests else 1000.0

    # ------------------------------------------------------------------ outcomes of attempts

    def attempt_started(self, deployment: Deployment, now: float, tokens: int) -> None:
        self.state.provider_states[deployment.provider].in_flight += 1
        self.registry.stats[deployment.key].started()

    def record_success(self, deployment: Deployment, admission: Pass, latency_ms: float, completion: Completion,
                       cost: float, estimated_tokens: int, now: float) -> None:
        key = deployment.key
        before = self._circuit(deployment)
        self.state.circuit_breakers[key].process_success(admission[0], now)
        self.registry.provider_breakers[deployment.provider].process_success(admission[1], now)
        p = self._finished(deployment, latency_ms)
        p.successes += 1
        p.input_tokens += completion.input_tokens
        p.output_tokens += completion.output_tokens
        p.cost_usd += cost
        self.registry.stats[key].succeeded(latency_ms)
        limiter = self.registry.limiters.get(key)
        if limiter is not None:
            limiter.settle(now, estimated_tokens, completion.input_tokens + completion.output_tokens)
        health = self.registry.health[deployment.provider]
        if health.state != "healthy" or health.failures_in_row:
            health.process_success(now)
            self.registry.sync_health(deployment.provider)
        else:
            health.process_success(now)  # healthy stays healthy: nothing to copy
        self._changed(deployment, before, now)

    def record_failure(self, deployment: Deployment, admission: Pass, latency_ms: float, now: float,
                       error: ProviderError, estimated_tokens: int) -> None:
        """A failed attempt. Only what says something about the provider counts against its
        breakers (a caller's bad request does not; a 429 is the limiter's business)."""
        key = deployment.key
        code = error.code
        before = self._circuit(deployment)
        breaker = self.state.circuit_breakers[key]
        provider_breaker = self.registry.provider_breakers[deployment.provider]
        if counts_against_deployment(code):
            breaker.process_failure(admission[0], now)
            self.registry.stats[key].failed()
            p = self._finished(deployment, latency_ms)
            p.failures += 1
            p.errors_by_code[code] = p.errors_by_code.get(code, 0) + 1
            # Health keeps the message and provider_health publishes it: upstream text may echo a key.
            message = redact(error.message, self.registry.secrets.known())[:MAX_ERROR_CHARS]
            self.registry.health[deployment.provider].process_failure(now, code, message)
            self.registry.sync_health(deployment.provider)
        else:
            breaker.process_abandon(admission[0])
            self.registry.stats[key].abandoned()
            p = self._finished(deployment, latency_ms)
            p.errors_by_code[code] = p.errors_by_code.get(code, 0) + 1
        if condemns_provider(code):
            provider_breaker.process_failure(admission[1], now)
        else:
            provider_breaker.process_abandon(admission[1])
        if code == "rate_limited" or error.remaining_requests is not None or error.remaining_tokens is not None:
            limiter = self.registry.limiters.get(key)
            if limiter is None:  # an unlimited deployment: the provider's block still holds
                limiter = self.registry.limiters[key] = DeploymentLimiter()
            if code == "rate_limited":
                limiter.refund(now, estimated_tokens)
            limiter.observe(now, retry_after_s=error.retry_after_s, remaining_requests=error.remaining_requests,
                            remaining_tokens=error.remaining_tokens)
        self._changed(deployment, before, now)

    def record_timeout(self, deployment: Deployment, admission: Pass, latency_ms: float, now: float) -> None:
        """The attempt's own timeout fired: the provider's failure."""
        self.record_failure(deployment, admission, latency_ms, now,
                            ProviderError("timeout", "the provider did not answer in time", True), 0)

    def record_abandon(self, deployment: Deployment, admission: Pass, estimated_tokens: int) -> None:
        """The attempt ended for a reason that is not the provider's: nothing is counted."""
        self.state.circuit_breakers[deployment.key].process_abandon(admission[0])
        self.registry.provider_breakers[deployment.provider].process_abandon(admission[1])
        self.state.provider_states[deployment.provider].in_flight -= 1
        self.registry.stats[deployment.key].abandoned()

    def _finished(self, deployment: Deployment, latency_ms: float) -> ProviderState:
        p = self.state.provider_states[deployment.provider]
        p.in_flight -= 1
        p.requests += 1
        p.latency_ms_total += latency_ms
        self.state.metrics.requests_by_provider[deployment.provider] = p.requests
        return p

    def _circuit(self, deployment: Deployment) -> tuple[str, str]:
        return self.state.circuit_breakers[deployment.key].state, self.registry.provider_breakers[deployment.provider].state

    def _changed(self, deployment: Deployment, before: tuple[str, str], now: float) -> None:
        """A breaker changed state: the provider's health learns of it, and it is announced."""
        after = self._circuit(deployment)
        if after == before:
            return
        if after[0] != before[0]:
            self.registry.breaker_changed(deployment.key)
        # Only a breaker that has just opened is news for health: an announcement that one
        # went half open must not degrade a provider that recovered meanwhile.
        if (after[0] == "open" and before[0] != "open") or (after[1] == "open" and before[1] != "open"):
            health = self.registry.health[deployment.provider]
            health.process_breaker_open(now, deployment.model if after[1] != "open" else None)
        self.registry.sync_health(deployment.provider)
        if self.registry.on_circuit_change is not None:
            self.registry.on_circuit_change(deployment, before, after)
