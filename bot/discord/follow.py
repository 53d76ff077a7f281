"""Talking without @: followed places, members' asides, bursts answered together, auto-threads.

Discord shows a bot a server message's text only when it mentions the bot, unless
the bot holds the privileged Message Content intent (switched on in the Developer
Portal and asked for with ``BOT_MESSAGE_CONTENT=true``). With it, a *followed*
place is a conversation where every member message is a turn:

- a thread the bot started (``/ask thread:true``, an auto-thread);
- a thread or channel an admin follows (``/conversation follow on``; a channel's
  threads follow with it).

Members still talk among themselves there: a message that replies to or mentions
someone else, or starts with the server's aside marker (``//`` unless an admin
changed it), is left alone. While a reply is being written in a place, messages
that arrive wait and are answered together in the next turn, so a burst of five
messages gets one answer, not five.

Auto-threads (an admin setting per channel) need no intent: a mention in such a
channel opens a public thread named after the question, the answer is written
inside it, and the thread is the conversation from then on (followed when the
mode is on, continued by mentions otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from bot import wording
from bot.discord.conversation import (
    display_name,
    location,
    strip_mention,
    thread_name,
    thread_place,
)
from bot.store.scopes import Effective

if TYPE_CHECKING:
    from bot.discord.runner import AskRunner

log = logging.getLogger(__name__)


def channel_place(channel_id: int) -> str:
    """The key of a followed channel's conversation."""
    return f"channel:{channel_id}"


@dataclass
class ContentMode:
    """Whether members' message text reaches the bot: asked for, and granted by Discord."""

    wanted: bool
    refused: bool = False  # Discord closed the gateway with 4014: the Portal switch is off

    @property
    def on(self) -> bool:
        return self.wanted and not self.refused

    def status_line(self) -> str:
        if self.refused:
            return wording.CONTENT_MODE_REFUSED
        return wording.CONTENT_MODE_ON if self.on else wording.CONTENT_MODE_OFF


def is_aside(message: discord.Message, me_id: int, marker: str) -> bool:
    """Members talking among themselves: a marker, a mention of someone else, a reply to them."""
    if marker and message.content.lstrip().startswith(marker):
        return True
    if message.mention_everyone or message.role_mentions:
        return True
    if any(user.id != me_id for user in message.mentions):
        return True
    ref = message.reference
    if ref is not None and ref.message_id is not None:
        resolved = ref.resolved
        if not isinstance(resolved, discord.Message) or resolved.author.id != me_id:
            return True  # a reply to a member (or to a message Discord didn't show us)
    return False


def followed(channel: object, me_id: int, effective: Effective) -> bool:
    """Whether every member message in `channel` is a turn (the mode being on)."""
    if isinstance(channel, discord.Thread) and channel.owner_id == me_id:
        return True
    return effective.follow


@dataclass
class _Burst:
    """Messages waiting in one place while its reply is written."""

    waiting: list[discord.Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def burst_text(messages: Sequence[discord.Message], me_id: int) -> str:
    """One turn from several messages: their lines in order, each with its speaker when
    more than one member wrote (so the model can tell who asked what)."""
    texts = [strip_mention(m.content, me_id) for m in messages]
    authors = {m.author.id for m in messages}
    if len(authors) == 1:
        return "\n".join(t for t in texts if t)
    return "\n".join(f"{display_name(m.author)}: {t}" for m, t in zip(messages, texts, strict=True)
                     if t)


class Follower:
    """The message path for followed places and auto-threads, in front of the runner's."""

    def __init__(self, runner: AskRunner, mode: ContentMode) -> None:
        self.runner = runner
        self.mode = mode
        self._bursts: dict[int, _Burst] = {}  # by channel id, while a reply is written there

    async def handle(self, message: discord.Message, me: discord.abc.User | None) -> bool:
        """True when the message was taken here (a followed turn, an aside, an auto-thread)."""
        if me is None or message.guild is None or message.author.bot:
            return False
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return False
        mentioned = any(u.id == me.id for u in message.mentions)
        if not (self.mode.on or mentioned):
            return False  # nothing here can be for us: no settings read per server message
        channel = message.channel
        loc = location(message.guild.id, channel.id, channel, message.author.id)
        effective = await self.runner.app.resolve(loc)
        if self.mode.on and followed(channel, me.id, effective):
            if not mentioned and is_aside(message, me.id, effective.aside_marker):
                return True  # members among themselves: not for the bot
            await self._take(message, me.id)
            return True
        if (mentioned and effective.auto_thread and not isinstance(channel, discord.Thread)
                and isinstance(channel, discord.TextChannel)):
            await self._auto_thread(message, me.id, effective)
            return True
        return False

    async def _take(self, message: discord.Message, me_id: int) -> None:
        """Answer now, or join the burst waiting for the reply being written here."""
        key = message.channel.id
        burst = self._bursts.get(key)
        if burst is not None:
            burst.waiting.append(message)
            burst.arrived.set()
            return
        burst = self._bursts[key] = _Burst()
        batch = [message]
        try:
            while batch:
                await self._answer(batch, me_id)
                batch, burst.waiting = burst.waiting, []
        finally:
            self._bursts.pop(key, None)

    async def _answer(self, batch: list[discord.Message], me_id: int) -> None:
        last = batch[-1]
        channel = last.channel
        place = (thread_place(channel.id) if isinstance(channel, discord.Thread)
                 else channel_place(channel.id))
        text = burst_text(batch, me_id)
        named = len({m.author.id for m in batch}) > 1
        await self.runner.answer_message(last, text, place=place, attachments_from=batch,
                                         named=named)

    async def _auto_thread(self, message: discord.Message, me_id: int,
                           effective: Effective) -> None:
        """A mention in an auto-thread channel: a thread from it, answered inside."""
        text = strip_mention(message.content, me_id)
        try:
            thread = await message.create_thread(name=thread_name(text or message.author.name))
        except discord.HTTPException as exc:
            log.warning("couldn't open a thread for message %s: %s", message.id, exc)
            await self.runner.answer_message(message, text)  # answered here instead
            return
        note = (wording.THREAD_OPENED.format(marker=effective.aside_marker) if self.mode.on
                else wording.THREAD_OPENED_MENTION)
        with contextlib.suppress(discord.HTTPException):
            await thread.send(note, allowed_mentions=discord.AllowedMentions.none())
        await self.runner.answer_message(message, text, place=thread_place(thread.id),
                                         thread=thread)
