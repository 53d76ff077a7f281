"""/status: what the bot runs on and how busy it is (Manage Server, in a server only).

Server-only on purpose: the permission it needs is a server's, so in DMs
there is nobody it could be checked against, and it is not offered there.
"""

from __future__ import annotations

import statistics
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.discord.errors import MissingScopePermission
from cogs._common import NO_MENTIONS, bot_of, location_of


class Status(commands.Cog):
    @app_commands.command(name="status", description=wording.COMMANDS["status"])
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def status(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        if not interaction.permissions.manage_guild:
            raise MissingScopePermission(wording.STATUS_NEEDS_MANAGE_SERVER)
        bot = bot_of(interaction)
        models = bot.app.models
        # The model answering here, named as /model list names it (one chosen but not
        # loaded yet says so).
        name = models.choice(await bot.app.resolve(location_of(interaction))).name
        engine = models.loaded(name)
        engines = models.engines()
        rates = list(bot.recent_rates)
        rate = wording.recent_speed(statistics.median(rates), len(rates)) if rates else "–"
        field = wording.STATUS_FIELDS
        embed = discord.Embed(title=wording.STATUS_TITLE)
        named = f"`{name}`" + (wording.DEFAULT_MARK if name == models.default else "")
        embed.add_field(name=field["model"], value=named if engine is not None
                        else wording.not_loaded(name))
        if models.several:  # which models are loaded now (the default first)
            embed.add_field(name=field["loaded"], value=", ".join(
                f"`{loaded}`" for loaded in engines) or wording.NONE)
        if engine is not None:
            embed.add_field(name=field["device"],
                            value=f"{engine.info.device} · {engine.info.compute_type}")
        embed.add_field(name=field["queue"],
                        value=wording.queue_state(models.queue_depth(), models.active()))
        embed.add_field(name=field["uptime"],
                        value=wording.uptime(time.monotonic() - bot.started_at))
        embed.add_field(name=field["speed"], value=rate)
        counts = [f"`{loaded}` {e.tokens_generated:,}" for loaded, e in engines.items()]
        embed.add_field(name=field["tokens"], value=(
            " · ".join(counts) if models.several
            else f"{engine.tokens_generated if engine is not None else 0:,}") or "0")
        embed.add_field(name=field["content"], value=bot.content_mode.status_line(),
                        inline=False)
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Status())
