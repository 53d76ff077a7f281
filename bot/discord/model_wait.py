"""A run whose model must load first is acknowledged at once and says so.

Discord wants an interaction answered within 3 s and a model load takes longer,
so the registry's first `Waiting` ("loading model X…", "waiting for memory…")
acknowledges the ask there and then, and its page reads that status until the
reply streams into the same page. If the model then fails to load, the page
says why instead of the usual refusal (which would be a second message).

Any interaction whose ask is still being prepared `ACK_WITHIN_S` after it began
(store reads queued, a shared slot's round trip, a long history to fit) is
acknowledged then too (`acknowledge_late`): a deferral, which the reply becomes,
or which a refusal takes back and says privately (`InteractionSurface.withdraw`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord

from bot import wording
from bot.discord.reply import InteractionSurface, Page, Surface
from bot.errors import UserFacingError
from bot.hosting.registry import Waiting

log = logging.getLogger(__name__)

#: An interaction still unacknowledged this long after its run began is deferred:
#: Discord allows 3 s, and the deferral is itself a round trip.
ACK_WITHIN_S = 1.0


class LoadingNotice:
    """The `on_wait` of one ask: acknowledge early, show the latest waiting status."""

    def __init__(self, surface: Surface, stop: discord.ui.View) -> None:
        self.surface = surface
        self.stop = stop
        self._task: asyncio.Task[Page] | None = None
        self._deferred: asyncio.Task[None] | None = None
        self._edits: list[asyncio.Task[None]] = []

    def __call__(self, waiting: Waiting) -> None:
        status = wording.waiting_line(waiting.message)
        if self._task is None:
            self._task = asyncio.create_task(self._acknowledge())
        self._edits.append(asyncio.create_task(self._show(self._task, status)))

    async def _acknowledge(self) -> Page:
        if self._deferred is not None:  # never two first responses at once
            await self._deferred
        return await self.surface.acknowledge(self.stop)

    def acknowledge_late(self) -> None:
        """The run is still preparing at the deadline: defer an interaction now."""
        if (self._task is None and self._deferred is None
                and isinstance(self.surface, InteractionSurface)):
            self._deferred = asyncio.create_task(self.surface.defer())

    def _content(self, status: str) -> str:
        return self.surface.status_page(status)

    async def _show(self, ack: asyncio.Task[Page], status: str) -> None:
        with contextlib.suppress(Exception):  # the ack's own failure is raised by `page`
            page = await ack
            await page.edit(self._content(status), None)  # Stop comes with the reply

    @property
    def acknowledged(self) -> bool:
        """Whether the ask was acknowledged early (a page, or a deferral, to end)."""
        return self._task is not None or self._deferred is not None

    async def page(self) -> Page | None:
        """The page acknowledged early (the status edits done), or None if none was."""
        if self._task is None:
            if self._deferred is not None:
                await self._deferred  # the reply's `acknowledge` finds it done
            return None
        page = await self._task
        for edit in self._edits:
            with contextlib.suppress(Exception):
                await edit
        return page

    async def refuse(self, exc: UserFacingError) -> bool:
        """Say `exc` on the early page, or privately after a late deferral (taken back);
        False when the ask was not acknowledged (the entry refuses)."""
        if self._task is None:
            if self._deferred is None or not isinstance(self.surface, InteractionSurface):
                return False
            with contextlib.suppress(discord.HTTPException):
                await self._deferred
            return await self.surface.withdraw(exc)
        try:
            page = await self.page()
            assert page is not None
            await page.edit(self._content(wording.warning(exc.message)), None)
        except discord.HTTPException:
            log.warning("could not show why an ask was refused: %s", exc.message)
        return True
