"""The queue of requests waiting for rate-limit capacity (pure).

The request shell owns one (``waitroom.py``). It holds requests no candidate could take:
highest ``priority`` first, then the earliest deadline, then arrival order. The shell
re-tries the head when capacity frees, takes out whatever ``expired(now)`` returns
(answering those ``rate_limited``), and refuses to queue a request whose wait outlasts its
deadline (answering at once, with the wait).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = 0, 9, 5
"""``llm_request.priority``: 0 (lowest) to 9 (highest); a request that sets none is 5."""


@dataclass(slots=True)
class _Entry:
    item: Any
    deadline: float
    live: bool = True


class WaitQueue:
    """Requests waiting for rate-limit capacity: highest priority, then earliest deadline, then
    arrival first. Bounded: ``push`` refuses (False) when ``max_size`` are waiting.

    Two heaps over the same entries (by serving order, and by deadline for ``expired``), with
    lazy deletion: ``remove`` marks an entry dead and the heaps drop dead entries when they
    reach the top, or all at once when dead ones outnumber the live. A heap row ends in a
    unique arrival number before the entry, so entries are never compared. Items are opaque
    and tracked by identity, so they need not be hashable.
    """

    __slots__ = ("_deadlines", "_entries", "_order", "_seq", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"max_size cannot be negative, got {max_size}")
        self.max_size = max_size
        self._order: list[tuple[int, float, int, _Entry]] = []
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._entries: dict[int, _Entry] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._entries

    def push(self, item: Any, priority: int = DEFAULT_PRIORITY, deadline: float = math.inf) -> bool:
        """Queue ``item``; False (nothing queued) when full. Queuing it twice is a caller bug."""
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be {PRIORITY_MIN}-{PRIORITY_MAX}, got {priority}")
        if math.isnan(deadline):  # NaN would corrupt both heaps' order
            raise ValueError("deadline is NaN")
        if id(item) in self._entries:
            raise ValueError("this item is already queued")
        if len(self._entries) >= self.max_size:
            return False
        self._seq += 1
        entry = _Entry(item, deadline)
        self._entries[id(item)] = entry
        heapq.heappush(self._order, (-priority, deadline, self._seq, entry))
        heapq.heappush(self._deadlines, (deadline, self._seq, entry))
        return True

    def peek(self) -> Any:
        """The item ``pop`` would return, left queued; None when empty."""
        heap = self._order
        while heap and not heap[0][3].live:
            heapq.heappop(heap)
        return heap[0][3].item if heap else None

    def pop(self) -> Any:
        """Take the first item in serving order; None when empty."""
        heap = self._order
        while heap:
            entry = heapq.heappop(heap)[3]
            if entry.live:
                self._forget(entry)
                self._compact_if_mostly_dead()
                return entry.item
        return None

    def remove(self, item: Any) -> bool:
        """Take ``item`` out wherever it is (its caller went away); False if it was not queued."""
        entry = self._entries.get(id(item))
        if entry is None:
            return False
        self._forget(entry)
        self._compact_if_mostly_dead()
        return True

    def expired(self, now: float) -> list[Any]:
        """Remove and return, earliest deadline first, every item whose deadline is ``<= now``."""
        out = []
        heap = self._deadlines
        while heap and (heap[0][0] <= now or not heap[0][2].live):
            entry = heapq.heappop(heap)[2]
            if entry.live:
                self._forget(entry)
                out.append(entry.item)
        if out:
            self._compact_if_mostly_dead()
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline waiting: when the shell should next call ``expired``."""
        heap = self._deadlines
        while heap and not heap[0][2].live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _forget(self, entry: _Entry) -> None:
        entry.live = False
        del self._entries[id(entry.item)]

    def _compact_if_mostly_dead(self) -> None:
        # Dead rows far from the top would otherwise pile up under push/remove churn.
        live = len(self._entries)
        if len(self._order) > 2 * live + 32:
            self._order = [row for row in self._order if row[3].live]
            heapq.heapify(self._order)
        if len(self._deadlines) > 2 * live + 32:
            self._deadlines = [row for row in self._deadlines if row[2].live]
            heapq.heapify(self._deadlines)
