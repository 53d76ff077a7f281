"""The decoding thread's hand-over to the loop: every event, in order, few wake-ups."""

from __future__ import annotations

import asyncio
import threading

from bot.engine.worker import Outbox


async def test_events_put_while_the_loop_is_busy_arrive_in_order_in_one_wake_up() -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop)
    got: list[int] = []
    done = asyncio.Event()

    def deliver(n: int) -> None:
        got.append(n)
        if n == 9:
            done.set()

    # A decoding thread puts ten tokens while the loop is busy elsewhere (not awaiting).
    putter = threading.Thread(target=lambda: [outbox.put(deliver, n) for n in range(10)])
    putter.start()
    putter.join()
    assert got == [] and outbox.wakeups == 1
    await asyncio.wait_for(done.wait(), 5)
    assert got == list(range(10))
    # Once drained, the next event schedules a wake-up of its own.
    outbox.put(deliver, 10)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert got[-1] == 10 and outbox.wakeups == 2
