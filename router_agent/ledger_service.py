"""The cost ledger's shell: the pure ledger, budgets and estimator (``core/``) tied to the store.

Writes nothing of ``RouterState``; owns what this instance booked, the batches it has not
shipped yet, its budget accounts and leases, and the learned estimate corrections.

Theory of operation
-------------------
The request path is synchronous and does no I/O (microseconds, ``bench/ledger.py``):
``reserve`` (or ``admit``, which renews a short lease first) before an attempt, then
``settle`` when the provider billed it or ``release`` when not. A flush every
``flush_interval_s``, in the background:

1. reads the day's lease document (``lease.<day>``, ``core/lease.py``) and, when
   ``Budget.renewal_due``, writes this instance's claim by compare-and-set;
2. ships what was booked since the last flush as one ``cost_event`` per day to the stream
   (``<prefix>cost_event.<instance>``, ``Nats-Msg-Id`` per batch) and adds it to this
   instance's record of that day (``spend.<day>.<instance>``, a ``cost_event`` holding the
   day's cumulative lines and the last batch applied, so a retried batch is applied once);
3. every ``refresh_interval_s``, reads the other instances' records of the days reported.

``start`` restores this instance's records (a restart keeps the day's spend) and takes the
first leases; ``stop`` flushes and gives back what the leases hold beyond what is in use.

Without JetStream: ``store: jetstream`` refuses to start (``LedgerUnavailable``, saying what
to do); ``store: memory`` runs on this process alone, with a warning. JetStream lost while
running: spend waits here and ships when it is back; leases lapse after ``lease_ttl_s / 2``,
and capped scopes then refuse (fail closed) until a renewal succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

import signals as sig
from router_agent import store
from router_agent.config import Config
from router_agent.core import cost as pricing
from router_agent.core.budget import ALL, CLOUD, Budget, Refusal, Reservation
from router_agent.core.lease import Holder, LeaseDoc, Scope, decode_doc, encode_doc
from router_agent.core.ledger import Calendar, CostLedger, recent_days, with_batch
from router_agent.core.model import Deployment
from router_agent.store import Conflict, StoreError, compare_and_set
from router_agent.tasks import cancel_and_wait
from signals import CostEvent, CostReport, ErrorInfo, LlmRequest, SignalError, Usage

log = logging.getLogger("router_agent")

_record = msgspec.json.Decoder(CostEvent)  # a spend record


class LedgerUnavailable(Exception):
    """The configured store cannot be used; the message says what to do."""


@dataclass(slots=True)
class Hold:
    """One attempt's reservation: hand it back to ``settle`` or ``release`` exactly once."""

    reservation: Reservation
    agent: str
    dep: Deployment
    est_in: int
    est_out: int
    """The raw estimates, which the estimator learns against."""


def caps_of(config: Config) -> dict[Scope, int]:
    """The configured daily caps in micro-dollars (``router.budgets`` and
    ``max_cloud_spend_per_day``, the lower cloud cap winning)."""
    b = config.router.budgets
    caps: dict[Scope, int] = {}
    if b.daily_usd is not None:
        caps[ALL] = pricing.micros(b.daily_usd)
    cloud = [v for v in (b.cloud_daily_usd, config.routing.global_overrides.max_cloud_spend_per_day) if v is not None]
    if cloud:
        caps[CLOUD] = pricing.micros(min(cloud))
    caps.update({("agent", a): pricing.micros(v) for a, v in b.per_agent_usd.items()})
    caps.update({("provider", p): pricing.micros(v) for p, v in b.per_provider_usd.items()})
    return caps


def lease_key(day: str) -> str:
    return f"lease.{day}"


def spend_key(day: str, instance: str) -> str:
    return f"spend.{day}.{store.key_token(instance)}"


class LedgerService:
    def __init__(self, config: Config, instance_id: str, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, stores: tuple[store.KeyValue, store.EventLog] | None = None):
        """``stores``: a key-value store and an event log to use instead of the configured ones."""
        s = self.settings = config.router.budgets
        self.config, self.instance_id, self.stores = config, instance_id, stores
        self.kv: store.KeyValue = store.MemoryKV()
        self.events: store.EventLog = store.MemoryLog()
        self.shared = False
        """The ledger is the one every instance on the bus shares (JetStream)."""
        self.clock, self.wall = clock, wall
        self.calendar = Calendar(ZoneInfo(s.time_zone))
        self.budget = Budget(instance_id, caps_of(config), day=self.calendar.day(wall()), lease_share=s.lease_share,
                             lease_min=pricing.micros(s.lease_min_usd), lease_ttl_s=s.lease_ttl_s,
                             local_only_share=s.local_only_share)
        self.estimator = pricing.CostEstimator(s.estimator_alpha)
        self.own = CostLedger()
        """What this instance booked (and restored), but for ``pending``."""
        self.pending = CostLedger()
        """Booked since the last flush took it (the request path books here only)."""
        self.others = CostLedger()
        """The other instances' records of the days reported, as last read."""
        self.outgoing: deque[CostEvent] = deque()
        """Batches taken from ``pending``, in order, until the store has them."""
        self.subject = f"{sig.Subjects(config.router.subject_prefix).prefix}cost_event.{sig.token(instance_id)}"
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.store_failures = 0
        self._source = f"router-agent/{instance_id}"
        self._boot = os.urandom(4).hex()
        self._batches = itertools.count(1)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._next_refresh = 0.0
        self._failing = False

    # ------------------------------------------------------------------ start / stop

    async def _open(self, nc: Any) -> None:
        s, prefix = self.settings, self.config.router.subject_prefix
        if self.stores is not None:
            self.kv, self.events = self.stores
            self.shared = not isinstance(self.kv, store.MemoryKV)
            return
        if s.store == "memory":
            log.warning("cost ledger in memory (router.budgets.store: memory): this instance's spend only, "
                        "lost at restart, and budgets are not shared with other instances")
            return
        try:
            self.kv, self.events = await store.open_jetstream(
                nc, bucket=store.prefixed_name(prefix, s.bucket), stream=store.prefixed_name(prefix, s.stream),
                subjects=[f"{sig.Subjects(prefix).prefix}cost_event.>"], max_age_s=s.retention_days * 86400.0,
                storage=s.storage, timeout_s=s.store_timeout_s,
            )
        except StoreError as exc:
            raise LedgerUnavailable(
                f"the cost ledger needs JetStream on the bus: {exc}. Run nats-server with JetStream (-js), "
                "or set router.budgets.store: memory for a ledger of this process only") from None
        self.shared = True

    async def start(self, nc: Any = None) -> None:
        """Open the configured store on ``nc`` (``LedgerUnavailable`` when it cannot be used),
        restore this instance's records of the days reported, take the first leases, and flush
        from now on."""
        await self._open(nc)
        try:
            today = self.budget.day
            for day in recent_days(today, self.settings.report_days):
                raw, _ = await self.kv.get(spend_key(day, self.instance_id))
                entries = _record.decode(raw).entries if raw else []
                self.own.add_entries(day, entries)
                if day == today:  # today's spend counts against today's caps again
                    for e in entries:
                        self.budget.charge(e.agent_id, e.provider, e.cloud, e.cost_micros)
            async with self._lock:
                await self._renew(force=True)
            await self.refresh()
        except StoreError as exc:
            raise LedgerUnavailable(f"the cost ledger cannot be read: {exc}") from None
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Ship what is booked and give back the unused leases."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self.budget.state == "returned":
            return
        try:
            await self.flush()
            returned: Holder | None = None

            def give_back(doc: LeaseDoc) -> LeaseDoc:
                nonlocal returned
                if returned is None:
                    returned = self.budget.process_return(doc)[self.instance_id]
                return {**doc, self.instance_id: returned}

            async with self._lock:
                await compare_and_set(self.kv, lease_key(self.budget.day),
                                      lambda raw: encode_doc(give_back(decode_doc(raw))))
        except StoreError as exc:
            log.warning("cost ledger: not all spend reached the store at stop (%s); %d batch(es) lost",
                        exc, len(self.outgoing) + bool(len(self.pending)))

    # ------------------------------------------------------------------ the request path

    def reserve(self, request: LlmRequest, dep: Deployment, tokens: tuple[int, int] | None = None) -> Hold | Refusal:
        """Hold the attempt's estimated cost against every budget it touches (no I/O).
        ``tokens``: the raw ``(input, output)`` estimates, when the caller has them already."""
        est_in, est_out = tokens or (pricing.estimate_input_tokens(request), pricing.estimate_output_tokens(request))
        estimate = pricing.tokens_micros(dep, *self.estimator.corrected(dep, est_in, est_out, request.params.max_tokens))
        self._today()
        held = self.budget.reserve(self.clock(), request.agent_id, dep.provider, dep.type == "cloud", estimate)
        return held if isinstance(held, Refusal) else Hold(held, request.agent_id, dep, est_in, est_out)

    async def admit(self, request: LlmRequest, dep: Deployment, tokens: tuple[int, int] | None = None) -> Hold | Refusal:
        """``reserve``; when only this instance's lease is short, renew it (a round trip) and
        ask once more. A refusal that stays is the caller's ``budget_exceeded``."""
        held = self.reserve(request, dep, tokens)
        if isinstance(held, Refusal) and held.reason == "lease" and self.budget.state != "returned":
            try:
                async with self._lock:
                    await self._renew(need=self.estimate_micros(request, dep))
            except StoreError as exc:
                self._store_failed(exc)
                return held
            held = self.reserve(request, dep, tokens)
        return held

    def settle(self, held: Hold, usage: Usage, cost: int | None = None) -> int:
        """The provider billed the attempt (answered, failed after billing, lost a hedge):
        book its exact cost and learn from it; the micro-dollars. ``cost``: those micro-dollars,
        when the caller priced the usage already (``price``)."""
        dep = held.dep
        if cost is None:
            cost = pricing.cost_micros(usage, dep)
        if not usage.estimated:
            self.estimator.learn(dep.key, held.est_out, usage.output_tokens,
                                 estimated_in=held.est_in, actual_in=usage.input_tokens)
        self._book(held.agent, dep, usage, cost)
        self.budget.settle(held.reservation, cost)
        return cost

    @staticmethod
    def price(held: Hold, usage: Usage) -> int:
        """What ``settle`` will book for ``usage``, in micro-dollars (pure: nothing is booked)."""
        return pricing.cost_micros(usage, held.dep)

    def release(self, held: Hold) -> None:
        """The attempt was not billed (refused, failed before the provider charged, abandoned)."""
        self.budget.release(held.reservation)

    def charge(self, agent: str, dep: Deployment, usage: Usage) -> int:
        """Book a billed call that held no reservation; the micro-dollars."""
        cost = pricing.cost_micros(usage, dep)
        self._book(agent, dep, usage, cost)
        self.budget.charge(agent, dep.provider, dep.type == "cloud", cost)
        return cost

    def estimate_micros(self, request: LlmRequest, dep: Deployment) -> int:
        """The learned estimate of ``request`` on ``dep`` (what ``reserve`` holds)."""
        return self.estimator.estimate_micros(request, dep)

    def _book(self, agent: str, dep: Deployment, usage: Usage, cost: int) -> None:
        self.pending.book(self._today(), agent, dep.provider, dep.model, cloud=dep.type == "cloud", micros=cost,
                          input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                          cached_input_tokens=usage.cached_input_tokens)

    def _today(self) -> str:
        day = self.calendar.day(self.wall())
        if day != self.budget.day:
            self.budget.process_day(day)
        return day

    # ------------------------------------------------------------------ figures

    def daily_cloud_cost(self) -> float:
        """USD of cloud spend today, every instance's settled plus this one's in flight: the
        routing engine's ``daily_cost``."""
        self._today()
        return pricing.usd(self.budget.committed(CLOUD))

    def cloud_cap_usd(self) -> float | None:
        """The cloud cap this ledger enforces (``max_cloud_spend_per_day`` or
        ``budgets.cloud_daily_usd``, the lower): the engine's ``budget``, with the strategy's."""
        cap = self.budget.caps.get(CLOUD)
        return None if cap is None else pricing.usd(cap)

    def local_only(self, agent: str) -> str | None:
        """Why this agent's requests should keep to local models now (a cap's local-only share
        is reached), or None."""
        return self.budget.local_only(agent)

    def report(self, instance_id: str | None = None, since: str | None = None) -> CostReport:
        wall = self.wall()
        today = self._today()
        days = recent_days(today, self.settings.report_days)
        view = self.own.only(days)
        view.merge(self.pending.only(days))
        view.merge(self.others.only(days))
        return view.report(
            instance_id or self.instance_id, since or self.started_at, day=today,
            time_zone=self.settings.time_zone, shared=self.shared, budgets=self.budget.statuses(),
            projected_day_micros=self.calendar.projected(view.spent(today), wall),
        )

    # ------------------------------------------------------------------ the flush

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)  # a timer, not a synchronisation
            try:
                await self.flush()
            except StoreError as exc:
                self._store_failed(exc)
            except Exception:  # a bug here must not stop the ledger from shipping for good
                log.exception("cost ledger: flush failed")
            else:
                if self._failing:
                    self._failing = False
                    log.warning("cost ledger: the store is reachable again")

    async def flush(self) -> None:
        """Renew the leases when due, ship the spend booked since the last flush, and read the
        other instances' spend when due."""
        async with self._lock:
            await self._renew()
            await self._ship()
        if self.clock() >= self._next_refresh:
            await self.refresh()

    async def _renew(self, need: int = 0, force: bool = False) -> None:
        """Read the day's leases; claim by compare-and-set when due (or ``need`` asks)."""
        now, wall, day = self.clock(), self.wall(), self._today()
        key = lease_key(day)
        for _ in range(store.CAS_ATTEMPTS):
            raw, revision = await self.kv.get(key)
            if self.budget.day != day or self.budget.state == "returned":
                return
            doc = decode_doc(raw)
            if not (force or need or self.budget.renewal_due(now)):
                self.budget.process_seen(doc)
                return
            claimed = self.budget.process_claim(doc, now, wall, need)
            try:
                await self.kv.update(key, encode_doc(claimed), revision)
            except Conflict:
                continue
            if self.budget.day == day and self.budget.state != "returned":
                self.budget.process_renewed(claimed, now)
            return
        raise StoreError(f"the leases of {day} changed under {store.CAS_ATTEMPTS} claims in a row")

    async def _ship(self) -> None:
        if len(self.pending):
            taken = self.pending.take()
            self.own.merge(taken)
            for day in sorted(taken.days()):
                self.outgoing.append(CostEvent(
                    instance_id=self.instance_id, day=day, batch=f"{self._boot}-{next(self._batches)}",
                    entries=taken.entries(day),
                ))
        while self.outgoing:
            event = self.outgoing[0]
            payload = sig.encode_event("cost_event", event, source=self._source)
            await self.events.publish(self.subject, payload, f"{self.instance_id}:{event.batch}")
            await compare_and_set(self.kv, spend_key(event.day, self.instance_id), partial(with_batch, event))
            self.outgoing.popleft()

    async def refresh(self) -> None:
        """Read the other instances' records of the days reported (they name themselves in
        each day's lease document)."""
        self._next_refresh = self.clock() + self.settings.refresh_interval_s
        if not self.shared:
            return
        others = CostLedger()
        for day in recent_days(self.budget.day, self.settings.report_days):
            holders = [i for i in decode_doc((await self.kv.get(lease_key(day)))[0]) if i != self.instance_id]
            for instance in holders:
                raw, _ = await self.kv.get(spend_key(day, instance))
                if raw:
                    others.add_entries(day, _record.decode(raw).entries)
        self.others = others

    def _store_failed(self, exc: StoreError) -> None:
        self.store_failures += 1
        if not self._failing:
            self._failing = True
            log.warning("cost ledger: the store is unreachable (%s); spend is kept here until it is back, "
                        "and capped budgets refuse once the leases lapse", exc)

    # ------------------------------------------------------------------ on demand

    async def serve_endpoint(self, control: Any) -> None:
        """Add ``router_control.cost_report`` to the started control service (``ControlService``
        is at its size limit, so the handler lives here and uses its decode and answer steps)."""
        group = control.service.add_group(name=control.subjects.router_control)
        await group.add_endpoint(name="cost_report", handler=partial(self._on_query, control),
                                 metadata={"signal": "cost_query"})

    async def _on_query(self, control: Any, request: Any) -> None:
        try:
            query, _, _ = control._decode(request.data, "cost_query")
        except SignalError as exc:
            await control._refuse(request, "cost_report",
                                  [ErrorInfo(code=exc.code, message=exc.message, field=exc.field)])
            return
        if query.refresh:
            try:
                await self.refresh()
            except StoreError as exc:
                self._store_failed(exc)  # answered with what is known
        control.counts["cost_report"]["accepted"] += 1
        await control._answer(request, "cost_report", self.report())

