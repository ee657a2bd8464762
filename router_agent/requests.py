"""The ``llm_request`` shell: admission, the deadline, the attempt chain, exactly one answer.

Writes ``active_requests``, ``metrics`` (request counters) and ``load_balancing.cursor``;
provider outcomes go through the registry, spend through the ledger.

Theory of operation
-------------------
The subscription's callback (``on_request``) only admits, and never waits: nats-py runs a
subscription's callbacks one at a time, so a callback that waited would leave requests in
NATS's pending buffer, where the server drops them as a slow consumer without telling
anyone. The callback counts the request and starts a task, unless the router already holds
``max_concurrent_requests + max_queued_requests`` of them: then the request is answered
``overloaded`` at once, with a retry-after hint (backpressure the caller can see).

The task (``serve``) takes one of ``max_concurrent_requests`` slots (waiting in the queue,
within the request's deadline, when none is free), then follows a ``RequestLifecycle``
(routing -> attempting -> answered) and ends in exactly one answer, because:

- the request's deadline bounds provider work only; the answer is built inside that
  scope and published after it has closed, so a slow publish can never turn an ``ok``
  into a second ``timeout``;
- the attempt chain (``chain.py``: retries, fallbacks, hedges, rate waits) returns how it
  ended and never answers; when the caller's deadline runs out, or a shutdown cancels the
  task, the attempt is abandoned (not counted against the provider) and the caller is
  answered ``timeout`` / ``shutting_down``;
- ``RequestLifecycle.process_answer`` raises on a second answer, so a bug that tried to
  answer twice is loud, and the metrics are counted in the one place that answers.

Streaming (``stream: true``) takes the same chain, breakers, accounting and deadline; each
attempt streams through a ``StreamRelay`` (``streaming.py``, which says what differs).

Shutdown: requests already buffered when the agent begins to stop are still served while
the grace period lasts; only after it are they answered ``shutting_down``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

import msgspec

from router_agent.cached import CacheGate
from router_agent.chain import AttemptChain
from router_agent.chainrun import ChainRun, Outcome, book_after_answer
from router_agent.config import Config
from router_agent.core.cost import usd
from router_agent.core.lifecycle import RequestLifecycle
from router_agent.core.model import Deployment
from router_agent.core.redact import redact
from router_agent.core.retry import RetryBudget, RetryPolicy
from router_agent.ledger_service import LedgerService
from router_agent.outbox import Outbox, error_answer, invalid_request_answer
from router_agent.outcomes import Outcomes
from router_agent.planner import Planner
from router_agent.providers.base import estimated_usage
from router_agent.registry import ProviderRegistry
from router_agent.state import ActiveRequest, RouterState
from router_agent.streaming import VERIFIED_NOT_STREAMED, StreamRelay, cut_answer
from router_agent.telemetry import Tracing
from router_agent.waitroom import WaitRoom
from signals import (
    AssistantMessage,
    Attempt,
    ChatMessage,
    LlmRequest,
    LlmResponse,
    SignalError,
    Usage,
    Verification,
)

log = logging.getLogger("router_agent")

VERIFY_PROMPT = (
    "Check the answer above for mistakes. If it is correct and complete, repeat it unchanged. "
    "Otherwise reply with the corrected answer only."
)
"""What the verifier of a quality_assurance rule is asked (with the conversation and the draft)."""


class RequestShell:
    def __init__(
        self,
        config: Config,
        state: RouterState,
        registry: ProviderRegistry,
        outbox: Outbox,
        ledger: LedgerService,
        tracing: Tracing,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ):
        self.config = config
        self.planner = Planner(config, state, registry, outbox, ledger, clock, rng)
        self.settings = config.router
        self.state = state
        self.registry = registry
        self.outbox = outbox
        self.ledger = ledger
        self.tracing = tracing
        self.clock = clock
        self.tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self._admit_limit = self.settings.max_concurrent_requests + self.settings.max_queued_requests
        self.waitroom = WaitRoom(self.settings.rate_wait.max_waiting, clock)
        rng = self.planner.rng
        retry = self.settings.retry
        self.outcomes = Outcomes(registry, clock)
        self.chain = AttemptChain(
            self.settings, registry, self.outcomes, ledger, self.waitroom, clock, rng,
            RetryPolicy(initial_s=retry.initial_s, max_s=retry.max_s, multiplier=retry.multiplier,
                        max_retries=retry.max_retries, min_attempt_s=retry.min_attempt_s),
            lambda: RetryBudget(ratio=retry.budget_ratio, min_retries_per_s=retry.budget_min_per_s,
                                window_s=retry.budget_window_s),
            tracing,
        )
        self.cache: CacheGate | None = None
        """The response cache on the path (the agent sets it when ``router.cache.enabled``)."""
        self.refusing = False
        """Set when the shutdown grace period is over: requests still buffered are refused."""

    # ------------------------------------------------------------------ admission

    async def on_request(self, msg: Any, request: LlmRequest) -> None:
        headers = msg.headers
        traceparent = headers.get("traceparent") if headers else None
        metrics = self.state.metrics
        metrics.total_requests += 1
        metrics.in_flight += 1
        life = RequestLifecycle()
        if self.refusing:
            await self._refuse_stopping(request, msg.reply, traceparent, life)
            return
        if len(self.tasks) >= self._admit_limit:
            await self._shed(request, msg.reply, traceparent, life)
            return
        task = asyncio.create_task(self.serve(request, msg.reply, traceparent, life))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    @property
    def queued(self) -> int:
        """Requests admitted and waiting for a slot (a metric: the queue depth)."""
        return max(0, len(self.tasks) - self.settings.max_concurrent_requests)

    async def _shed(self, request: LlmRequest, reply: str, traceparent: str | None, life: RequestLifecycle) -> None:
        """In flight and queue both full: answered at once, never held in memory or left to
        NATS to drop. The hint is the time a slot takes to free, on average."""
        self.state.metrics.shed += 1
        response = error_answer(request, "overloaded",
                                f"router is at capacity ({self.settings.max_concurrent_requests} in flight, "
                                f"{self.settings.max_queued_requests} queued)", True, [])
        assert response.error is not None
        response.error.retry_after_ms = self.outcomes.typical_latency_ms()
        await self._finish(request, response, reply, traceparent, life)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # serve() contains everything up to the answer; this is a bug in answering itself.
            log.error("request task failed while answering", exc_info=task.exception())
            self.state.metrics.internal_errors += 1

    async def _refuse_stopping(self, request: LlmRequest, reply: str, traceparent: str | None,
                               life: RequestLifecycle) -> None:
        response = error_answer(request, "shutting_down", "router is stopping", True, [])
        await self._finish(request, response, reply, traceparent, life)

    async def reject(self, msg: Any, exc: SignalError) -> None:
        """Bad llm_request input: a typed error answer to whoever can be addressed."""
        await self.outbox.answer(invalid_request_answer(msg.data, exc), msg.reply, None)

    # ------------------------------------------------------------------ one request

    async def serve(self, request: LlmRequest, reply: str, traceparent: str | None, life: RequestLifecycle) -> None:
        """Route, call, fail over; then answer exactly once."""
        started = self.clock()
        key = (request.agent_id, request.request_id)
        active_requests = self.state.active_requests
        if key in active_requests:
            response = error_answer(request, "invalid_request",
                                    f"request_id {request.request_id!r} is already in flight for this agent", False, [])
            await self._finish(request, response, reply, traceparent, life)
            return
        active = active_requests[key] = ActiveRequest(request.request_id, request.agent_id, started)
        attempts: list[Attempt] = []
        span, traceparent = self.tracing.start(
            "llm_request", traceparent, {"router.agent_id": request.agent_id, "router.request_id": request.request_id}
        )
        response: LlmResponse | None = None
        relay = StreamRelay.for_request(self.outbox, request, reply, self.settings.stream_coalesce_ms,
                                        self.clock) if request.stream else None
        after: list[Callable[[], None]] = []  # bookkeeping (settlements, the cache's store) run once the answer is sent
        slot = False
        try:
            slot = await self._take_slot(request, started)
            if slot:
                response = await self._route_and_call(request, traceparent, started, active, attempts, life, relay,
                                                      after)
            else:
                response = error_answer(request, "timeout", "the deadline passed while the request waited for a slot "
                                        f"({self.settings.max_concurrent_requests} in flight)", True, attempts)
        except asyncio.CancelledError:
            response = error_answer(request, "shutting_down", "router stopped before the provider answered", True, attempts)
            if relay is not None and relay.committed:
                await relay.drain()
                response = self._cut(request, relay, attempts, stopped=True)
            try:
                await self._finish(request, response, reply, traceparent, life, relay)
            finally:
                self._after_answer(after)
            raise
        except Exception:
            log.exception("request %s failed unexpectedly", request.request_id)
            self.state.metrics.internal_errors += 1
            response = error_answer(request, "internal", "internal router error", True, attempts)
        finally:
            if slot:
                self._slots.release()
            del active_requests[key]
            if span is not None:
                self.tracing.end(span, {
                    "router.status": response.status if response else "error",
                    "router.error_code": response.error.code if response and response.error else "",
                    "router.provider": active.provider,
                    "router.model": active.model,
                    "router.attempts": len(attempts),
                })
        if not response.latency_ms:  # errors too say how long the caller waited
            response.latency_ms = round((self.clock() - started) * 1000, 3)
        try:
            await self._finish(request, response, reply, traceparent, life, relay)
        finally:
            self._after_answer(after)
        if after:
            await asyncio.sleep(0)  # serve() returns once that bookkeeping has run

    def _after_answer(self, after: list[Callable[[], None]]) -> None:
        """Queue the attempts' bookkeeping behind the answer's write to the bus (the caller does
        not wait for it); a callback, not the task's: it runs also when the task is cancelled."""
        if after:
            asyncio.get_running_loop().call_soon(book_after_answer, after[:], self.state.metrics)
            after.clear()

    async def _take_slot(self, request: LlmRequest, started: float) -> bool:
        """A concurrency slot, waiting for one while the request's deadline allows."""
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # free: returns without yielding
            return True
        timeout_ms = request.timeout_ms or self.settings.default_timeout_ms
        try:
            async with asyncio.timeout(max(0.0, started + timeout_ms / 1000 - self.clock())):
                await slots.acquire()
        except TimeoutError:
            return False
        return True

    async def _finish(self, request: LlmRequest, response: LlmResponse, reply: str, traceparent: str | None,
                      life: RequestLifecycle, relay: StreamRelay | None = None) -> None:
        """The one place a request is answered and counted."""
        if relay is not None and not relay.declined:
            response.streamed = relay.summary()
        response, payload = self.outbox.prepare_answer(response)  # what is sent is what is counted
        life.process_answer(response.error.code if response.error else "ok")
        metrics = self.state.metrics
        metrics.in_flight -= 1
        if response.error is None:
            metrics.completed += 1
        else:
            metrics.failed += 1
            code = response.error.code
            metrics.errors_by_code[code] = metrics.errors_by_code.get(code, 0) + 1
        if self.tracing.enabled:
            usage = response.usage
            first = response.streamed.first_chunk_ms / 1000 if response.streamed is not None else None
            self.tracing.request_done(
                request.agent_id, response.provider or "", response.model or "", response.status,
                response.latency_ms / 1000, first, usage.input_tokens if usage else 0,
                usage.output_tokens if usage else 0, response.cost_usd, response.cached,
                response.error.code if response.error else None)
        await self.outbox.send_answer(request.agent_id, payload, reply, traceparent)

    async def _verify(self, request: LlmRequest, draft: LlmResponse, verifier: Deployment, deadline: float,
                      started: float, active: ActiveRequest, attempts: list[Attempt],
                      life: RequestLifecycle, after: list[Callable[[], None]]) -> LlmResponse:
        """quality_assurance: a stronger model checks the draft. The caller gets the
        verifier's answer (``verification.status: verified``); if the verifier fails, the
        draft with ``status: failed``. Both calls are billed and listed in ``attempts``."""
        content = draft.message.content if draft.message is not None else ""
        check = msgspec.structs.replace(request, model=None, messages=[
            *request.messages,
            ChatMessage(role="assistant", content=content),
            ChatMessage(role="user", content=VERIFY_PROMPT),
        ])
        timeout_ms = request.timeout_ms or self.settings.default_timeout_ms
        first = len(attempts)
        book_after_answer(after, self.state.metrics)  # the draft's cost is booked before the verifier's is held
        after.clear()
        run = ChainRun(check, [verifier], deadline, active, attempts, life, after_answer=after)
        checked = self._answer(run, await self.chain.run(run), first, timeout_ms, started)
        draft_info = Verification(status="failed", draft_model=draft.model, draft_provider=draft.provider,
                                  verifier_model=verifier.model, verifier_provider=verifier.provider)
        if checked.error is not None:
            draft.verification = draft_info
            draft.attempts = attempts
            return draft
        draft_info.status = "verified"
        checked.verification = draft_info
        checked.cost_usd = round(checked.cost_usd + draft.cost_usd, 10)
        checked.usage = _sum_usage(draft.usage, checked.usage)
        return checked

    async def _route_and_call(
        self,
        request: LlmRequest,
        traceparent: str | None,
        started: float,
        active: ActiveRequest,
        attempts: list[Attempt],
        life: RequestLifecycle,
        relay: StreamRelay | None,
        after: list[Callable[[], None]],
    ) -> LlmResponse:
        planned = await self.planner.plan(request, traceparent, active)
        if not planned.ordered:
            return error_answer(request, "no_candidates", planned.reason, False, attempts)
        life.process_plan()
        timeout_ms = request.timeout_ms or self.settings.default_timeout_ms
        deadline = started + timeout_ms / 1000
        verifier = planned.verifier
        cache_key = None
        if self.cache is not None:
            cache_key, hit = await self.cache.lookup(request, planned, started, deadline, relay)
            if hit is not None:
                return hit
        if relay is not None and verifier is not None:
            relay.declined, relay = True, None  # the verifier's answer replaces the draft: nothing to stream
        first = len(attempts)
        run = ChainRun(request, planned.ordered, deadline, active, attempts, life, relay, planned.hedge, traceparent,
                       after_answer=after)
        response = self._answer(run, await self.chain.run(run), first, timeout_ms, started)
        if verifier is not None and response.error is None and response.model == planned.ordered[0].model:
            response = await self._verify(request, response, verifier, deadline, started, active, attempts, life,
                                          after)
        if request.stream and verifier is not None:
            response.warnings.append(VERIFIED_NOT_STREAMED)
        if cache_key is not None and self.cache is not None:
            after.append(functools.partial(self.cache.store, cache_key, response))  # once the caller has it
        return response

    def _answer(self, run: ChainRun, outcome: Outcome | None, first: int, timeout_ms: int,
                started: float) -> LlmResponse:
        """How the attempt chain (``chain.py``: retries, fallbacks, hedges) ended, as the answer.
        ``first``: the chain's attempts start there in ``run.attempts``. (Plain code after the
        chain's ``await``: no coroutine of its own held for the length of every call.)"""
        request, attempts, relay, deadline = run.request, run.attempts, run.relay, run.deadline
        if outcome is not None and outcome.completion is not None:
            dep, completion = outcome.dep, outcome.completion
            cost = sum(a.cost_usd for a in attempts[first:])  # a lost hedge's input is billed too
            return LlmResponse(
                request_id=request.request_id,
                agent_id=request.agent_id,
                status="ok",
                message=AssistantMessage(content=completion.content, tool_calls=completion.tool_calls),
                model=dep.model,
                provider=dep.provider,
                emulated=self.state.providers[dep.provider].emulated,
                finish_reason=completion.finish_reason,  # type: ignore[arg-type]  # adapters normalise it
                usage=completion.usage(),
                cost_usd=round(cost, 10),
                latency_ms=round((self.clock() - started) * 1000, 3),
                attempts=attempts,
            )
        if relay is not None and relay.committed:
            return self._cut(request, relay, attempts)
        if self.clock() >= deadline:
            return error_answer(request, "timeout", f"no answer within {timeout_ms} ms", True, attempts)
        last_error = run.last_error
        known = self.registry.secrets.known()
        if last_error is not None and not last_error.fallback:
            return error_answer(request, last_error.code, redact(last_error.message, known), False, attempts)
        if run.rate_wait_s > 0:
            response = error_answer(request, "rate_limited", "rate limits leave no candidate within the deadline: it "
                                    f"would have needed to wait {run.rate_wait_s * 1000:.0f} ms", True, attempts)
            assert response.error is not None
            response.error.retry_after_ms = round(run.rate_wait_s * 1000, 1)
            return response
        if not any(a.outcome != "skipped" for a in attempts):
            if run.budget_refusal:
                return error_answer(request, "budget_exceeded", run.budget_refusal, False, attempts)
            if run.too_large:
                return error_answer(request, "rate_limited", "the request needs more tokens than the tokens-per-minute "
                                    "limit of every candidate allows", False, attempts)
        return error_answer(request, "all_providers_failed", f"{len(attempts)} attempt(s) failed", True, attempts)


    def _cut(self, request: LlmRequest, relay: StreamRelay, attempts: list[Attempt],
             stopped: bool = False) -> LlmResponse:
        """A stream that ended after its first chunk: an error that says what was delivered,
        billed by estimate (the vendor's usage went with the stream)."""
        dep = relay.deployment
        assert dep is not None  # committed: an attempt sent a chunk
        usage = estimated_usage(request, relay.chars)
        cost = usd(self.ledger.charge(request.agent_id, dep, usage))  # its hold was released at the failure
        self.state.metrics.total_cost += cost
        return cut_answer(relay, attempts, usage, cost, self.state.providers[dep.provider].emulated, stopped)


def _sum_usage(a: Usage, b: Usage) -> Usage:
    """Usage of two calls billed for one answer (every counter adds up)."""
    return Usage(**{f: getattr(a, f) + getattr(b, f) for f in Usage.__struct_fields__ if f != "estimated"},
                 estimated=a.estimated or b.estimated)

