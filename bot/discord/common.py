"""Small helpers every Discord module shares: where an interaction happens, no pings."""

from __future__ import annotations

import discord

from bot.store.scopes import Location

#: Passed on every send and edit (and set client-wide): model output never pings anyone.
NO_MENTIONS = discord.AllowedMentions.none()


def location_of(interaction: discord.Interaction) -> Location:
    """Scope ids come from the interaction itself, never from anything a user typed."""
    channel = interaction.channel
    channel_id = interaction.channel_id or 0
    parent: int | None = None
    if isinstance(channel, discord.Thread):
        parent = channel.parent_id
    return Location(
        guild_id=interaction.guild_id,
        channel_id=channel_id,
        parent_channel_id=parent,
        user_id=interaction.user.id,
    )
