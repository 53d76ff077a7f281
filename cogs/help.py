"""/help: the ways to ask, every command and button, an admin's checklist, and knob help."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.discord.lab import knob_help_view
from cogs._common import NO_MENTIONS


class Help(commands.Cog):
    @app_commands.command(name="help", description=wording.COMMANDS["help"])
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(wording.HELP, ephemeral=True, view=knob_help_view(),
                                                allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Help())
