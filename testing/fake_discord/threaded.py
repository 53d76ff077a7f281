"""A `FakeDiscord` served from a thread and event loop of its own.

On the bot's loop the fake's own work (answering REST calls, sending gateway frames)
sits in the same ready queue as the bot's callbacks, so a latency measured there
includes the fake. Discord is another machine: here the fake still shares the
process (and the GIL) but never the bot's loop. Everything that touches the fake's
state or its events runs on its loop through `call`.

Usage::

    async with FakeOnThread(guilds=[guild]) as threaded:
        fake = threaded.fake
        bot = fake.make_bot(LlamaBot, app=app)   # patches discord.py (process-wide)
        async with fake.run_bot(bot):            # the bot runs on this loop
            itx = await threaded.call(fake.inject_interaction, "ask", {"prompt": "hi"})
            await threaded.call(fake.wait_for, lambda: itx.response, timeout=5)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from testing.fake_discord.server import FakeDiscord

P = ParamSpec("P")
T = TypeVar("T")


class FakeOnThread:
    """Start a `FakeDiscord` on its own loop in a daemon thread; close both on exit."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-discord",
                                        daemon=True)
        self._fake: FakeDiscord | None = None

    @property
    def fake(self) -> FakeDiscord:
        assert self._fake is not None, "not started"
        return self._fake

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn(*args, **kwargs)` on the fake's loop."""

        async def run() -> T:
            return await fn(*args, **kwargs)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    async def __aenter__(self) -> FakeOnThread:
        self._thread.start()

        async def start() -> FakeDiscord:
            fake = FakeDiscord(**self._options)
            await fake.start()
            return fake

        self._fake = await self.call(start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if self._fake is not None:
                await self.call(self._fake.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self.loop.close()
        if exc_type is None and self._fake is not None:
            self._fake.assert_no_refusals()
