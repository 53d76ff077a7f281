"""A character card's greeting, posted as the first turn of a conversation.

`/system import greeting:true` (and `/system load greeting:true`) post the greeting
in the channel and store it as the assistant's first turn (`Chat.record_greeting`),
so Reply, a reply that pings the bot, a DM's next message or a thread's next ask
continue from it, and the model reads it as its own earlier turn. A card's
alternate greetings are versions of that turn, browsed with ◀ n/m ▶ like
Regenerate's; the conversation continues from the one on screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot.chat.speakers import fill_user
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.conversation import dm_place, thread_place
from bot.discord.pages import Paginator
from bot.discord.swipes import answer_view, version_content
from bot.store.swipes import MAX_SWIPES

if TYPE_CHECKING:
    from bot.app import App


async def post_greeting(app: App, interaction: discord.Interaction,
                        greetings: Sequence[str]) -> None:
    """Post the first greeting (never a ping), store every greeting as a version of the
    conversation's first assistant turn, then give the message its buttons.

    Everyone reads it, so its ``{{user}}`` is "you". In a DM the conversation is the
    member's own; in a thread it becomes the thread's conversation.
    """
    # An answer keeps at most MAX_SWIPES versions: the message counts only those stored.
    texts = [fill_user(g, None, default="you") or g for g in greetings if g.strip()][:MAX_SWIPES]
    if not texts:
        return
    user, channel = interaction.user, interaction.channel
    dm = interaction.guild_id is None
    place = (dm_place(user.id) if dm
             else thread_place(channel.id) if isinstance(channel, discord.Thread) else None)
    contents = ([version_content("", texts[0], f"1/{len(texts)}")] if len(texts) > 1
                else Paginator().pages(texts[0]))
    messages = [await interaction.followup.send(content, allowed_mentions=NO_MENTIONS, wait=True)
                for content in contents]
    # Stored once posted (nothing is kept for a greeting nobody saw), and the buttons
    # come after, so a press always finds its turns.
    swipes = await app.chat.record_greeting(
        texts, location_of(interaction), ask_id=interaction.id,
        message_ids=[m.id for m in messages], place=place, owner_id=user.id if dm else None)
    await messages[-1].edit(view=answer_view(swipes.current, swipes),
                            allowed_mentions=NO_MENTIONS)
