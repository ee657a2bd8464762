"""Background tasks end at a stop even when a cancellation is lost on the way."""

from __future__ import annotations

import asyncio

from router_agent.tasks import cancel_and_wait

WAIT = 5.0


async def test_a_task_that_lost_its_cancellation_is_cancelled_again():
    started, lost = asyncio.Event(), asyncio.Event()

    async def periodic() -> None:
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost.is_set():
                    raise
                lost.set()  # what asyncio.wait_for's race does on 3.11: the loop runs on

    task = asyncio.create_task(periodic())
    await started.wait()
    await asyncio.wait_for(cancel_and_wait([task]), WAIT)
    assert lost.is_set() and task.cancelled()


async def test_finished_and_failed_tasks_are_waited_for_without_a_trace():
    async def fails() -> None:
        raise RuntimeError("a bug, reported by the task itself")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait({failed, done})
    await cancel_and_wait([failed, done])  # nothing to cancel; the failure is taken, not re-raised
    assert failed.exception() is not None and done.result() is None
