"""Helpers the cogs share: option types from the knobs model, scope permissions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands

from bot import wording
from bot.discord.common import NO_MENTIONS, location_of
from bot.discord.errors import MissingScopePermission
from bot.errors import UserFacingError
from bot.knobs import KNOB_SPECS, parse_knob_text
from bot.lab.help import KNOB_HELP
from bot.limits import TooManyWrites
from bot.store.scopes import Scope

if TYPE_CHECKING:
    from bot.discord.client import LlamaBot

    TemperatureOpt = float
    TopPOpt = float
    TopKOpt = int
    MaxNewOpt = int
    MinNewOpt = int
    RepPenaltyOpt = float
else:
    # Option ranges come from the knobs model, the single source of truth.
    def _range(name: str, kind: type) -> object:
        spec = KNOB_SPECS[name]
        return app_commands.Range[kind, kind(spec.minimum), kind(spec.maximum)]

    TemperatureOpt = _range("temperature", float)
    TopPOpt = _range("top_p", float)
    TopKOpt = _range("top_k", int)
    MaxNewOpt = _range("max_new_tokens", int)
    MinNewOpt = _range("min_new_tokens", int)
    RepPenaltyOpt = _range("repetition_penalty", float)

ScopeChoice = Literal["channel", "server"]

if TYPE_CHECKING:
    ScopeOpt = ScopeChoice
else:
    class _ScopeOption(app_commands.Transformer):
        """The `scope:` option, its choices named so they read right in a thread too
        ("This channel or thread", "Whole server"); values unchanged."""

        @property
        def type(self) -> discord.AppCommandOptionType:
            return discord.AppCommandOptionType.string

        @property
        def choices(self) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=name, value=value)
                    for value, name in wording.SCOPE_CHOICES.items()]

        async def transform(self, interaction: discord.Interaction, value: Any) -> str:
            if value not in wording.SCOPE_CHOICES:
                raise UserFacingError(wording.PICK_A_SCOPE)
            return str(value)

    ScopeOpt = app_commands.Transform[str, _ScopeOption]

#: The `scope:` option's description.
SCOPE_HELP = wording.SCOPE_OPTION
#: Discord's limit on an embed's description.
DESCRIPTION_LIMIT = 4096

__all__ = ["NO_MENTIONS", "location_of"]


#: Discord option descriptions (at most 100 characters) from the knobs model, so the
#: picker shows what each knob does and its range instead of "…". Not `stop`: how
#: to type several in one line is worded per command.
#: Every knob option's description, from the same help as "What do these do?".
KNOB_DESCRIPTIONS: dict[str, str] = {
    name: KNOB_HELP[name].option() for name in KNOB_SPECS if name != "stop"
}

def knob_options(stop: str | None, **numbers: Any) -> dict[str, Any]:
    """The knob options a member actually filled in, with stop sequences parsed."""
    values: dict[str, Any] = {k: v for k, v in numbers.items() if v is not None}
    if stop is not None:
        values["stop"] = parse_knob_text("stop", stop)
    return values


def bot_of(interaction: discord.Interaction) -> LlamaBot:
    return interaction.client  # type: ignore[return-value]


async def take_write_slot(interaction: discord.Interaction) -> None:
    """Refuse a settings change when this member has none left (`BOT_SETTINGS_WRITE_LIMIT`).

    Only checks: `count_write` counts, once the change is known to change something.
    The refusal names the moment to retry as a Discord timestamp, which every
    member's client shows in their own time zone and counts down.
    """
    try:
        await bot_of(interaction).app.write_limiter.check(interaction.user.id)
    except TooManyWrites as exc:
        raise UserFacingError(
            wording.settings_too_fast(int(time.time()) + exc.retry_in_s)
        ) from None


async def count_write(interaction: discord.Interaction, changed: bool = True) -> None:
    """Count a settings change that changed something."""
    if changed:
        await bot_of(interaction).app.write_limiter.record(interaction.user.id)


async def scope_for_write(
    interaction: discord.Interaction, scope: ScopeChoice, *, count: bool = True
) -> Scope:
    """The scope a settings change applies to, after checking the member may change it.

    `default_permissions` only hides commands in clients; this is the check
    that counts, run again when a modal is submitted. `count` checks the member's
    settings-write limit (`count_write` counts a change once it changed
    something). Ids come from the interaction,
    never from user text. A thread's settings need Manage Channels like a
    channel's (Manage Threads alone is not enough), as the README says and as
    the commands' default permissions show them.
    """
    where = _scope_for_write(interaction, scope)
    if count:
        await take_write_slot(interaction)
    return where


def _scope_for_write(interaction: discord.Interaction, scope: ScopeChoice) -> Scope:
    guild_id = interaction.guild_id
    if guild_id is None:
        if scope == "server":
            raise MissingScopePermission(wording.DM_SETTINGS_ARE_YOURS)
        return Scope.dm(interaction.user.id)
    perms = interaction.permissions
    if scope == "server":
        if not perms.manage_guild:
            raise MissingScopePermission(wording.NEEDS_MANAGE_SERVER)
        return Scope.server(guild_id)
    loc = location_of(interaction)
    in_thread = loc.parent_channel_id is not None
    if not perms.manage_channels:
        raise MissingScopePermission(wording.needs_manage_channels(in_thread=in_thread))
    return Scope.channel(loc.channel_id, guild_id)


def scope_word(scope: Scope, interaction: discord.Interaction | None = None) -> str:
    """The scope as the member reads it: "this thread" when a channel scope is a thread."""
    in_thread = interaction is not None and isinstance(interaction.channel, discord.Thread)
    return wording.place_word(scope.kind.value, in_thread=in_thread)
