"""The local model's queue: first come, first served; leaving it never leaks a slot."""

from __future__ import annotations

import asyncio

from tokenrelay.local.upstream import FairQueue


async def test_waiters_are_served_in_arrival_order() -> None:
    queue = FairQueue(1)
    await queue.acquire()
    order: list[int] = []

    async def wait(n: int) -> None:
        await queue.acquire()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert (queue.running, queue.waiting) == (1, 5)
    for _ in range(5):
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    queue.release()
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    queue = FairQueue(1)
    await queue.acquire()
    first = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    queue.release()  # the slot is handed to `first`, not freed for anyone
    late = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    assert first.done() and not late.done()
    queue.release()
    await late
    queue.release()
    assert queue.running == 0


async def test_a_waiter_that_leaves_frees_nothing_and_blocks_nobody() -> None:
    queue = FairQueue(1)
    await queue.acquire()
    leaver = asyncio.create_task(queue.acquire())
    stayer = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    assert queue.waiting == 1
    queue.release()
    await stayer
    assert (queue.running, queue.waiting) == (1, 0)


async def test_cancelled_in_the_instant_it_was_handed_the_slot_passes_it_on() -> None:
    queue = FairQueue(1)
    await queue.acquire()
    unlucky = asyncio.create_task(queue.acquire())
    next_in_line = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    queue.release()  # hands the slot to `unlucky` ...
    unlucky.cancel()  # ... which is cancelled before it runs
    await asyncio.sleep(0)
    await asyncio.wait_for(next_in_line, 1)
    assert unlucky.cancelled()
    assert (queue.running, queue.waiting) == (1, 0)


async def test_capacity_above_one() -> None:
    queue = FairQueue(2)
    await queue.acquire()
    await queue.acquire()
    third = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    assert not third.done() and queue.running == 2
    queue.release()
    await third
    assert queue.running == 2
