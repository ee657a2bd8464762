"""The attempt chain of one request: retries, fallbacks and hedges within its deadline.

Writes provider outcomes through the registry (breakers, limiters, observed stats) and
appends every attempt to the request's ``attempts``; it never answers (``requests.py``
answers, once) and never adds a candidate: the plan's candidates all satisfy the request's
hard constraints, and the chain only drops or reorders them.

Theory of operation
-------------------
The chain loops: *pick* the first candidate that may be tried now, run *one attempt*, and
on failure decide what the failure means for the rest of the chain:

| the attempt's error                          | what the chain does next                                   |
|----------------------------------------------|------------------------------------------------------------|
| not fallback-worthy (the request's own fault)| stop: any other provider would refuse it too              |
| ``context_length_exceeded``                  | drop every candidate whose window is not larger            |
| ``content_filtered``                         | drop every candidate of the same provider                  |
| ``rate_limited``                             | the deployment's limiter learns Retry-After and the quota headers; the deployment waits until its limiter admits again, the others go first |
| retryable (server error, overload, timeout, connection) | the same deployment may be retried after a full-jitter backoff (at least the Retry-After) when the retry budget and the deadline allow; the other candidates go first meanwhile |
| any other fallback-worthy error (auth, 404)  | drop the deployment                                        |

A candidate is *passed over* while it is dropped, while its backoff runs, while its breaker
refuses, or while its rate limiter says wait. When no candidate can go now, the chain waits
for the soonest one that can (a backoff end, or a limiter's refill, in the rate wait room
ordered by priority and deadline) if that is within the deadline; a request whose wait
would outlast its deadline is answered ``rate_limited`` at once, with the time it needed.
When every candidate left is refused by an open breaker and nothing has been tried, the one
whose cooldown ends first is probed anyway (``Breaker.process_forced_probe``), rather than
failing blind.

Deadlines: the request's deadline bounds the whole chain. Each attempt's own timeout is the
provider's ``timeout_ms``, and, while other candidates are left, at most
``router.attempt_timeout_share`` of what remains of the deadline, so one hanging provider
cannot eat it all. For a stream that timeout bounds the time to the first token: the relay
moves the bound to the request's deadline when content starts to flow, and from then on the
request cannot fail over (the caller has content).

Hedging (``parallel_requests``): when the first attempt has not answered within the
deployment's observed p95 latency (``hedge_after``), a second attempt goes to the next
candidate; the first success wins, the other is cancelled. Both are listed in ``attempts``
and billed (a cancelled one by its estimated input). Streams are not hedged. An attempt
that is not hedged runs in the request's own task (awaited; its bound ends it by the
deadline); only a hedged pair runs as tasks, raced with ``asyncio.wait``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from router_agent.attempt import OneAttempt
from router_agent.chainrun import NOTHING, ChainRun, Outcome, skipped
from router_agent.core.limiter import NEVER
from router_agent.core.model import Deployment
from router_agent.core.retry import RetryBudget, RetryPolicy
from router_agent.ledger_service import Hold, LedgerService
from router_agent.outcomes import Outcomes, Pass
from router_agent.registry import ProviderRegistry
from router_agent.settings import RouterSettings
from router_agent.telemetry import Telemetry

if TYPE_CHECKING:
    from router_agent.waitroom import WaitRoom


class AttemptChain:
    def __init__(self, settings: RouterSettings, registry: ProviderRegistry, outcomes: Outcomes, ledger: LedgerService,
                 waitroom: WaitRoom, clock: Callable[[], float], rng: random.Random,
                 retry_policy: RetryPolicy, new_retry_budget: Callable[[], RetryBudget],
                 tracing: Telemetry):
        self.settings = settings
        self.registry = registry
        self.outcomes = outcomes
        self.ledger = ledger
        self.waitroom = waitroom
        self.clock = clock
        self.rng = rng
        self.retry_policy = retry_policy
        self.new_retry_budget = new_retry_budget
        self.retry_budgets: dict[str, RetryBudget] = {}
        self.tracing = tracing
        self.one = OneAttempt(registry, outcomes, ledger, clock, tracing)

    # ------------------------------------------------------------------ the chain

    async def run(self, run: ChainRun) -> Outcome | None:
        """The successful outcome, or None when the chain ended without one (``run`` then
        says why: ``last_error``, ``rate_wait_s``, ``budget_refusal``, the attempts)."""
        hedge_after: float | None = None
        waited_at: float | None = None
        try:
            while True:
                now = self.clock()
                if now >= run.deadline:
                    return None
                if not run.running or (hedge_after is not None and now >= hedge_after and len(run.running) < 2):
                    picked = self._pick(run, now)
                    if picked is not None:
                        dep, admission, is_retry, hold = picked
                        hedging = bool(run.running)
                        attempt = self._start(run, dep, admission, is_retry, hedging, hold)
                        hedge_after = None
                        if run.hedge and run.relay is None and not hedging:
                            hedge_after = self._hedge_at(run, dep, now)
                        if hedge_after is None and not run.running:
                            # Alone, and nothing to hedge it with: awaited in this task. Its own
                            # bound ends it by the deadline; no task, no wait, no timer here.
                            outcome = await attempt
                            if outcome.completion is not None:
                                run.won = True
                                return outcome
                            if outcome.deadline_hit or not self._after_failure(run, outcome):
                                return None
                            continue
                        task = asyncio.get_running_loop().create_task(attempt)
                        run.running = {**run.running, task: dep}
                    elif run.lease_short is not None and not run.running:
                        await self._renew_lease(run)
                        continue
                    elif not run.running:
                        wake = self._next_chance(run, now)
                        if wake is None or now == waited_at:  # a clock that stood still (a test's)
                            return None
                        if not await self.waitroom.wait(run.request.priority, run.deadline, wake):
                            return None  # the wait room is full
                        waited_at = now
                        run.not_before = _after_wait(run.not_before, wake)
                        continue
                    else:
                        hedge_after = None  # nothing to hedge with
                timeout = run.deadline - now
                if hedge_after is not None:
                    timeout = min(timeout, max(0.0, hedge_after - now))
                done, _ = await asyncio.wait(run.running, timeout=max(0.0, timeout),
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    run.running = _without(run.running, task)
                    outcome = task.result()
                    if outcome.completion is not None:
                        run.won = True
                        return outcome
                    if outcome.deadline_hit:
                        return None
                    if not self._after_failure(run, outcome):
                        return await self._settle_others(run)  # a hedge still running may win
        finally:
            await self._cancel_running(run)

    async def _renew_lease(self, run: ChainRun) -> None:
        """This instance's share of a budget ran short: lease more (one round trip), once."""
        dep, run.lease_short, run.lease_renewed = run.lease_short, None, True
        assert dep is not None
        held = await self.ledger.admit(run.request, dep)
        if isinstance(held, Hold):
            self.ledger.release(held)  # the lease is renewed: the next pick reserves for real

    async def _settle_others(self, run: ChainRun) -> Outcome | None:
        """A failure that ends the chain while a hedge still runs: the hedge may still win."""
        while run.running:
            done, _ = await asyncio.wait(run.running, timeout=max(0.0, run.deadline - self.clock()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return None
            for task in done:
                run.running = _without(run.running, task)
                outcome = task.result()
                if outcome.completion is not None:
                    run.won = True
                    return outcome
        return None

    async def _cancel_running(self, run: ChainRun) -> None:
        tasks = list(run.running)
        run.running = NOTHING
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ picking

    def _pick(self, run: ChainRun, now: float) -> tuple[Deployment, Pass, bool, Hold] | None:
        registry, outcomes = self.registry, self.outcomes
        breakers = registry.state.circuit_breakers
        limiters = registry.limiters
        tokens = run.active.tokens
        busy = set(run.running.values())
        open_only: list[Deployment] = []
        for dep in run.candidates:
            key = dep.key
            if key in run.dropped or dep in busy or run.not_before.get(key, 0.0) > now:
                continue
            breaker = breakers[key]
            if not breaker.allows(now) or not outcomes.provider_allows(dep.provider, now):
                open_only.append(dep)
                continue
            limiter = limiters.get(key)
            if limiter is not None and not limiter.allows(now, tokens):
                continue
            hold = self._hold(run, dep)
            if hold is None:
                continue
            admission = outcomes.admit(dep, now)
            if admission is None:  # allows() said yes at this same instant: cannot happen
                self.ledger.release(hold)
                continue
            if limiter is not None:
                limiter.take(now, tokens)  # allows() said yes at this same instant
            return dep, admission, run.retries.get(key, 0) > 0, hold
        if not run.attempts and not run.running and open_only and len(open_only) == self._left(run, busy):
            # Every candidate is cooling down: probe the one whose cooldown ends first.
            dep = min(open_only, key=lambda d: breakers[d.key].retry_at(now))
            hold = self._hold(run, dep)
            if hold is not None:
                admission = outcomes.admit(dep, now, forced=True)
                if admission is not None:
                    return dep, admission, False, hold
                self.ledger.release(hold)
        return None

    def _hold(self, run: ChainRun, dep: Deployment) -> Hold | None:
        """Reserve the attempt's estimated cost in the budgets; None when one refuses (a cap:
        the candidate is dropped; this instance's lease: renewed once, then tried again)."""
        held = self.ledger.reserve(run.request, dep, (run.active.input_tokens,
                                                      run.active.tokens - run.active.input_tokens))
        if isinstance(held, Hold):
            return held
        if held.reason == "lease" and not run.lease_renewed:
            run.lease_short = dep
            return None
        run.budget_refusal = held.message()
        run.dropped[dep.key] = None
        run.attempts.append(skipped(dep, "budget_exceeded", run.budget_refusal))
        return None

    @staticmethod
    def _left(run: ChainRun, busy: set[Deployment]) -> int:
        return sum(1 for d in run.candidates if d.key not in run.dropped and d not in busy)

    def _next_chance(self, run: ChainRun, now: float) -> float | None:
        """When a candidate could next be tried (a backoff's end or a limiter's refill), if
        before the deadline; else None, with ``rate_wait_s`` set when a rate limit is why."""
        limiters = self.registry.limiters
        soonest: float | None = None
        rate_wait = 0.0
        for dep in run.candidates:
            key = dep.key
            if key in run.dropped:
                continue
            at = max(now, run.not_before.get(key, now))
            limiter = limiters.get(key)
            if limiter is not None:
                wait = limiter.wait_s(at, run.active.tokens)
                if wait == NEVER:  # more tokens than its tokens per minute: never fits
                    run.too_large = True
                    continue
                if wait > 0:
                    at += wait
                    rate_wait = at - now if not rate_wait else min(rate_wait, at - now)
            if soonest is None or at < soonest:
                soonest = at
        if soonest is None or soonest <= now:
            return None  # nothing left, or only breakers refuse (the plan's filter saw them open)
        if soonest >= run.deadline:
            run.rate_wait_s = rate_wait
            return None
        return soonest

    def _budget(self, provider: str) -> RetryBudget:
        """The provider's retry budget: one provider's outage spends only its own."""
        budget = self.retry_budgets.get(provider)
        if budget is None:
            budget = self.retry_budgets[provider] = self.new_retry_budget()
        return budget

    def _hedge_at(self, run: ChainRun, dep: Deployment, now: float) -> float | None:
        if self._left(run, {*run.running.values(), dep}) == 0:
            return None
        hedging = self.settings.hedging
        if hedging.delay == "immediately":
            return now
        p95 = self.registry.stats[dep.key].p95_ms()
        delay_ms = hedging.unobserved_delay_ms if p95 is None else max(p95, hedging.min_delay_ms)
        return now + delay_ms / 1000

    # ------------------------------------------------------------------ after a failure

    def _after_failure(self, run: ChainRun, outcome: Outcome) -> bool:
        """Apply a failed attempt's meaning to the chain; False when the chain must stop."""
        error = outcome.error
        dep = outcome.dep
        if error is None:  # the provider's own timeout
            return self._maybe_retry(run, dep, None)
        run.last_error = error
        if not error.fallback or (run.relay is not None and run.relay.committed):
            return False
        code = error.code
        if code == "context_length_exceeded":
            window = dep.context_window or 0
            run.dropped.update(dict.fromkeys(d.key for d in run.candidates if (d.context_window or 0) <= window))
            return True
        if code == "content_filtered":
            run.dropped.update(dict.fromkeys(d.key for d in run.candidates if d.provider == dep.provider))
            return True
        if error.retryable:  # a 429 too: its limiter has learnt Retry-After and the quota left
            return self._maybe_retry(run, dep, error.retry_after_s, code == "rate_limited")
        run.dropped[dep.key] = None
        return True

    def _maybe_retry(self, run: ChainRun, dep: Deployment, retry_after_s: float | None,
                     rate_limited: bool = False) -> bool:
        key = dep.key
        now = self.clock()
        attempt = run.retries.get(key, 0) + 1
        remaining = run.deadline - now
        wait = self.retry_policy.backoff(attempt, self.rng.random(), retry_after_s=retry_after_s,
                                         remaining_s=remaining)
        if wait is None or not self._budget(dep.provider).try_retry(now):
            if rate_limited and retry_after_s is not None and retry_after_s >= remaining:
                run.rate_wait_s = max(run.rate_wait_s, retry_after_s)  # what it would have needed
            run.dropped[key] = None
        else:
            run.retries = {**run.retries, key: attempt}  # the first write makes it the run's own
            run.not_before = {**run.not_before, key: now + wait}
        return True

    # ------------------------------------------------------------------ one attempt

    def _start(self, run: ChainRun, dep: Deployment, admission: Pass, is_retry: bool, hedge: bool,
               hold: Hold) -> Coroutine[Any, Any, Outcome]:
        """Count the attempt and return it, to be awaited (alone) or run as a task (hedged)."""
        now = self.clock()
        metrics = self.registry.state.metrics
        if hedge:
            metrics.hedges += 1
            self.registry.state.provider_states[dep.provider].hedges += 1
        elif is_retry:
            metrics.retries += 1
            self.registry.state.provider_states[dep.provider].retries += 1
        elif run.attempts:
            metrics.failovers += 1
            self.registry.state.provider_states[dep.provider].failovers += 1
        remaining = run.deadline - now
        budget = self.registry.timeout_s(dep.provider)
        if self._left(run, set(run.running.values()) | {dep}) > 0:
            budget = min(budget, max(remaining * self.settings.attempt_timeout_share, 0.001))
        self._budget(dep.provider).record_request(now)
        run.life.process_attempt()
        run.active.provider = dep.provider
        run.active.model = dep.model
        self.outcomes.attempt_started(dep, now, run.active.tokens)
        attempt = self.one.attempt(run, dep, admission, hold, now, min(budget, remaining), budget < remaining,
                                   is_retry, hedge)
        return self.one.traced(run, dep, attempt) if self.tracing.enabled else attempt


# Helpers, not comprehensions in ``run``: a comprehension's free variable would be a cell
# that ``run`` makes when it starts and holds for as long as the provider takes.

def _without(running: Mapping[asyncio.Task[Outcome], Deployment],
             task: asyncio.Task[Outcome]) -> dict[asyncio.Task[Outcome], Deployment]:
    return {t: d for t, d in running.items() if t is not task}


def _after_wait(not_before: Mapping[tuple[str, str], float], wake: float) -> dict[tuple[str, str], float]:
    """The backoffs still running once the wait is over (one over by then is 0)."""
    return {key: 0.0 if at <= wake else at for key, at in not_before.items()}
