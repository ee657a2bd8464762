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
import functools
import heapq
import math
from collections.abc import Callable, Coroutine
from typing import Any, Self

from router_agent.chainrun import ChainRun, Outcome
from router_agent.core.cost import usd
from router_agent.core.model import Deployment
from router_agent.core.redact import redact
from router_agent.ledger_service import Hold, LedgerService
from router_agent.outcomes import Outcomes, Pass
from router_agent.providers.base import Completion, ProviderError
from router_agent.registry import ProviderRegistry
from router_agent.telemetry import Telemetry
from signals import Attempt, ErrorInfo, Usage


class BoundTimer:
    """One loop timer for the bounds of every attempt in flight: a heap of expiries, the loop's
    timer armed for the earliest. A timer of the loop's own costs ~550 bytes (uvloop) for as
    long as the call lasts; a row here costs ~70. A bound that ended, or moved, leaves its row
    behind (it no longer matches: nothing fires); rows are compacted when the stale ones
    outnumber the rest."""

    __slots__ = ("_armed", "_compact_at", "_handle", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Bound]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf
        self._seq = 0
        self._compact_at = 64

    def schedule(self, bound: Bound, when: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, bound))
        if when < self._armed:
            self._arm(when)
        if len(self._heap) >= self._compact_at:
            self._heap = [row for row in self._heap if row[2].due == row[0]]
            heapq.heapify(self._heap)
            self._compact_at = max(64, 2 * len(self._heap))

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle, self._armed = None, math.inf
        heap = self._heap
        now = asyncio.get_running_loop().time()
        while heap and heap[0][0] <= now:
            when, _, bound = heapq.heappop(heap)
            if bound.due == when:  # else it ended, or was moved (its new row is in the heap)
                bound.expire()
        if heap:
            self._arm(heap[0][0])


class Bound:
    """``asyncio.timeout``'s semantics for an attempt's bound, on a shared ``BoundTimer``
    instead of a loop timer of its own (an attempt is on every request's path and its bound
    lives as long as the call). As with ``asyncio.timeout``, the expiry cancels the task and
    ``__aexit__`` turns that cancellation, and only that one, into ``TimeoutError``;
    ``reschedule`` moves the expiry (a stream's first chunk moves it to the request's deadline)."""

    __slots__ = ("_cancelling", "_delay", "_expired", "_task", "_timer", "due")

    def __init__(self, timer: BoundTimer, delay: float):
        self._timer = timer
        self._delay = delay
        self._expired = False
        self._task: asyncio.Task[Any] | None = None
        self.due = math.nan
        """When it expires (loop time); NaN once it has ended (NaN equals no row's time)."""

    async def __aenter__(self) -> Self:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Bound must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.reschedule(asyncio.get_running_loop().time() + self._delay)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        task, self._task, self.due = self._task, None, math.nan  # its row no longer matches
        if self._expired and exc_type is asyncio.CancelledError and task is not None \
                and task.uncancel() <= self._cancelling:
            raise TimeoutError from exc

    def reschedule(self, when: float) -> None:
        self.due = when
        self._timer.schedule(self, when)

    def expired(self) -> bool:
        return self._expired

    def expire(self) -> None:
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()


class OneAttempt:
    def __init__(self, registry: ProviderRegistry, outcomes: Outcomes, ledger: LedgerService,
                 clock: Callable[[], float], tracing: Telemetry):
        self.registry = registry
        self.outcomes = outcomes
        self.ledger = ledger
        self.clock = clock
        self.tracing = tracing
        self.timer = BoundTimer()
        """Every attempt's bound (``Bound``) expires through this one timer."""

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
        scope = Bound(self.timer, bound)
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
        now = self.clock()
        latency = (now - began) * 1000
        usage = completion.usage()
        micros = self.ledger.price(hold, usage)
        cost = usd(micros)
        run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="ok", latency_ms=round(latency, 3),
                                    retry=is_retry, hedge=hedge, cost_usd=round(cost, 10)))
        outcome.completion = completion
        outcome.cost = cost
        # A partial, not a closure: a closure's variables would be cells made when every
        # attempt starts, held for as long as the provider takes.
        book = functools.partial(self._book_success, dep, admission, hold, usage, micros, latency, completion,
                                 run.active.tokens, now)
        if run.after_answer is None:
            book()
        else:
            run.after_answer.append(book)  # the caller's answer goes first (requests.py)
        return outcome

    def _book_success(self, dep: Deployment, admission: Pass, hold: Hold, usage: Usage, micros: int,
                      latency_ms: float, completion: Completion, tokens: int, now: float) -> None:
        """A successful attempt's settlement: its cost booked, its outcome on breakers, stats
        and limiter."""
        self.ledger.settle(hold, usage, micros)
        cost = usd(micros)
        self.registry.state.metrics.total_cost += cost
        self.outcomes.record_success(dep, admission, latency_ms, completion, cost, tokens, now)

    def _broken(self, run: ChainRun, dep: Deployment, admission: Pass, latency_ms: float) -> None:
        """An adapter raised what it must not (a bug): give the admission back, say so in the
        attempts, and let serve() answer ``internal``. Not counted against the provider."""
        self.outcomes.record_abandon(dep, admission, run.active.tokens)
        run.attempts.append(Attempt(provider=dep.provider, model=dep.model, outcome="error",
                                    latency_ms=round(latency_ms, 3),
                                    error=ErrorInfo(code="internal", message="internal router error")))
