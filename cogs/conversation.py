"""/conversation show and /conversation forget: a member's conversation, seen and cleared.

Thin: where the member is (their DM, a thread /ask opened, or a channel) picks
the conversation; `bot.chat.view` does the rest. Both answer only
the member (ephemeral), and only their own turns are shown or deleted.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.chat.view import describe
from bot.discord.conversation import dm_place, place_of
from bot.store.turns import StoredTurn
from cogs._common import NO_MENTIONS, bot_of, location_of

#: Discord's message limit.
MESSAGE_LIMIT = 2000


async def _chain(interaction: discord.Interaction) -> list[StoredTurn]:
    chat = bot_of(interaction).app.chat
    user_id = interaction.user.id
    place = await place_of(chat, interaction.channel, user_id, interaction.guild_id is None)
    return await chat.conversation_here(place, interaction.channel_id, user_id)


class Conversation(commands.GroupCog, group_name="conversation",
                   group_description="Your conversation with the bot here"):
    @app_commands.command(name="show",
                          description="Your conversation here: its turns, their tokens, "
                                      "and which the next ask leaves out.")
    async def show(self, interaction: discord.Interaction) -> None:
        chain = await _chain(interaction)
        view = await bot_of(interaction).app.chat.view(location_of(interaction), chain,
                                                       interaction.user.id)
        text = describe(view)
        if len(text) > MESSAGE_LIMIT:
            text = text[: MESSAGE_LIMIT - 1] + "…"
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="forget",
                          description="Delete your turns of the conversation here "
                                      "(in DMs: the whole conversation).")
    async def forget(self, interaction: discord.Interaction) -> None:
        chat = bot_of(interaction).app.chat
        user_id = interaction.user.id
        chain = [t for t in await _chain(interaction) if t.author_id == user_id]
        removed = 0
        if chain:
            removed = await chat.forget_own(chain[-1].conversation_id, user_id)
        if interaction.guild_id is None:
            await chat.set_head(dm_place(user_id), None)  # the next DM starts afresh
        text = (f"Forgot {wording.plural(removed, 'turn')} of your conversation here."
                if removed else "You have no conversation here to forget.")
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Conversation())
