"""The cost ledger: spend lines by day, agent, provider and model, in integer micro-dollars (pure).

Rules
-----
1. A line is keyed by the tuple ``(day, agent, provider, model)``; ``day`` is the date
   (``YYYY-MM-DD``) in the ledger's time zone when the call was billed. Identifiers may hold
   any character, so keys are never joined into strings.
2. Money is integer micro-dollars (``Spend.micros``); USD appears only in what is reported.
3. Every attempt a provider billed is one ``requests`` on its line, whether its answer was
   used, failed over or lost a hedge.
4. Ledgers add up: ``merge`` is addition line by line, so the shell keeps one ledger of what
   it booked and one of what it has not yet shipped (``take`` empties it), and the shared
   view of several instances is the merge of theirs.

Theory of operation
-------------------
``LedgerService`` (the shell) books every billed attempt in a pending ledger. Its flush
``take``s it, merges it into what the instance booked before, ships it as a ``cost_event``
and adds it to this instance's record in the shared store (``with_batch``); the records of
the other instances, read back, are merged in for the report. ``Calendar`` turns wall-clock
seconds into the day of the configured time zone, and remembers where the day ends, so the
per-call cost of knowing the day is one comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, tzinfo

import msgspec

from router_agent.core.cost import MICROS_PER_USD
from signals import BudgetStatus, CostEntry, CostEvent, CostLine, CostReport

LineKey = tuple[str, str, str, str]
"""``(day, agent, provider, model)``."""

DIMENSIONS = {"day": 0, "agent": 1, "provider": 2, "model": 3}
"""Breakdown name -> position in ``LineKey``."""

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_record = msgspec.json.Decoder(CostEvent)


@dataclass(slots=True)
class Spend:
    """One line's counters."""

    cloud: bool = False
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    micros: int = 0

    def add(self, other: Spend) -> None:
        self.cloud = self.cloud or other.cloud
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.micros += other.micros


class CostLedger:
    def __init__(self) -> None:
        self.lines: dict[LineKey, Spend] = {}

    def __len__(self) -> int:
        return len(self.lines)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostLedger) and self.lines == other.lines

    def book(self, day: str, agent: str, provider: str, model: str, *, cloud: bool, micros: int,
             input_tokens: int = 0, output_tokens: int = 0, cached_input_tokens: int = 0, requests: int = 1) -> None:
        """Add one billed attempt (or ``requests`` of them) to its line."""
        key = (day, agent, provider, model)
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = Spend(cloud=cloud)
        line.cloud = line.cloud or cloud
        line.requests += requests
        line.input_tokens += input_tokens
        line.output_tokens += output_tokens
        line.cached_input_tokens += cached_input_tokens
        line.micros += micros

    def merge(self, other: CostLedger) -> None:
        for key, spend in other.lines.items():
            line = self.lines.get(key)
            if line is None:
                self.lines[key] = Spend(**{f.name: getattr(spend, f.name) for f in fields(Spend)})
            else:
                line.add(spend)

    def take(self) -> CostLedger:
        """Everything booked since the last take, as a ledger; this one is left empty."""
        taken = CostLedger()
        taken.lines, self.lines = self.lines, {}
        return taken

    def days(self) -> set[str]:
        return {key[0] for key in self.lines}

    def only(self, days: Iterable[str]) -> CostLedger:
        """A copy holding the lines of ``days`` only."""
        keep = set(days)
        out = CostLedger()
        out.merge(_view({k: v for k, v in self.lines.items() if k[0] in keep}))
        return out

    # ------------------------------------------------------------------ figures

    def spent(self, day: str, *, cloud_only: bool = False) -> int:
        """Micro-dollars booked on ``day`` (cloud models only, when asked)."""
        return sum(s.micros for k, s in self.lines.items() if k[0] == day and (s.cloud or not cloud_only))

    def total(self) -> CostLine:
        out = CostLine()
        for spend in self.lines.values():
            _add(out, spend)
        return _priced(out)

    def breakdown(self, dimension: str) -> dict[str, CostLine]:
        """Lines summed by ``day``, ``agent``, ``provider`` or ``model``."""
        at = DIMENSIONS[dimension]
        out: dict[str, CostLine] = {}
        for key, spend in self.lines.items():
            line = out.get(key[at])
            if line is None:
                line = out[key[at]] = CostLine()
            _add(line, spend)
        return {name: _priced(line) for name, line in sorted(out.items())}

    # ------------------------------------------------------------------ the wire

    def entries(self, day: str) -> list[CostEntry]:
        """The lines of ``day`` as ``cost_event`` entries."""
        return [
            CostEntry(agent_id=k[1], provider=k[2], model=k[3], cloud=s.cloud, requests=s.requests,
                      input_tokens=s.input_tokens, output_tokens=s.output_tokens,
                      cached_input_tokens=s.cached_input_tokens, cost_micros=s.micros)
            for k, s in self.lines.items() if k[0] == day
        ]

    def add_entries(self, day: str, entries: Iterable[CostEntry]) -> None:
        for e in entries:
            self.book(day, e.agent_id, e.provider, e.model, cloud=e.cloud, micros=e.cost_micros,
                      input_tokens=e.input_tokens, output_tokens=e.output_tokens,
                      cached_input_tokens=e.cached_input_tokens, requests=e.requests)

    def report(self, instance_id: str, since: str, *, day: str = "", time_zone: str = "", shared: bool = False,
               budgets: list[BudgetStatus] | None = None, projected_day_micros: int | None = None) -> CostReport:
        return CostReport(
            instance_id=instance_id, since=since, day=day, time_zone=time_zone, shared=shared,
            total=self.total(),
            by_agent=self.breakdown("agent"), by_model=self.breakdown("model"),
            by_provider=self.breakdown("provider"), by_day=self.breakdown("day"),
            budgets=budgets or [],
            projected_day_usd=None if projected_day_micros is None else projected_day_micros / MICROS_PER_USD,
        )


def with_batch(event: CostEvent, raw: bytes | None) -> bytes | None:
    """An instance's record of ``event.day`` (the JSON of a ``cost_event`` holding the day's
    cumulative lines and the last batch applied) with ``event`` added; None when it already
    was, so a batch sent again after a lost acknowledgement counts once."""
    record = _record.decode(raw) if raw else None
    if record is not None and record.batch == event.batch:
        return None
    lines = CostLedger()
    lines.add_entries(event.day, record.entries if record is not None else ())
    lines.add_entries(event.day, event.entries)
    return msgspec.json.encode(CostEvent(instance_id=event.instance_id, day=event.day, batch=event.batch,
                                         entries=lines.entries(event.day)))


def _view(lines: dict[LineKey, Spend]) -> CostLedger:
    out = CostLedger()
    out.lines = lines
    return out


def _add(line: CostLine, spend: Spend) -> None:
    line.requests += spend.requests
    line.input_tokens += spend.input_tokens
    line.output_tokens += spend.output_tokens
    line.cached_input_tokens += spend.cached_input_tokens
    line.cost_micros += spend.micros


def _priced(line: CostLine) -> CostLine:
    line.cost_usd = line.cost_micros / MICROS_PER_USD
    return line


# --------------------------------------------------------------------------- days


MIN_PROJECTION_ELAPSED_S = 3600.0
"""A projection divides by at least an hour: $1 spent in the first minute is not $1,440 a day."""


class Calendar:
    """The day of a wall-clock time in one time zone, and where that day starts and ends
    (23 or 25 hours long on the days clocks change)."""

    def __init__(self, zone: tzinfo):
        self.zone = zone
        self.start = 0.0
        self.end = 0.0
        self.today = ""

    def day(self, wall: float) -> str:
        if not self.start <= wall < self.end:
            local = datetime.fromtimestamp(wall, self.zone)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            self.start = midnight.timestamp()
            self.end = (midnight + timedelta(days=1)).timestamp()  # wall-clock arithmetic: the next midnight
            self.today = midnight.date().isoformat()
        return self.today

    def projected(self, spent_micros: int, wall: float) -> int:
        """``spent_micros`` so far today extrapolated to the end of the day at the same rate."""
        self.day(wall)
        elapsed = max(wall - self.start, MIN_PROJECTION_ELAPSED_S)
        return round(spent_micros * (self.end - self.start) / elapsed) if wall < self.end else spent_micros


def recent_days(today: str, count: int) -> list[str]:
    """``today`` and the ``count - 1`` days before it, newest first."""
    first = date.fromisoformat(today)
    return [(first - timedelta(days=n)).isoformat() for n in range(count)]
