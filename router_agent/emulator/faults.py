"""Which fault, if any, a request meets: a pure table over plain data, ``now`` and a draw passed in.

The table is the only state faults have: per key (a model name, or ``"*"`` for every model
without its own entry) the spec as set, the pre-summed thresholds for the random draw and
the 429s left in a burst. :meth:`FaultTable.decide` reads them in a fixed order (outage,
status, burst, draw) so a seeded run meets the same faults in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from router_agent.emulator.settings import FaultSpec

__all__ = ["Fault", "FaultTable", "retry_after_headers"]

ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request instead of (or while) answering it."""

    kind: str
    """``error``, ``hang``, ``malformed``, ``cut`` or ``stall``."""
    status: int = 0
    retry_after_s: float | None = None
    hang_s: float = 0.0
    cause: str = "rate"
    """``outage``, ``status``, ``burst`` or ``rate``: which part of the spec fired."""


@dataclass(slots=True)
class _Entry:
    spec: FaultSpec
    thresholds: tuple[tuple[float, Fault], ...]
    burst_left: int


def _compile(spec: FaultSpec) -> _Entry:
    thresholds: list[tuple[float, Fault]] = []
    total = 0.0
    for status in sorted(spec.error_rates):
        rate = spec.error_rates[status]
        if rate > 0:
            total += rate
            retry = spec.retry_after_s if status == 429 else None
            thresholds.append((total, Fault("error", status, retry)))
    for kind in ("hang", "malformed", "cut", "stall"):
        rate = getattr(spec, f"{kind}_rate")
        if rate > 0:
            total += rate
            thresholds.append((total, Fault(kind, hang_s=spec.hang_s)))
    return _Entry(spec, tuple(thresholds), spec.rate_limit_burst)


class FaultTable:
    """Fault specs by model; ``decide`` is the only method that changes anything (bursts)."""

    def __init__(self, specs: Mapping[str, FaultSpec] | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        for model, spec in (specs or {}).items():
            self.set(model, spec)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def set(self, model: str, spec: FaultSpec | None) -> None:
        """Set (or, with ``None``, remove) one model's faults; a burst restarts from its count."""
        if spec is None:
            self._entries.pop(model, None)
        else:
            self._entries[model] = _compile(spec)

    def replace(self, specs: Mapping[str, FaultSpec]) -> None:
        self._entries = {model: _compile(spec) for model, spec in specs.items()}

    def specs(self) -> dict[str, FaultSpec]:
        """The specs as they stand: ``rate_limit_burst`` is what is left of a burst."""
        out: dict[str, FaultSpec] = {}
        for model, entry in sorted(self._entries.items()):
            spec = entry.spec
            if spec.rate_limit_burst != entry.burst_left:
                spec = _with_burst(spec, entry.burst_left)
            out[model] = spec
        return out

    def decide(self, model: str, now_s: float, draw: Callable[[], float]) -> Fault | None:
        """The fault for one request to ``model`` at ``now_s`` seconds after start.

        ``draw`` returns a float in [0, 1); it is called once, and only when the spec has
        rates, so a seeded source gives a reproducible sequence of faults.
        """
        entry = self._entries.get(model)
        if entry is None:
            entry = self._entries.get(ANY_MODEL)
            if entry is None:
                return None
        spec = entry.spec
        for outage in spec.outages:
            if outage.start_s <= now_s < outage.end_s:
                retry = spec.retry_after_s if outage.status == 429 else None
                return Fault("error", outage.status, retry, cause="outage")
        if spec.status is not None:
            retry = spec.retry_after_s if spec.status == 429 else None
            return Fault("error", spec.status, retry, cause="status")
        if entry.burst_left > 0:
            entry.burst_left -= 1
            return Fault("error", 429, spec.retry_after_s, cause="burst")
        if entry.thresholds:
            r = draw()
            for limit, fault in entry.thresholds:
                if r < limit:
                    return fault
        return None


def _with_burst(spec: FaultSpec, left: int) -> FaultSpec:
    return msgspec.structs.replace(spec, rate_limit_burst=left)


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds (as HTTP says), and the exact value in milliseconds
    (``retry-after-ms``, which the OpenAI and Anthropic SDKs read first)."""
    return {
        "retry-after": str(max(0, math.ceil(seconds))),
        "retry-after-ms": str(max(0, round(seconds * 1000))),
    }
