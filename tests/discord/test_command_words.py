"""Every command's description and every option's comes from one table (`bot.wording`),
or, for a knob, from its help: the picker never words a command apart from the rest."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from discord import app_commands
from discord.ext import commands

import cogs
from bot import wording
from bot.knobs import KNOB_NAMES
from bot.lab.help import KNOB_HELP


def _cogs() -> list[type[commands.Cog]]:
    return [cog for info in pkgutil.iter_modules(cogs.__path__, "cogs.")
            for cog in vars(importlib.import_module(info.name)).values()
            if isinstance(cog, type) and issubclass(cog, commands.Cog)
            and cog.__module__ == info.name]


def _group(cog: type[commands.Cog]) -> str | None:
    return cog.__cog_group_name__ if issubclass(cog, commands.GroupCog) else None


def _commands() -> dict[str, app_commands.Command[Any, ..., Any]]:
    """Each slash command of every cog, by its name as typed ("knobs set")."""
    return {" ".join(filter(None, [_group(cog), command.name])): command
            for cog in _cogs() for command in cog.__cog_app_commands__
            if isinstance(command, app_commands.Command)}


def test_every_command_and_option_is_worded_in_the_table() -> None:
    found = _commands()
    assert {"ask", "knobs set", "system import", "conversation marker"} <= set(found)
    groups = {cog.__cog_group_name__: cog.__cog_group_description__ for cog in _cogs()
              if issubclass(cog, commands.GroupCog)}
    # Every command and group has its entry, and no entry is left unused.
    assert set(wording.COMMANDS) == set(found) | set(groups)
    assert set(wording.OPTIONS) <= set(found)
    for group, description in groups.items():
        assert description == wording.COMMANDS[group], group
    for name, command in found.items():
        assert command.description == wording.COMMANDS[name], name
        own = wording.OPTIONS.get(name, {})
        assert set(own) <= {p.name for p in command.parameters}, name
        for param in command.parameters:
            if param.name in own:
                assert param.description == own[param.name], (name, param.name)
            else:  # a knob: its help's words, as "What do these do?" says them
                assert param.name in KNOB_NAMES, (name, param.name)
                assert param.description.endswith(KNOB_HELP[param.name].option(85)) or (
                    param.description == KNOB_HELP[param.name].option()), (name, param.name)
