"""Small helpers every Discord module shares: where an interaction happens, no pings, replies."""

from __future__ import annotations

from typing import Any

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


async def reply_to(message: discord.Message, content: str, **kwargs: Any) -> discord.Message:
    """Reply to a member's message without pinging anyone.

    The reference does not fail if the message is gone: a member who deletes
    their question still gets the answer, as a plain message in the channel.
    """
    return await message.channel.send(
        content, reference=message.to_reference(fail_if_not_exists=False),
        mention_author=False, allowed_mentions=NO_MENTIONS, **kwargs,
    )
