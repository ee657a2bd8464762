"""Ending background tasks for good, at a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_AFTER_S = 0.1
"""How long a cancelled task may take to end before it is cancelled again."""


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and return once every one has ended; their exceptions are taken
    (a task that must report its failure does so itself).

    One cancellation can be lost on CPython 3.11: ``asyncio.wait_for``, which nats-py's
    requests and flushes use, returns the inner result instead of raising when that result
    and the cancellation arrive in the same loop turn (python/cpython#86296, fixed in 3.12).
    A periodic task's loop then runs on, and a stop that waited for it would never end; so a
    task still running after ``RECANCEL_AFTER_S`` is cancelled again."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
    for task in tasks:
        if not task.cancelled():
            task.exception()
