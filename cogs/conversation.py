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
from bot.discord.pages import MESSAGE_LIMIT
from bot.errors import UserFacingError
from bot.store.scopes import ASIDE_MARKER_KEY, AUTO_THREAD_KEY, FOLLOW_KEY
from bot.store.turns import StoredTurn
from bot.store.validation import validate_aside_marker
from cogs._common import (
    NO_MENTIONS,
    bot_of,
    location_of,
    scope_for_write,
    scope_word,
    settings_of,
)


async def _chain(interaction: discord.Interaction) -> list[StoredTurn]:
    chat = bot_of(interaction).app.chat
    user_id = interaction.user.id
    place = await place_of(chat, interaction.channel, user_id, interaction.guild_id is None)
    return await chat.conversation_here(place, interaction.channel_id, user_id)


class Conversation(commands.GroupCog, group_name="conversation",
                   group_description=wording.COMMANDS["conversation"]):
    @app_commands.command(name="show", description=wording.COMMANDS["conversation show"])
    async def show(self, interaction: discord.Interaction) -> None:
        chain = await _chain(interaction)
        view = await bot_of(interaction).app.chat.view(location_of(interaction), chain,
                                                       interaction.user.id)
        text = describe(view)
        if len(text) > MESSAGE_LIMIT:
            text = text[: MESSAGE_LIMIT - 1] + "…"
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="forget", description=wording.COMMANDS["conversation forget"])
    async def forget(self, interaction: discord.Interaction) -> None:
        chat = bot_of(interaction).app.chat
        user_id = interaction.user.id
        chain = [t for t in await _chain(interaction) if t.author_id == user_id]
        removed = 0
        if chain:
            removed = await chat.forget_own(chain[-1].conversation_id, user_id)
        if interaction.guild_id is None:
            await chat.set_head(dm_place(user_id), None)  # the next DM starts afresh
        text = wording.forgot(removed)
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)


    @app_commands.command(name="follow", description=wording.COMMANDS["conversation follow"])
    @app_commands.describe(**wording.OPTIONS["conversation follow"])
    @app_commands.guild_only()
    async def follow(self, interaction: discord.Interaction, on: bool) -> None:
        bot = bot_of(interaction)
        scope = scope_for_write(interaction, "channel")
        await settings_of(interaction).set_mode(scope, FOLLOW_KEY, True if on else None,
                                                actor_id=interaction.user.id)
        effective = await bot.app.resolve(location_of(interaction))
        place = scope_word(scope, interaction)
        if not on:
            text = wording.NOT_FOLLOWING.format(place=place)
        elif not bot.content_mode.on:
            text = wording.FOLLOW_NEEDS_CONTENT
        else:
            text = wording.FOLLOWING.format(place=place, marker=effective.aside_marker)
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="autothread",
                          description=wording.COMMANDS["conversation autothread"])
    @app_commands.describe(**wording.OPTIONS["conversation autothread"])
    @app_commands.guild_only()
    async def autothread(self, interaction: discord.Interaction, on: bool) -> None:
        if isinstance(interaction.channel, discord.Thread):
            raise UserFacingError(wording.AUTO_THREAD_IN_THREAD)
        scope = scope_for_write(interaction, "channel")
        await settings_of(interaction).set_mode(
            scope, AUTO_THREAD_KEY, True if on else None, actor_id=interaction.user.id)
        await interaction.response.send_message(
            wording.AUTO_THREAD_ON if on else wording.AUTO_THREAD_OFF, ephemeral=True,
            allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="marker", description=wording.COMMANDS["conversation marker"])
    @app_commands.describe(**wording.OPTIONS["conversation marker"])
    @app_commands.guild_only()
    async def marker(self, interaction: discord.Interaction,
                     marker: app_commands.Range[str, 1, 8]) -> None:
        scope = scope_for_write(interaction, "server")
        checked = validate_aside_marker(marker)
        await settings_of(interaction).set_mode(
            scope, ASIDE_MARKER_KEY, checked, actor_id=interaction.user.id)
        await interaction.response.send_message(
            wording.MARKER_SET.format(marker=checked), ephemeral=True,
            allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Conversation())
