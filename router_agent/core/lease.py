"""The day's lease document that router instances share (pure): who holds which budget.

One document per day, read and written by compare-and-set (``store.py``). It lists every
instance that took part that day (a *holder*) with, per scope, the micro-dollars it was
``granted`` and has ``settled``, and when its lease expires (wall-clock seconds). A holder's
*claim* is ``max(granted, settled)``: what the others must leave it. ``core/budget.py`` says
how grants are sized and why they never add up past a cap.

Scopes are tuples (``("agent", "team.a")``) and stay tuples on the wire: a grant is the JSON
array ``[kind, name, granted, settled]``, never a joined string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

Scope = tuple[str, str]
"""``("all", "")``, ``("cloud", "")``, ``("agent", id)`` or ``("provider", name)``."""


@dataclass(slots=True)
class Holder:
    expires_at: float
    grants: dict[Scope, tuple[int, int]] = field(default_factory=dict)
    """Scope -> ``(granted, settled)``."""


LeaseDoc = dict[str, Holder]
"""Instance id -> its holder record: the day's lease document."""


def reclaimed(doc: LeaseDoc, wall: float, keep: str) -> LeaseDoc:
    """``doc`` with the unused grants of every expired holder but ``keep`` taken back."""
    out = dict(doc)
    for instance, holder in doc.items():
        if instance != keep and holder.expires_at <= wall:
            out[instance] = Holder(holder.expires_at, {s: (min(g, st), st) for s, (g, st) in holder.grants.items()})
    return out


def others_of(doc: LeaseDoc, me: str) -> dict[Scope, tuple[int, int]]:
    """Scope -> ``(claimed, settled)`` of every holder but ``me``."""
    out: dict[Scope, tuple[int, int]] = {}
    for instance, holder in doc.items():
        if instance == me:
            continue
        for scope, (granted, settled) in holder.grants.items():
            claimed, spent = out.get(scope, (0, 0))
            out[scope] = (claimed + max(granted, settled), spent + settled)
    return out


# --------------------------------------------------------------------------- the document's bytes


class _Grant(msgspec.Struct, array_like=True):
    kind: str
    name: str
    granted: int
    settled: int


class _Holder(msgspec.Struct, kw_only=True):
    instance: str
    expires_at: float
    scopes: list[_Grant] = []


class _Doc(msgspec.Struct, kw_only=True):
    holders: list[_Holder] = []


_decoder = msgspec.json.Decoder(_Doc)


def encode_doc(doc: LeaseDoc) -> bytes:
    return msgspec.json.encode(_Doc(holders=[
        _Holder(instance=i, expires_at=h.expires_at,
                scopes=[_Grant(s[0], s[1], g, st) for s, (g, st) in h.grants.items()])
        for i, h in sorted(doc.items())
    ]))


def decode_doc(raw: bytes | None) -> LeaseDoc:
    if not raw:
        return {}
    return {h.instance: Holder(h.expires_at, {(g.kind, g.name): (g.granted, g.settled) for g in h.scopes})
            for h in _decoder.decode(raw).holders}
