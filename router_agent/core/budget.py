"""Daily budgets that router instances share through leases, as a sans-io state machine.

Rules
-----
1. A *scope* is a tuple: ``("all", "")`` every billed call, ``("cloud", "")`` calls to cloud
   models, ``("agent", id)``, ``("provider", name)``. A cap is micro-dollars per day of one
   scope. ``all`` and ``cloud`` are always tracked (reports read them), capped or not; agent
   and provider scopes exist only when capped.
2. Instances share one *lease document* per day, written by compare-and-set. It lists every
   instance (holder) with, per scope, its ``granted`` and ``settled`` micros, and when its
   lease expires (wall clock). A holder's *claim* in a scope is ``max(granted, settled)``.
3. ``reserve`` holds a call's estimate in every scope the call touches, before the call. In a
   capped scope it is admitted only when this instance's settled + reserved + estimate fits
   its grant. It is refused with reason ``cap`` when the settled spend of all instances plus
   what is reserved here plus the estimate passes the cap, else with reason ``lease`` when
   only this instance's lease is short (the shell renews it and asks once more). A call
   estimated at 0 is never refused.
4. Every admitted reservation ends exactly once: ``settle`` (billed: the actual micros
   replace the estimate) or ``release`` (not billed). ``charge`` books a billed call that held
   no reservation. Settling or releasing a reservation twice, or one never given, raises.
5. A claim lowers this instance's grant here at once and raises it only when the write has
   succeeded (``process_renewed``): the grant admitted against is never above what the shared
   document records for this instance.
6. A lease is good until ``lease_ttl_s / 2`` after the claim that wrote it (monotonic, from
   before the round trip); past that the instance is ``lapsed`` and refuses capped scopes
   until a renewal succeeds. Other instances reclaim a holder's unused grant (``granted :=
   min(granted, settled)``) only once its ``expires_at`` (claim wall time + ``lease_ttl_s``)
   has passed.
7. A new day starts ``unleased`` with nothing settled; reservations still in flight move to it.
8. After ``returned`` (shutdown) a reservation is a caller bug and raises ``BudgetError``, as
   does any ``(state, event)`` pair ``TRANSITIONS`` does not list.

Theory of operation
-------------------
The request path only calls ``reserve`` / ``settle`` / ``release``: plain arithmetic on this
instance's accounts, no I/O. The shell's flush reads the day's document, asks
``process_claim`` for the document to write when ``renewal_due`` (its settled spend changed,
a lease runs low or high, or a quarter of the lease time passed), writes it by
compare-and-set (re-reading on conflict) and reports success with ``process_renewed``; a read
with nothing to write goes to ``process_seen``. A claim sizes each lease as
``lease_share`` of the budget nobody holds (at least ``lease_min``), and tops it up when less
than half of that is left or gives back what is above twice that, so instances near a cap
hold little each.

The bound
---------
For one capped scope with cap C, the spend settled by all instances for the day is at most
``C + sum_i E_i + U``, where ``E_i`` is the sum, over the calls in flight on instance ``i`` at
its last admission of a non-zero estimate in that scope and the calls of zero estimate it
admitted since (a free model's zero estimate is admitted even past the cap: it holds
nothing), of ``max(0, actual - estimate)`` (their estimation error), and ``U`` the billed
calls that held no reservation (``charge``) plus those in flight at midnight that moved into
the day. Why: a write keeps the grants within the cap (a writer grants itself at most the
cap minus the others' claims, and never less than it has in use; reclaim only lowers
grants); an instance admits an estimate only within its grant, which is
never above its grant in the document (rule 5); so what it settles beyond its final grant is
the error of what it had in flight. With at most R calls in flight per instance, each
underestimated by at most d, N instances pass the cap by at most ``N * R * d``; a request
with ``max_tokens`` bounds its output, so d is then the input estimate's error only.

This assumes that an instance cut off from JetStream stops admitting at half its lease time
(rule 6) and its calls end within the other half, and that wall clocks agree within that
margin. If not, a reclaim can hand out again what a cut-off instance spent, up to its unused
lease. The shell's flush writes spend every ``flush_interval_s``: a crash loses at most that
much from the ledger.

Transitions
-----------
``settle``, ``release``, ``charge`` and ``seen`` are legal in every state and leave it as it is.
This table and ``TRANSITIONS`` are checked against each other by the tests.

| state    | event        | next     | effect                                                     |
|----------|--------------|----------|------------------------------------------------------------|
| unleased | reserve      | unleased | uncapped scopes admitted; a capped scope refuses (lease)   |
| unleased | renewed      | leased   | grants from the document, good for lease_ttl_s / 2         |
| unleased | day_rolled   | unleased | accounts start at 0; reservations in flight move over      |
| unleased | returned     | returned | grants given back down to what is in use                   |
| leased   | reserve      | leased   | admitted within the lease, else refused (cap or lease)     |
| leased   | renewed      | leased   | grants and the others' figures from the document           |
| leased   | lease_lapsed | lapsed   | a reserve at or past the lease's end                       |
| leased   | day_rolled   | unleased | as above                                                   |
| leased   | returned     | returned | as above                                                   |
| lapsed   | reserve      | lapsed   | a capped scope refuses (lease)                             |
| lapsed   | renewed      | leased   | as above                                                   |
| lapsed   | day_rolled   | unleased | as above                                                   |
| lapsed   | returned     | returned | as above                                                   |
| returned | day_rolled   | returned | accounts start at 0 (calls in flight at shutdown settle)   |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from router_agent.core.cost import MICROS_PER_USD
from router_agent.core.lease import Holder, LeaseDoc, Scope, others_of, reclaimed
from signals import BudgetStatus

ALL: Scope = ("all", "")
CLOUD: Scope = ("cloud", "")
LeaseState = Literal["unleased", "leased", "lapsed", "returned"]


class BudgetError(Exception):
    """An event the budget's table does not allow, or a reservation handed back wrongly."""


TRANSITIONS: dict[tuple[LeaseState, str], LeaseState] = {
    ("unleased", "reserve"): "unleased",
    ("unleased", "renewed"): "leased",
    ("unleased", "day_rolled"): "unleased",
    ("unleased", "returned"): "returned",
    ("leased", "reserve"): "leased",
    ("leased", "renewed"): "leased",
    ("leased", "lease_lapsed"): "lapsed",
    ("leased", "day_rolled"): "unleased",
    ("leased", "returned"): "returned",
    ("lapsed", "reserve"): "lapsed",
    ("lapsed", "renewed"): "leased",
    ("lapsed", "day_rolled"): "unleased",
    ("lapsed", "returned"): "returned",
    ("returned", "day_rolled"): "returned",
}
"""``(state, event) -> next state``. A pair not listed is illegal and raises ``BudgetError``."""


@dataclass(slots=True, eq=False)
class Reservation:
    """An estimate held against every scope of one call; hand it back to settle or release.
    Compared by identity (and not frozen: a frozen dataclass costs ~1 µs more per call)."""

    scopes: tuple[Scope, ...]
    micros: int


@dataclass(frozen=True, slots=True)
class Refusal:
    scope: Scope
    used: int
    """Micros settled by every instance plus reserved here, in ``scope``."""
    limit: int
    reason: Literal["cap", "lease"]
    """``cap``: the cap would be passed; ``lease``: only this instance's lease is short."""

    def message(self) -> str:
        what = describe(self.scope)
        if self.reason == "lease":
            return (f"the {what} daily budget left is leased to other router instances, or the shared "
                    f"ledger cannot be reached to lease it")
        return (f"the {what} daily budget of ${self.limit / MICROS_PER_USD:.2f} is spent "
                f"(${self.used / MICROS_PER_USD:.2f} used or in flight)")


def describe(scope: Scope) -> str:
    kind, name = scope
    return {"all": "overall", "cloud": "cloud"}.get(kind) or f"{kind} {name!r}"


@dataclass(slots=True)
class Account:
    """One scope as this instance knows it."""

    limit: int | None = None
    granted: int = 0
    settled: int = 0
    reserved: int = 0
    others_claimed: int = 0
    others_settled: int = 0
    low: int = 0
    """Below this much left in the lease, a renewal is due (half the last lease size)."""

    @property
    def spent(self) -> int:
        """Settled by every instance (the others' as last read)."""
        return self.others_settled + self.settled


class Budget:
    def __init__(self, instance: str, caps: Mapping[Scope, int], *, day: str, lease_share: float = 0.1,
                 lease_min: int = 0, lease_ttl_s: float = 300.0, local_only_share: float | None = None):
        if not 0 < lease_share <= 1:
            raise ValueError("lease_share must be within (0, 1]")
        self.instance = instance
        self.caps = dict(caps)
        self.lease_share = lease_share
        self.lease_min = lease_min
        self.lease_ttl_s = lease_ttl_s
        self.local_only_share = local_only_share
        self.state: LeaseState = "unleased"
        self.day = day
        self.valid_until = -math.inf
        self.renew_at = -math.inf
        self.accounts: dict[Scope, Account] = {}
        self.outstanding: set[Reservation] = set()
        self.published: dict[Scope, int] = {}
        """Settled micros per scope in the last document this instance wrote."""
        self._scopes: dict[tuple[str, str, bool], tuple[Scope, ...]] = {}
        self._reset()

    def _reset(self) -> None:
        carried = {s: a.reserved for s, a in self.accounts.items()}
        self.accounts = {s: Account(limit=self.caps.get(s), reserved=carried.get(s, 0))
                         for s in (ALL, CLOUD, *self.caps)}
        self.published = {}

    # ------------------------------------------------------------------ the request path

    def reserve(self, now: float, agent: str, provider: str, cloud: bool, estimate: int) -> Reservation | Refusal:
        """Hold ``estimate`` micros for one call in every scope it touches, or say why not."""
        if self.state == "leased" and now >= self.valid_until:
            self.state = self._next("lease_lapsed")
        self._next("reserve")
        scopes = self.scopes(agent, provider, cloud)
        leased = self.state == "leased"
        accounts = self.accounts
        for scope in scopes:
            acc = accounts[scope]
            if acc.limit is None or estimate == 0:
                continue
            in_use = acc.settled + acc.reserved
            if acc.others_settled + in_use + estimate > acc.limit:
                return Refusal(scope, acc.others_settled + in_use, acc.limit, "cap")
            if not leased or in_use + estimate > acc.granted:
                return Refusal(scope, acc.others_settled + in_use, acc.limit, "lease")
        for scope in scopes:
            accounts[scope].reserved += estimate
        held = Reservation(scopes, estimate)
        self.outstanding.add(held)
        return held

    def settle(self, held: Reservation, actual: int) -> None:
        """The call was billed ``actual`` micros."""
        self._hand_back(held, "settle")
        for scope in held.scopes:
            acc = self.accounts[scope]
            acc.reserved -= held.micros
            acc.settled += actual

    def release(self, held: Reservation) -> None:
        """The call was not billed (it failed before the provider charged, or never ran)."""
        self._hand_back(held, "release")
        for scope in held.scopes:
            self.accounts[scope].reserved -= held.micros

    def charge(self, agent: str, provider: str, cloud: bool, actual: int) -> None:
        """A billed call that held no reservation (it counts in the bound's ``U``)."""
        for scope in self.scopes(agent, provider, cloud):
            self.accounts[scope].settled += actual

    def scopes(self, agent: str, provider: str, cloud: bool) -> tuple[Scope, ...]:
        key = (agent, provider, cloud)
        scopes = self._scopes.get(key)
        if scopes is None:
            found = [ALL, CLOUD] if cloud else [ALL]
            found += [s for s in (("agent", agent), ("provider", provider)) if s in self.caps]
            scopes = self._scopes[key] = tuple(found)
        return scopes

    def _hand_back(self, held: Reservation, event: str) -> None:
        try:
            self.outstanding.remove(held)
        except KeyError:
            raise BudgetError(f"{event} of a reservation that is not outstanding") from None

    # ------------------------------------------------------------------ the shared document

    def renewal_due(self, now: float) -> bool:
        if self.state == "returned":
            return False
        if self.state != "leased" or now >= self.renew_at:
            return True
        for scope, acc in self.accounts.items():
            if self.published.get(scope) != acc.settled:
                return True
            if acc.limit is not None and acc.granted - acc.settled - acc.reserved < acc.low:
                return True
        return False

    def process_claim(self, doc: LeaseDoc, now: float, wall: float, need: int = 0) -> LeaseDoc:
        """The document to write: expired holders reclaimed, this instance's leases sized anew,
        each with room for ``need`` more micros where the cap allows (a call a lease refused).
        Lowered grants apply here at once (rule 5)."""
        if self.state == "returned":
            raise BudgetError("claim after the leases were returned")
        out = reclaimed(doc, wall, self.instance)
        others = others_of(out, self.instance)
        grants: dict[Scope, tuple[int, int]] = {}
        for scope, acc in self.accounts.items():
            claimed = others.get(scope, (0, 0))[0]
            grants[scope] = (self._size(acc, claimed, need), acc.settled)
            acc.granted = min(acc.granted, grants[scope][0])
        out[self.instance] = Holder(wall + self.lease_ttl_s, grants)
        return out

    def _size(self, acc: Account, others_claimed: int, need: int) -> int:
        if acc.limit is None:
            return 0
        in_use = acc.settled + acc.reserved
        free = acc.limit - others_claimed - in_use
        chunk = min(free, max(self.lease_min, math.ceil(free * self.lease_share), need)) if free > 0 else 0
        acc.low = chunk // 2
        left = acc.granted - in_use
        if (self.state == "leased" and max(acc.low, need) <= left <= 2 * chunk
                and acc.granted <= acc.limit - others_claimed):
            return acc.granted  # within the band: no churn
        return in_use + chunk

    def process_renewed(self, doc: LeaseDoc, now: float) -> None:
        """``doc`` (from ``process_claim(..., now, ...)``) was written."""
        self.state = self._next("renewed")
        self.valid_until = now + self.lease_ttl_s / 2
        self.renew_at = now + self.lease_ttl_s / 4
        mine = doc[self.instance].grants
        for scope, acc in self.accounts.items():
            acc.granted = mine[scope][0]
            self.published[scope] = mine[scope][1]
        self.process_seen(doc)

    def process_seen(self, doc: LeaseDoc) -> None:
        """The document as read: the other instances' figures; a grant of ours that they
        reclaimed is lowered here too."""
        others = others_of(doc, self.instance)
        mine = doc.get(self.instance)
        for scope, acc in self.accounts.items():
            acc.others_claimed, acc.others_settled = others.get(scope, (0, 0))
            if mine is not None and scope in mine.grants and mine.grants[scope][0] < acc.granted:
                acc.granted = mine.grants[scope][0]

    def process_return(self, doc: LeaseDoc) -> LeaseDoc:
        """Shutdown: the document that gives back every grant down to what is in use."""
        self.state = self._next("returned")
        out = dict(doc)
        old = out.get(self.instance)
        grants = {}
        for scope, acc in self.accounts.items():
            acc.granted = min(acc.granted, acc.settled + acc.reserved) if acc.limit is not None else 0
            grants[scope] = (acc.granted, acc.settled)
        out[self.instance] = Holder(old.expires_at if old is not None else 0.0, grants)
        return out

    def process_day(self, day: str) -> None:
        """The day rolled over: fresh accounts; reservations in flight move to ``day``."""
        self.state = self._next("day_rolled")
        self.day = day
        self.valid_until = self.renew_at = -math.inf
        self._reset()

    # ------------------------------------------------------------------ figures

    def committed(self, scope: Scope) -> int:
        """Settled by every instance plus reserved here."""
        acc = self.accounts.get(scope)
        return acc.spent + acc.reserved if acc is not None else 0

    def local_only(self, agent: str) -> str | None:
        """Why routing should keep to local models now (spend passed ``local_only_share`` of
        the overall, cloud or agent cap), or None."""
        share = self.local_only_share
        if share is None:
            return None
        for scope in (ALL, CLOUD, ("agent", agent)):
            acc = self.accounts.get(scope)
            if acc is not None and acc.limit is not None and acc.spent + acc.reserved >= share * acc.limit:
                return (f"{describe(scope)} spend ${(acc.spent + acc.reserved) / MICROS_PER_USD:.2f} reached "
                        f"{share:.0%} of its ${acc.limit / MICROS_PER_USD:.2f} daily budget")
        return None

    def statuses(self) -> list[BudgetStatus]:
        out = []
        for scope, acc in self.accounts.items():
            if acc.limit is None:
                continue
            used = acc.spent + acc.reserved
            at = None if self.local_only_share is None else self.local_only_share * acc.limit
            state = "exceeded" if used >= acc.limit else "local_only" if at is not None and used >= at else "ok"
            out.append(BudgetStatus(
                scope=scope[0], name=scope[1], limit_usd=acc.limit / MICROS_PER_USD,  # type: ignore[arg-type]
                used_usd=acc.spent / MICROS_PER_USD, reserved_usd=acc.reserved / MICROS_PER_USD,
                remaining_usd=max(0, acc.limit - used) / MICROS_PER_USD,
                local_only_at_usd=None if at is None else at / MICROS_PER_USD, state=state,
            ))
        return out

    def _next(self, event: str) -> LeaseState:
        try:
            return TRANSITIONS[self.state, event]
        except KeyError:
            raise BudgetError(f"event {event!r} is not allowed in state {self.state!r}") from None
