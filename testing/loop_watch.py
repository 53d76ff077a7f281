"""How long the event loop was held up while something ran: a ticker task's view.

A task that asks to wake every `period` seconds notes each wake. Two figures:

- `worst_lateness_s`: the longest a wake came after it was due (wall clock), what a
  member waiting on the bot feels; a busy machine inflates it too.
- `worst_busy_s`: for each gap between wakes, the smaller of its wall time and the
  CPU time the whole process spent in it. A loop held by its own work (or by a
  worker thread holding the GIL) burns CPU for the whole gap; a loop merely not
  scheduled on a busy machine burns none, so this figure is what a test can assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType


class LoopWatch:
    """``async with LoopWatch() as watch: ...`` then read `worst_lateness_s`, `worst_busy_s`."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst_lateness_s = 0.0
        self.worst_busy_s = 0.0
        self.wakes = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        wall, cpu = time.perf_counter(), time.process_time()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            self.wakes += 1
            self.worst_lateness_s = max(self.worst_lateness_s, loop.time() - due)
            self.worst_busy_s = max(self.worst_busy_s, min(now_wall - wall, now_cpu - cpu))
            wall, cpu = now_wall, now_cpu

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # the ticker takes its first reading before the work starts
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.sleep(self.period * 2)  # a stall at the very end is seen too
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
