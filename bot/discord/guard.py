"""Checks every interaction passes before any command or button uses what it carries.

A client is free to send anything: the guild-only flag a command is registered
with is a hint Discord's own client honours, not a check,
and custom ids and raw option values are text and JSON a modified client
writes. So, in one place, before any lookup or transformation:

- a server-only command that arrives from a DM is refused;
- an option declared as text that carries anything but a string is refused;
- a custom id's number is parsed within SQLite's 64-bit range and a bounded
  length (`parse_id`), so ids beyond 64 bits or thousands of digits are a plain
  refusal rather than an overflow deep in a query.
"""

from __future__ import annotations

from typing import Any, Final

import discord
from discord import app_commands

from bot import wording
from bot.discord.errors import send_error
from bot.errors import UserFacingError
from bot.store.scopes import MAX_ID

#: What a malformed id parses to: no ask, message or user has it (snowflakes are
#: positive), and the button's template still matches it when it is rebuilt.
BAD_ID: Final = 0
_MAX_DIGITS: Final = 19  # len(str(MAX_ID))
_STRING: Final = 3
_SUBCOMMANDS: Final = (1, 2)


class InvalidButton(UserFacingError):
    def __init__(self) -> None:
        super().__init__(wording.BUTTON_INVALID)


def parse_id(text: str) -> int:
    """A custom id's number, or `BAD_ID` when it is not one a reply could carry."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        return BAD_ID
    value = int(text)
    return value if value <= MAX_ID else BAD_ID


def require_id(*ids: int) -> None:
    """Refuse plainly when a button's custom id did not parse (`parse_id`)."""
    if any(i == BAD_ID for i in ids):
        raise InvalidButton()


def _guild_only(command: object) -> bool:
    node: Any = command
    while node is not None:
        if getattr(node, "guild_only", False):
            return True
        node = getattr(node, "parent", None)
    return False


def _check_options(options: object, depth: int = 0) -> None:
    if not isinstance(options, list) or depth > 2:
        raise UserFacingError(wording.OPTIONS_UNREADABLE)
    for option in options:
        if not isinstance(option, dict):
            raise UserFacingError(wording.OPTIONS_UNREADABLE)
        if option.get("type") in _SUBCOMMANDS:
            _check_options(option.get("options") or [], depth + 1)
        elif (option.get("type") == _STRING and "value" in option
              and not isinstance(option["value"], str)):
            name = option.get("name")
            shown = f"`{name}`" if isinstance(name, str) and len(name) <= 32 else wording.AN_OPTION
            raise UserFacingError(wording.option_not_text(shown))


def check_interaction(interaction: discord.Interaction) -> None:
    """Raise `UserFacingError` when a command must not run as sent (see the module)."""
    command = interaction.command
    if interaction.guild_id is None and _guild_only(command):
        name = getattr(command, "qualified_name", "")
        raise UserFacingError(wording.dm_has_no_server(name))
    data: Any = interaction.data or {}
    _check_options(data.get("options") or [])


class GuardedTree(app_commands.CommandTree[Any]):
    """The bot's command tree: `check_interaction` before any command runs."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        try:
            check_interaction(interaction)
        except UserFacingError as exc:
            # discord.py answers nothing for a failed tree check: the refusal is ours.
            await send_error(interaction, exc)
            return False
        return True
