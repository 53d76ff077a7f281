"""Discord's conversation rules: which messages address the bot, and where each ask continues.

Everything arrives without a privileged intent. Buttons and modals are
interactions; Discord delivers a message's content to a bot without the
message-content intent when the bot is mentioned (a reply that pings the bot
counts) and in DMs. A message that reaches us without content (a reply with the
ping switched off, a bare mention) gets a short "how to ask" instead of an answer.

Where a follow-up continues from (`AskRunner` builds a `bot.chat.turns.TurnAsk` from these):
- the Reply button: the answer it sits under (on an earlier answer: a branch);
- a reply that pings the bot: the answer it replies to;
- a plain DM: the user's current DM conversation (`dm:<user>`);
- `/ask` or a mention inside a thread opened by `/ask thread:true`: the thread's
  conversation (`thread:<id>`);
- anything else starts a new conversation.

Persona and knobs are resolved for the location at every turn. Turns are stored
only once a reply finished, so a failed ask leaves nothing behind. Private
answers stay private: their follow-ups are ephemeral and nobody else can
continue them (`bot.chat.history.check_continuable`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bot import wording
from bot.chat.service import Chat
from bot.store.scopes import Location
from bot.store.turns import StoredTurn

HOW_TO_ASK = wording.HOW_TO_ASK
HOW_TO_ASK_DM = wording.HOW_TO_ASK_DM


def dm_place(user_id: int) -> str:
    """The key of a user's current DM conversation."""
    return f"dm:{user_id}"


def thread_place(thread_id: int) -> str:
    """The key of a thread's conversation (the thread `/ask thread:true` opened)."""
    return f"thread:{thread_id}"


def display_name(user: discord.abc.User) -> str:
    """The speaker's name as the model reads it, always valid Unicode.

    A crafted client can set a name with lone surrogates; the engine refuses
    invalid Unicode in a prompt, and a name must never refuse its member's ask:
    each surrogate becomes U+FFFD.
    """
    name = user.display_name or user.name or ""
    return _SURROGATE.sub("\ufffd", name)


_SURROGATE = re.compile("[\ud800-\udfff]")


def strip_mention(content: str, bot_id: int) -> str:
    """The question in a message, without the ``<@bot>`` mentions that addressed it."""
    return re.sub(rf"<@!?{bot_id}>", " ", content).strip()


def thread_name(question: str) -> str:
    """A thread title from the question: one line, at most 90 characters."""
    flat = " ".join(question.split()) or "Conversation"
    return flat if len(flat) <= 90 else flat[:89].rstrip() + "…"


def location(guild_id: int | None, channel_id: int, channel: object, user_id: int) -> Location:
    """Scope ids from what Discord delivered, never from anything a user typed."""
    parent = channel.parent_id if isinstance(channel, discord.Thread) else None
    return Location(guild_id=guild_id, channel_id=channel_id, parent_channel_id=parent,
                    user_id=user_id)


async def place_of(chat: Chat, channel: object, user_id: int, dm: bool) -> str | None:
    """The conversation an ask here is in: the user's DM, a thread /ask opened, or none."""
    if dm:
        return dm_place(user_id)
    if isinstance(channel, discord.Thread):
        place = thread_place(channel.id)
        if await chat.head(place) is not None:
            return place
    return None


@dataclass(frozen=True)
class Addressed:
    """A message that asks the bot something: its question and the answer it replies to."""

    text: str  # empty: it addressed us, but Discord showed us no question
    replied: StoredTurn | None
    dm: bool


async def addressed(
    chat: Chat, message: discord.Message, me: discord.abc.User | None
) -> Addressed | None:
    """Mentions, replies to our answers and DMs address the bot; None for everything else."""
    if me is None or message.author.bot or message.author.id == me.id:
        return None
    if message.type not in (discord.MessageType.default, discord.MessageType.reply):
        return None
    dm = message.guild is None
    mentioned = any(u.id == me.id for u in message.mentions)
    replied: StoredTurn | None = None
    replied_to_me = False
    ref = message.reference
    if ref is not None and ref.message_id is not None:
        resolved = ref.resolved
        replied_to_me = isinstance(resolved, discord.Message) and resolved.author.id == me.id
        if replied_to_me or mentioned or dm:
            replied = await chat.by_message(ref.message_id)
            replied_to_me = replied_to_me or replied is not None
    if not (dm or mentioned or replied_to_me):
        return None
    return Addressed(strip_mention(message.content, me.id), replied, dm)
