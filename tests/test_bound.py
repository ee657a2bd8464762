"""An attempt's bound (``attempt.Bound`` on a shared ``BoundTimer``): asyncio.timeout's
semantics on one loop timer for every attempt in flight.

The waits are for the bound itself (its TimeoutError) or for an event a loop timer sets: the
stimulus, never a sleep standing in for "something has happened".
"""

from __future__ import annotations

import asyncio

import pytest

from router_agent.attempt import Bound, BoundTimer


def later(seconds: float) -> asyncio.Event:
    """An event the loop sets ``seconds`` from now."""
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, event.set)
    return event


async def test_a_bound_that_runs_out_raises_timeout_error():
    timer = BoundTimer()
    bound = Bound(timer, 0.01)
    with pytest.raises(TimeoutError):
        async with bound:
            await asyncio.Event().wait()  # never set: only the bound ends it
    assert bound.expired()


async def test_a_bound_that_ended_never_cancels_its_task_afterwards():
    timer = BoundTimer()
    async with Bound(timer, 0.01) as early:
        pass  # ends at once; its row stays in the heap until its time
    assert not early.expired()
    await later(0.05).wait()  # the first bound's time passes meanwhile: no cancellation may arrive
    assert not early.expired()


async def test_reschedule_moves_the_expiry():
    timer = BoundTimer()
    async with Bound(timer, 0.01) as bound:
        bound.reschedule(asyncio.get_running_loop().time() + 5.0)  # a stream's first chunk
        await later(0.05).wait()  # well past the first expiry
    assert not bound.expired()


async def test_a_cancellation_from_outside_stays_a_cancellation():
    timer = BoundTimer()

    entered = asyncio.Event()

    async def attempt() -> None:
        async with Bound(timer, 5.0):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(attempt())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_the_bound_that_ran_out_raises():
    timer = BoundTimer()
    async with Bound(timer, 5.0) as outer:
        with pytest.raises(TimeoutError):
            async with Bound(timer, 0.01):
                await asyncio.Event().wait()
        await later(0.01).wait()  # the outer one still runs
    assert not outer.expired()


async def test_many_bounds_expire_in_their_order_and_ended_rows_do_not_pile_up():
    timer = BoundTimer()
    expired: list[int] = []

    async def attempt(i: int, delay: float) -> None:
        try:
            async with Bound(timer, delay):
                await asyncio.Event().wait()
        except TimeoutError:
            expired.append(i)

    await asyncio.gather(*(attempt(i, 0.01 * (3 - i)) for i in range(3)))
    assert expired == [2, 1, 0]
    for _ in range(1000):  # calls that end long before their bound
        async with Bound(timer, 60.0):
            pass
    assert len(timer._heap) < 200  # compacted: stale rows stay about as many as live ones
