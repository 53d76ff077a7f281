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
    count_write,
    location_of,
    scope_for_write,
    scope_word,
)


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
        text = wording.forgot(removed)
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)


    @app_commands.command(name="follow",
                          description="Answer every message here, no @ needed (admins).")
    @app_commands.describe(on="on: every member message here is for me; off: mentions only")
    @app_commands.guild_only()
    async def follow(self, interaction: discord.Interaction, on: bool) -> None:
        bot = bot_of(interaction)
        scope = await scope_for_write(interaction, "channel")
        changed = await bot.app.store.set_mode(scope, FOLLOW_KEY, True if on else None,
                                               actor_id=interaction.user.id)
        await count_write(interaction, changed)
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
                          description="A mention in this channel opens a thread of its own "
                                      "(admins).")
    @app_commands.describe(on="on: each mention here gets its own thread; off: answered here")
    @app_commands.guild_only()
    async def autothread(self, interaction: discord.Interaction, on: bool) -> None:
        if isinstance(interaction.channel, discord.Thread):
            raise UserFacingError(wording.AUTO_THREAD_IN_THREAD)
        scope = await scope_for_write(interaction, "channel")
        changed = await bot_of(interaction).app.store.set_mode(
            scope, AUTO_THREAD_KEY, True if on else None, actor_id=interaction.user.id)
        await count_write(interaction, changed)
        await interaction.response.send_message(
            wording.AUTO_THREAD_ON if on else wording.AUTO_THREAD_OFF, ephemeral=True,
            allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="marker",
                          description="What a message starts with to be left alone where I "
                                      "follow (admins).")
    @app_commands.describe(marker="A few characters, such as // (the default)")
    @app_commands.guild_only()
    async def marker(self, interaction: discord.Interaction,
                     marker: app_commands.Range[str, 1, 8]) -> None:
        scope = await scope_for_write(interaction, "server")
        checked = validate_aside_marker(marker)
        changed = await bot_of(interaction).app.store.set_mode(
            scope, ASIDE_MARKER_KEY, checked, actor_id=interaction.user.id)
        await count_write(interaction, changed)
        await interaction.response.send_message(
            wording.MARKER_SET.format(marker=checked), ephemeral=True,
            allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Conversation())
