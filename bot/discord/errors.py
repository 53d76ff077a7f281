"""The one place that turns exceptions into what a Discord user sees.

Order of handling (mirrors the slash-command error flow):
1. `UserFacingError` (and its kinds: bad knobs, queue full, prompt too long):
   its message, as written for the user; a settings-write refusal names the
   moment to retry as a Discord timestamp.
2. Permission check failures: which permission is missing, and where.
3. Discord's own transformer/range failures: the option and what was expected.
4. Anything else is a bug: a generic apology to the user, the traceback to the log.
Every answer is ephemeral and mentions nobody; if the interaction was already
answered, it goes out as a follow-up instead of a second response.
"""

from __future__ import annotations

import logging
import time

import discord
from discord import app_commands

from bot import wording
from bot.errors import UserFacingError
from bot.limits import TooManyWrites

log = logging.getLogger(__name__)

GENERIC = wording.GENERIC


class MissingScopePermission(app_commands.CheckFailure):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def message_for(error: BaseException) -> str:
    original = getattr(error, "original", None)
    if isinstance(error, app_commands.CommandInvokeError) and original is not None:
        error = original
    if isinstance(error, TooManyWrites):
        # A Discord timestamp: every member's client shows it in their time zone, counting down.
        return wording.settings_too_fast(int(time.time()) + error.retry_in_s)
    if isinstance(error, UserFacingError):
        return error.message
    if isinstance(error, MissingScopePermission):
        return error.message
    if isinstance(error, app_commands.MissingPermissions):
        perms = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return wording.needs_permission(perms)
    if isinstance(error, app_commands.NoPrivateMessage):
        return wording.SERVER_ONLY
    if isinstance(error, app_commands.TransformerError):
        return wording.unreadable_option(error.value, error.type.name)
    if isinstance(error, app_commands.CheckFailure):
        return wording.NOT_HERE
    log.error("unhandled error in an interaction", exc_info=error)
    return GENERIC


async def send_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer the interaction with the error, as a follow-up if it was already answered."""
    text = wording.warning(message_for(error))
    try:
        if interaction.response.is_done():
            await interaction.followup.send(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
    except discord.HTTPException:
        log.warning("could not deliver an error message to interaction %s", interaction.id)
