"""Where requests wait for a rate limit (or a retry backoff) to let them through.

Writes nothing in the state; ``depth`` is read by the metrics. The order is the pure
``core.limiter.WaitQueue``'s: priority first (``llm_request.priority``, higher first), then
the earlier deadline, then arrival. A waiter names the time it could go (``wake``); one
timer, set for the soonest wake, releases every waiter whose time has come, in queue order,
so that when several wake together the higher-priority ones pick (and take the limiter's
tokens) first. The room is bounded: a request that finds it full is not queued (the chain
answers it at once instead of holding it in memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from router_agent.core.waitqueue import WaitQueue


@dataclass(slots=True, eq=False)
class _Waiter:
    wake: float
    """When it may go, on the loop's clock."""
    priority: int
    deadline: float
    future: asyncio.Future[None]


class WaitRoom:
    def __init__(self, max_size: int, clock: Callable[[], float]):
        self.queue: WaitQueue = WaitQueue(max_size)
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.waiting: set[_Waiter] = set()
        self.waited = 0
        """Requests that waited here (a metric)."""
        self.turned_away = 0
        """Requests that found the room full."""

    @property
    def depth(self) -> int:
        return len(self.queue)

    async def wait(self, priority: int, deadline: float, wake: float) -> bool:
        """Wait until ``wake`` (clock time; released in queue order); False when full."""
        loop = asyncio.get_running_loop()
        # Due on the loop's clock: the timer is the loop's, and the agent's clock (``wake``,
        # ``deadline``) may be another (a test's fake one), which would never catch up.
        waiter = _Waiter(loop.time() + max(0.0, wake - self.clock()), priority, deadline, loop.create_future())
        if not self.queue.push(waiter, priority, deadline):
            self.turned_away += 1
            return False
        self.waited += 1
        self.waiting.add(waiter)
        self._arm(loop)
        try:
            await waiter.future
        finally:
            self.waiting.discard(waiter)
            self.queue.remove(waiter)
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        soonest = min((w.wake for w in self.waiting if not w.future.done()), default=None)
        if soonest is None or soonest >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = soonest
        self._timer = loop.call_at(soonest, self._release)

    def _release(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = asyncio.get_running_loop().time()
        queue = self.queue
        later: list[_Waiter] = []
        while len(queue):  # in queue order: priority, deadline, arrival
            waiter = queue.pop()
            if waiter.wake <= now:
                waiter.future.set_result(None)  # resumes in this order: the first picks first
            else:
                later.append(waiter)
        for waiter in later:  # arrival order among equals is kept: they are pushed back in order
            queue.push(waiter, waiter.priority, waiter.deadline)
        if later:
            self._arm(asyncio.get_running_loop())
