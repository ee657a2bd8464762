"""Routing overrides: what operators changed at run time, with expiry, as plain data.

The control service (``router_agent.control_service``) writes this table; the routing engine
reads it on every request. Nothing here does I/O or reads a clock: ``now`` is the agent's
monotonic clock in seconds, passed in.

Rules
-----
1. Three kinds of entry, each keyed by one id:

   | kind       | key                        | entry              | read by                   |
   |------------|----------------------------|--------------------|---------------------------|
   | ``primary``  | agent id                   | ``PrimaryOverride``  | ``primary_for(agent, now)`` |
   | ``strategy`` | agent id, or None (global) | ``StrategyOverride`` | ``strategy_for(agent, now)``|
   | ``forced``   | task id (``task.id``)      | ``ForcedModel``      | ``forced_for(task, now)``   |

   Setting an entry replaces the one of the same kind and key.
2. An entry lasts until ``expires_at`` (``now + duration_s`` when it was set), or until it
   is cleared when no duration was given (``expires_at`` None). At ``now >= expires_at`` it
   is gone: the boundary itself counts as expired, as the breaker's cooldown does.
3. An agent's strategy override wins over the global one. When it expires, the global one
   shows again (if it is still live); when that expires too, the config's strategy does.
4. Reads are dict lookups: O(1) whatever the table holds, and a single emptiness test per
   kind when it holds nothing (the engine pays this on every request). An expired entry a
   read finds is removed there (lazy pruning); ``prune(now)`` removes every expired entry
   (the control service calls it before counting or listing).
5. The table checks what it can know: ids and names are non-empty strings, durations are
   finite and positive, ``now`` is finite. Whether a model, agent or strategy exists is for
   the control service, which knows the registry and the config. Nonsense raises
   ``ValueError`` and changes nothing.

The entries are frozen: a reader may keep one (the engine reports the override's reason in
its decision) without it changing under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

OverrideKind = Literal["primary", "strategy", "forced"]
KINDS: tuple[OverrideKind, ...] = ("primary", "strategy", "forced")


@dataclass(frozen=True, slots=True)
class StrategyOverride:
    strategy: str
    scope: str | None
    """The agent id it applies to; None: every agent without its own override."""
    reason: str = ""
    expires_at: float | None = None
    """Monotonic seconds (the agent's clock); None: until cleared."""


@dataclass(frozen=True, slots=True)
class PrimaryOverride:
    model: str
    reason: str = ""
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class ForcedModel:
    model: str
    reason: str = ""
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class OverrideEntry:
    """One live entry as ``table(now)`` lists it."""

    kind: OverrideKind
    key: str | None
    model: str | None
    strategy: str | None
    reason: str
    expires_in_s: float | None


def _live(entry: StrategyOverride | PrimaryOverride | ForcedModel, now: float) -> bool:
    return entry.expires_at is None or now < entry.expires_at


@dataclass(slots=True)
class RoutingOverrides:
    """The table. A slots dataclass: ``RouterState`` validates and dumps it as a field."""

    primary: dict[str, PrimaryOverride] = field(default_factory=dict)
    """By agent id."""
    strategy: dict[str, StrategyOverride] = field(default_factory=dict)
    """Per-agent strategy overrides, by agent id."""
    global_strategy: StrategyOverride | None = None
    forced: dict[str, ForcedModel] = field(default_factory=dict)
    """By task id."""

    # ------------------------------------------------------------------ reads (every request)

    def strategy_for(self, agent_id: str, now: float) -> StrategyOverride | None:
        """The strategy override in force for ``agent_id``: its own, else the global one."""
        if self.strategy:
            entry = self.strategy.get(agent_id)
            if entry is not None:
                if entry.expires_at is None or now < entry.expires_at:
                    return entry
                del self.strategy[agent_id]
        entry = self.global_strategy
        if entry is not None:
            if entry.expires_at is None or now < entry.expires_at:
                return entry
            self.global_strategy = None
        return None

    def primary_for(self, agent_id: str, now: float) -> PrimaryOverride | None:
        """The primary model an operator set for ``agent_id``, if one is in force."""
        if not self.primary:
            return None
        entry = self.primary.get(agent_id)
        if entry is None or entry.expires_at is None or now < entry.expires_at:
            return entry
        del self.primary[agent_id]
        return None

    def forced_for(self, task_id: str | None, now: float) -> ForcedModel | None:
        """The model forced for the task ``task_id``, if one is in force (None: no task id)."""
        if not self.forced or task_id is None:
            return None
        entry = self.forced.get(task_id)
        if entry is None or entry.expires_at is None or now < entry.expires_at:
            return entry
        del self.forced[task_id]
        return None

    # ------------------------------------------------------------------ changes

    def set_primary(
        self, agent_id: str, model: str, reason: str, now: float, duration_s: float | None = None
    ) -> PrimaryOverride:
        entry = PrimaryOverride(
            model=_name(model, "model"), reason=_reason(reason), expires_at=_expiry(now, duration_s)
        )
        self.primary[_name(agent_id, "agent_id")] = entry
        return entry

    def set_strategy(
        self, scope: str | None, strategy: str, duration_s: float | None, reason: str, now: float
    ) -> StrategyOverride:
        """``scope``: an agent id, or None for every agent (the global override)."""
        if scope is not None:
            _name(scope, "scope")
        entry = StrategyOverride(
            strategy=_name(strategy, "strategy"), scope=scope, reason=_reason(reason),
            expires_at=_expiry(now, duration_s),
        )
        if scope is None:
            self.global_strategy = entry
        else:
            self.strategy[scope] = entry
        return entry

    def force_model(
        self, task_id: str, model: str, duration_s: float | None, reason: str, now: float
    ) -> ForcedModel:
        entry = ForcedModel(model=_name(model, "model"), reason=_reason(reason), expires_at=_expiry(now, duration_s))
        self.forced[_name(task_id, "task_id")] = entry
        return entry

    def clear(self, kind: OverrideKind, key: str | None) -> bool:
        """Remove one entry; True when there was one. ``key`` None names the global strategy."""
        if kind == "strategy":
            if key is None:
                found = self.global_strategy is not None
                self.global_strategy = None
                return found
            return self.strategy.pop(_name(key, "key"), None) is not None
        if kind == "primary":
            return self.primary.pop(_name(key, "key"), None) is not None
        if kind == "forced":
            return self.forced.pop(_name(key, "key"), None) is not None
        raise ValueError(f"kind must be one of {list(KINDS)}, not {kind!r}")

    def get(self, kind: OverrideKind, key: str | None, now: float) -> StrategyOverride | PrimaryOverride | ForcedModel | None:
        """The live entry of ``kind`` under exactly ``key`` (no fallback to the global one)."""
        if kind == "strategy":
            entry = self.global_strategy if key is None else self.strategy.get(key)
        elif kind == "primary":
            entry = self.primary.get(key) if key is not None else None
        elif kind == "forced":
            entry = self.forced.get(key) if key is not None else None
        else:
            raise ValueError(f"kind must be one of {list(KINDS)}, not {kind!r}")
        return entry if entry is not None and _live(entry, _finite(now)) else None

    def prune(self, now: float) -> int:
        """Remove every expired entry; returns how many went."""
        _finite(now)
        removed = 0
        for table in (self.primary, self.strategy, self.forced):
            expired = [key for key, entry in table.items() if not _live(entry, now)]
            for key in expired:
                del table[key]
            removed += len(expired)
        if self.global_strategy is not None and not _live(self.global_strategy, now):
            self.global_strategy = None
            removed += 1
        return removed

    def __len__(self) -> int:
        """Entries held, expired ones not yet pruned included (``prune`` first to count live ones)."""
        return len(self.primary) + len(self.strategy) + len(self.forced) + (self.global_strategy is not None)

    # ------------------------------------------------------------------ the snapshot

    def table(self, now: float) -> list[OverrideEntry]:
        """Every live entry, expired ones pruned first; ordered by kind, then key (global first)."""
        self.prune(now)

        def remaining(expires_at: float | None) -> float | None:
            return None if expires_at is None else expires_at - now

        rows: list[OverrideEntry] = []
        for agent_id, p in sorted(self.primary.items()):
            rows.append(OverrideEntry("primary", agent_id, p.model, None, p.reason, remaining(p.expires_at)))
        scoped = sorted(self.strategy.items())
        if self.global_strategy is not None:
            scoped.insert(0, (None, self.global_strategy))  # type: ignore[arg-type]
        for scope, s in scoped:
            rows.append(OverrideEntry("strategy", scope, None, s.strategy, s.reason, remaining(s.expires_at)))
        for task_id, f in sorted(self.forced.items()):
            rows.append(OverrideEntry("forced", task_id, f.model, None, f.reason, remaining(f.expires_at)))
        return rows


# ---------------------------------------------------------------------- checks


def _finite(now: float) -> float:
    if not isinstance(now, (int, float)) or isinstance(now, bool) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")
    return now


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"reason must be a string, not {value!r}")  # noqa: TRY004 - rule 5: ValueError
    return value


def _expiry(now: float, duration_s: float | None) -> float | None:
    _finite(now)
    if duration_s is None:
        return None
    if (
        not isinstance(duration_s, (int, float)) or isinstance(duration_s, bool)
        or not math.isfinite(duration_s) or duration_s <= 0
    ):
        raise ValueError(f"duration_s must be a finite number of seconds above 0, or None; not {duration_s!r}")
    return now + duration_s
