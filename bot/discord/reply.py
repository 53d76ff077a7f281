"""Streaming a generation into Discord: the one loop that writes reply messages.

`ReplyWriter` turns a generation's events into pages on a `Surface`: the queue
position while it waits, the text as it arrives (edits coalesced by a
`CoalescingEditor`, one in flight, about one a second), pages past 2,000
characters, and at the end the footer and buttons. Two surfaces:

- `InteractionSurface`, for slash commands, buttons and the Reply modal: a
  deferred original response, follow-ups for more pages, and ordinary channel
  messages once the interaction token (15 minutes) expires or its webhook
  disappears;
- `MessageSurface`, for mentions, replies and DMs: a reply to the member's
  message, then channel messages.

Only the live page carries Stop; every send and edit disables mentions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Final

import discord

from bot import wording
from bot.discord.common import NO_MENTIONS, reply_to
from bot.discord.errors import send_error
from bot.discord.pages import MESSAGE_LIMIT, CoalescingEditor, Paginator
from bot.engine import Finished, Generation, GenerationResult, Queued, Started, TextDelta
from bot.errors import UserFacingError
from bot.model.reasoning import ReasoningFilter
from bot.store.ask_log import PRIVATE_TTL_S

log = logging.getLogger(__name__)

#: An interaction token lives 15 minutes (so does a private prompt in the store).
INTERACTION_TTL_S: Final = PRIVATE_TTL_S
NEXT_IN_LINE = wording.NEXT_IN_LINE
#: How long a reply with nobody ahead may wait before it says "next in line".
NEXT_IN_LINE_AFTER_S = 0.5
READING = wording.READING
#: How long a started reply may go without text before it says "reading…" (an edit
#: spent at once on a status line would hold the first text back by a whole edit
#: interval; Discord's own "is thinking" shows meanwhile).
READING_AFTER_S = 0.5


#: Discord's Unknown Message: the message is deleted (a moderator, usually), not expired.
UNKNOWN_MESSAGE = 10008


class ReplyDeleted(UserFacingError):
    """Someone deleted a page of this reply: its generation is cancelled, nothing reposted.

    An edit's Unknown Message is not an expired token: the reply must not come
    back as a new channel message and keep streaming.
    """

    def __init__(self) -> None:
        super().__init__(wording.REPLY_DELETED)


def _deleted(exc: discord.HTTPException) -> bool:
    return exc.code == UNKNOWN_MESSAGE


def _token_gone(exc: discord.HTTPException) -> bool:
    """Unknown Webhook (404/10015) or Invalid Webhook Token (401/50027): the token is dead.

    Unknown Message (404/10008) is not: the message itself was deleted (`ReplyDeleted`).
    """
    if _deleted(exc):
        return False
    return exc.status in (401, 404) or exc.code in (10015, 50027)


def _or_missing(view: discord.ui.View | None) -> discord.ui.View:
    return view if view is not None else discord.utils.MISSING


class Page(ABC):
    """One message of a reply."""

    def __init__(self) -> None:
        #: The buttons this page carries while it is the live one (Stop); None once frozen.
        self.view: discord.ui.View | None = None
        #: What the message shows now, so an edit that would change nothing is skipped.
        self.shown: tuple[str, bool] | None = None

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        try:
            await self._edit(content, view)
        except discord.HTTPException as exc:
            if _deleted(exc):
                raise ReplyDeleted() from exc
            raise
        self.shown = (content, view is not None)

    @abstractmethod
    async def _edit(self, content: str, view: discord.ui.View | None) -> None: ...

    @abstractmethod
    async def message_id(self) -> int | None:
        """The Discord message this page is (a reply to it continues the conversation)."""


class _ChannelPage(Page):
    def __init__(self, message: discord.Message) -> None:
        super().__init__()
        self.message = message

    async def _edit(self, content: str, view: discord.ui.View | None) -> None:
        await self.message.edit(content=content, view=view, allowed_mentions=NO_MENTIONS)

    async def message_id(self) -> int | None:
        return self.message.id


class Surface(ABC):
    """Where a reply is written: its first page, more pages, and its last resort."""

    #: Text above the reply on its first page (the quoted prompt), or "".
    header = ""

    @abstractmethod
    async def acknowledge(self, stop: discord.ui.View) -> Page:
        """Tell the member the ask is taken; the first page, carrying `stop` when live."""

    @abstractmethod
    async def new_page(self, content: str, view: discord.ui.View | None) -> Page: ...

    @abstractmethod
    async def say_undelivered(self, exc: discord.HTTPException) -> None:
        """Discord kept refusing the reply's edits: one new message says it ended."""

    def question_ids(self) -> tuple[int, ...]:
        """The member's own message that asked, when there is one."""
        return ()

    def status_page(self, status: str) -> str:
        """The first page while the run waits for its model (`LoadingNotice`)."""
        return f"{self.header}\n{status}" if self.header else status


def _undelivered(exc: discord.HTTPException) -> str:
    return wording.undelivered(exc.status)


class InteractionSurface(Surface):
    """An interaction's reply: original response, follow-ups, then the channel."""

    def __init__(self, interaction: discord.Interaction, *, private: bool, header: str,
                 ttl_s: Callable[[], float]) -> None:
        self.interaction = interaction
        self.private = private
        self.header = header
        self._ttl_s = ttl_s
        self.started = time.monotonic()
        self.moved_to_channel = False
        self.original_id: int | None = None  # the original response's id, from the ack
        self.thinking = False  # acknowledged with a "thinking" message of its own
        self.first: _InteractionPage | None = None

    def token_alive(self) -> bool:
        return time.monotonic() - self.started < self._ttl_s()

    async def defer(self) -> None:
        """Acknowledge with Discord's "thinking" message, which the reply then becomes.

        A press that must read the store before it knows whether to refuse defers
        first (`withdraw` takes the message back if it then refuses); otherwise
        `acknowledge` does it.
        """
        if self.interaction.response.is_done():
            return
        ack = await self.interaction.response.defer(thinking=True, ephemeral=self.private)
        self.original_id = ack.message_id if ack is not None else None
        self.thinking = True

    async def withdraw(self, error: BaseException) -> bool:
        """A deferred ask refused before its reply began: the "thinking" message goes and
        the refusal is said to the presser alone. False when there is no such deferral."""
        if self.first is not None or not self.interaction.response.is_done():
            return False
        if self.thinking:
            with contextlib.suppress(discord.HTTPException):
                await self.interaction.delete_original_response()
        await send_error(self.interaction, error)
        return True

    async def acknowledge(self, stop: discord.ui.View) -> Page:
        await self.defer()
        # The deferred "thinking" message has no buttons: Stop comes with the first edit.
        self.first = _InteractionPage(self, None, original=True)
        self.first.view = stop
        return self.first

    async def new_page(self, content: str, view: discord.ui.View | None) -> Page:
        if self.token_alive() and not self.moved_to_channel:
            try:
                msg = await self.interaction.followup.send(
                    content=content, view=_or_missing(view), allowed_mentions=NO_MENTIONS,
                    wait=True, ephemeral=self.private,
                )
                return _InteractionPage(self, msg, original=False)
            except discord.HTTPException as exc:
                if not _token_gone(exc):
                    raise
        page = _InteractionPage(self, None, original=False)
        await page.move_to_channel(content, view)
        return page

    async def first_message(self) -> discord.Message:
        """The reply's first message as a channel message (to open a thread from)."""
        if self.first is not None and self.first.channel_message is not None:
            return self.first.channel_message
        return await self.interaction.original_response()

    async def note(self, text: str) -> None:
        """A private word to the asker about their reply (best effort)."""
        with contextlib.suppress(discord.HTTPException):
            await self.interaction.followup.send(text, ephemeral=True,
                                                 allowed_mentions=NO_MENTIONS)

    async def say_undelivered(self, exc: discord.HTTPException) -> None:
        """A follow-up, else a channel message; if Discord refuses that too, the log is all."""
        text = _undelivered(exc)
        try:
            await self.interaction.followup.send(text, ephemeral=self.private,
                                                 allowed_mentions=NO_MENTIONS)
            return
        except discord.HTTPException:
            if self.private:
                return
        channel = self.interaction.channel
        if channel is not None and hasattr(channel, "send"):
            with contextlib.suppress(discord.HTTPException):
                await channel.send(text, allowed_mentions=NO_MENTIONS)


class _InteractionPage(Page):
    """The original response, a follow-up, or (once the token is gone) a channel message."""

    def __init__(self, surface: InteractionSurface,
                 webhook_message: discord.WebhookMessage | None, original: bool) -> None:
        super().__init__()
        self.surface = surface
        self.webhook_message = webhook_message
        self.original = original
        self.channel_message: discord.Message | None = None

    async def message_id(self) -> int | None:
        if self.channel_message is not None:
            return self.channel_message.id
        if self.webhook_message is not None:
            return self.webhook_message.id
        if self.original and self.surface.original_id is not None:
            return self.surface.original_id
        if self.original:
            with contextlib.suppress(discord.HTTPException):
                return (await self.surface.interaction.original_response()).id
        return None

    async def _edit(self, content: str, view: discord.ui.View | None) -> None:
        if self.channel_message is not None:
            await self.channel_message.edit(content=content, view=view,
                                            allowed_mentions=NO_MENTIONS)
            return
        surface = self.surface
        if not surface.token_alive():
            await self.move_to_channel(content, view)
            return
        try:
            if self.original:
                await surface.interaction.edit_original_response(
                    content=content, view=view, allowed_mentions=NO_MENTIONS
                )
            elif self.webhook_message is not None:
                await self.webhook_message.edit(content=content, view=view,
                                                allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            if not _token_gone(exc):
                raise
            # The interaction token expired or the webhook is gone: carry on in the channel.
            await self.move_to_channel(content, view)

    async def move_to_channel(self, content: str, view: discord.ui.View | None) -> None:
        surface = self.surface
        if surface.private:
            raise UserFacingError(wording.PRIVATE_REPLY_EXPIRED)
        channel = surface.interaction.channel
        if channel is None or not hasattr(channel, "send"):
            raise UserFacingError(wording.REPLY_MESSAGE_GONE)
        log.info("reply %s continues as a channel message", surface.interaction.id)
        surface.moved_to_channel = True
        self.channel_message = await channel.send(
            content=content, view=_or_missing(view), allowed_mentions=NO_MENTIONS,
        )


class MessageSurface(Surface):
    """The answer to a member's message: a reply to it, then channel messages.

    No interaction token to expire, so every page is an ordinary message.
    """

    def __init__(self, message: discord.Message) -> None:
        self.message = message

    async def acknowledge(self, stop: discord.ui.View) -> Page:
        first = await reply_to(self.message, READING, view=stop)
        page = _ChannelPage(first)
        page.view = stop
        page.shown = (READING, True)
        return page

    async def new_page(self, content: str, view: discord.ui.View | None) -> Page:
        sent = await self.message.channel.send(content, view=_or_missing(view),
                                               allowed_mentions=NO_MENTIONS)
        return _ChannelPage(sent)

    def question_ids(self) -> tuple[int, ...]:
        return (self.message.id,)

    async def say_undelivered(self, exc: discord.HTTPException) -> None:
        with contextlib.suppress(discord.HTTPException):
            await reply_to(self.message, _undelivered(exc))


class ThreadSurface(Surface):
    """The answer to a member's message, written in a thread opened from it (auto-threads)."""

    def __init__(self, message: discord.Message, thread: discord.Thread) -> None:
        self.message = message
        self.thread = thread

    async def acknowledge(self, stop: discord.ui.View) -> Page:
        first = await self.thread.send(READING, view=stop, allowed_mentions=NO_MENTIONS)
        page = _ChannelPage(first)
        page.view = stop
        page.shown = (READING, True)
        return page

    async def new_page(self, content: str, view: discord.ui.View | None) -> Page:
        sent = await self.thread.send(content, view=_or_missing(view),
                                      allowed_mentions=NO_MENTIONS)
        return _ChannelPage(sent)

    def question_ids(self) -> tuple[int, ...]:
        return (self.message.id,)

    async def say_undelivered(self, exc: discord.HTTPException) -> None:
        with contextlib.suppress(discord.HTTPException):
            await self.thread.send(_undelivered(exc), allowed_mentions=NO_MENTIONS)


class ReplyWriter:
    """The one streaming loop: a generation's events become pages on a surface.

    `stream` runs until the generation finishes; `lay_out` puts the footer under
    the text (earlier pages lose Stop); `show_final` makes the last edit, with
    the finished reply's buttons. Between the two the caller stores the turns
    (every page exists, so their ids are known) and frees the asker's slot.
    """

    def __init__(self, surface: Surface, gen: Generation, first: Page, stop: discord.ui.View,
                 *, edit_interval_s: float, text_filter: ReasoningFilter | None = None) -> None:
        self.surface = surface
        # A reasoning model's text goes through the filter: "thinking…" while it
        # thinks, the answer alone on the pages, the reasoning kept apart.
        self.text_filter = text_filter
        self.reasoning = ""
        self.gen = gen
        self.stop = stop
        self.interval = edit_interval_s
        self.header = surface.header
        first_limit = MESSAGE_LIMIT - len(self.header) - 1 if self.header else None
        self.paginator = Paginator(MESSAGE_LIMIT, first_limit=first_limit)
        self.pages: list[Page] = [first]
        self.text = ""
        self.status = ""
        self.final: list[str] = []
        self.deleted = False  # a page was deleted: cancelled, nothing more is written
        self.editor = self._editor(first, first.shown[0] if first.shown else None)

    def _editor(self, page: Page, sent: str | None) -> CoalescingEditor:
        async def send(content: str) -> None:
            try:
                await page.edit(content, page.view)
            except ReplyDeleted:
                self.deleted = True
                self.gen.cancel()
                raise
        return CoalescingEditor(send, self.interval, sent=sent)

    def _check_deleted(self) -> None:
        if self.deleted:
            raise ReplyDeleted()

    def _contents(self, tail: str) -> list[str]:
        # Trailing blank lines of the model's output would stand between the
        # text and the status line or footer.
        out = self.paginator.pages(self.text.rstrip(), reserve_last=len(tail) + 1 if tail else 0)
        if self.header:
            out[0] = f"{self.header}\n{out[0]}" if out[0] else self.header
        if tail:
            out[-1] = f"{out[-1]}\n{tail}" if out[-1] else tail
        return out

    async def _grow(self, out: list[str]) -> None:
        """A page filled up: freeze it (losing its Stop) and continue on a new page."""
        pages = self.pages
        while len(out) > len(pages):
            pages[-1].view = None
            await self.editor.finish(out[len(pages) - 1], force=True)
            content = out[len(pages)]
            page = await self.surface.new_page(content, self.stop)
            page.view = self.stop
            page.shown = (content, True)
            pages.append(page)
            self.editor = self._editor(page, content)

    async def _show(self, status: str) -> None:
        self._check_deleted()
        self.status = status
        out = self._contents(status)
        await self._grow(out)
        self.editor.update(out[-1])

    def _still_waiting(self) -> None:
        # Nobody was ahead, yet the reply has not started: a batch with other
        # settings is running. Now "next in line" is worth an edit.
        if self.status or self.gen.slot is not None or self.gen.done:
            return
        self.status = NEXT_IN_LINE
        self.editor.update(self._contents(NEXT_IN_LINE)[-1])

    def _still_reading(self) -> None:
        # Started, yet no text: the model is reading a long prompt. Only now is a
        # status line worth the edit it costs.
        if self.text or self.gen.done or self.status == READING:
            return
        self.status = READING
        self.editor.update(self._contents(READING)[-1])

    async def stream(self) -> GenerationResult:
        waiting: asyncio.TimerHandle | None = None
        result: GenerationResult | None = None
        try:
            async for event in self.gen.events():
                if waiting is not None and not isinstance(event, Queued):
                    waiting.cancel()
                    waiting = None
                if isinstance(event, Queued):
                    if event.ahead:
                        await self._show(wording.queued(event.ahead))
                    elif self.status:
                        await self._show(NEXT_IN_LINE)
                    elif waiting is None:
                        # Nobody ahead: on an idle bot the reply starts within
                        # milliseconds, and "next in line" would cost an edit for
                        # nothing. Say it only if the reply is still waiting later.
                        waiting = asyncio.get_running_loop().call_later(
                            NEXT_IN_LINE_AFTER_S, self._still_waiting)
                elif isinstance(event, Started):
                    # No edit now: the first text goes out the moment it exists.
                    waiting = asyncio.get_running_loop().call_later(
                        READING_AFTER_S, self._still_reading)
                elif isinstance(event, TextDelta):
                    if self.text_filter is None:
                        self.text += event.text
                        await self._show(wording.WRITING)
                    else:
                        shown, thinking = self.text_filter.feed(event.text)
                        self.text += shown
                        await self._show(wording.THINKING if thinking else wording.WRITING)
                elif isinstance(event, Finished):
                    result = event.result
        finally:
            if waiting is not None:
                waiting.cancel()
        assert result is not None
        if self.text_filter is not None:
            split = self.text_filter.finish()
            self.text, self.reasoning = split.shown_answer(), split.reasoning
            # What is stored and continued is the answer alone.
            result = replace(result, text=split.answer)
        return result

    async def lay_out(self, tail: str) -> None:
        """Every page with its final text and `tail` under the last; only it keeps Stop."""
        self._check_deleted()
        final = self._contents(tail)
        await self._grow(final)
        self.final = final
        await self.editor.abort()
        # Pages frozen while streaming already lost their Stop; any other earlier
        # page loses it now, before the footer, so the footer is the last word.
        for page, content in zip(self.pages[:-1], final, strict=False):
            if page.shown != (content, False):
                with contextlib.suppress(discord.HTTPException, ReplyDeleted):
                    await page.edit(content, None)

    async def show_final(self, view: discord.ui.View | None) -> None:
        await self.pages[-1].edit(self.final[-1], view)

    async def message_ids(self) -> tuple[int, ...]:
        ids = [await page.message_id() for page in self.pages]
        return tuple(i for i in ids if i is not None)

    async def abort(self) -> None:
        """The reply ends early (an error, a shutdown): stop decoding and editing."""
        self.gen.cancel()
        await self.editor.abort()
