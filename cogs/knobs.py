"""/knobs: sampling settings per server and per channel."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.common import location_of
from bot.knobs import KNOB_NAMES, KNOB_SPECS, PRESETS, format_knob
from cogs._common import (
    NO_MENTIONS,
    MaxNewOpt,
    MinNewOpt,
    RepPenaltyOpt,
    ScopeChoice,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    bot_of,
    knob_options,
    scope_for_write,
    scope_word,
)

# Choices built from the knobs model, so a new knob or preset needs no edit here.
KNOB_CHOICES = [app_commands.Choice(name=n, value=n) for n in ("all", *KNOB_NAMES)]
PRESET_CHOICES = [app_commands.Choice(name=n, value=n) for n in PRESETS]


class Knobs(commands.GroupCog, group_name="knobs", group_description="Sampling settings"):
    @app_commands.command(name="show", description="Every sampling setting here, and its source.")
    async def show(self, interaction: discord.Interaction) -> None:
        eff = await bot_of(interaction).app.resolve(location_of(interaction))
        embed = discord.Embed(title="Sampling settings")
        for name in KNOB_NAMES:
            spec = KNOB_SPECS[name]
            embed.add_field(
                name=name,
                value=f"`{format_knob(name, getattr(eff.knobs, name))}` · "
                f"{eff.sources.get(name, 'default')}\n-# {spec.range_text()}",
                inline=True,
            )
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="set", description="Change sampling settings here.")
    @app_commands.describe(
        scope="This channel (default) or the whole server",
        stop=r"Stop sequences separated by | (\n for a newline; 'none' clears)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        temperature: TemperatureOpt | None = None,
        top_p: TopPOpt | None = None,
        top_k: TopKOpt | None = None,
        max_new_tokens: MaxNewOpt | None = None,
        min_new_tokens: MinNewOpt | None = None,
        stop: str | None = None,
        repetition_penalty: RepPenaltyOpt | None = None,
        scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        values = knob_options(
            stop, temperature=temperature, top_p=top_p, top_k=top_k,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
        )
        if not values:
            await interaction.response.send_message(
                "Pick at least one setting to change.", ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        await bot_of(interaction).app.store.set_knobs(target, values, actor_id=interaction.user.id)
        shown = ", ".join(f"{k} = `{format_knob(k, v)}`" for k, v in values.items())
        await interaction.response.send_message(
            f"Set {shown} for {scope_word(target)}.", ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="reset", description="Go back to the inherited value.")
    @app_commands.describe(knob="Which setting (default: all)", scope="This channel or the server")
    @app_commands.choices(knob=KNOB_CHOICES)
    async def reset(
        self, interaction: discord.Interaction, knob: str = "all",
        scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        names = None if knob == "all" else [knob]
        done = await bot_of(interaction).app.store.reset_knobs(
            target, names, actor_id=interaction.user.id
        )
        msg = (f"Reset {', '.join(done)} for {scope_word(target)}." if done
               else f"Nothing to reset: {scope_word(target)} sets no such value.")
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="preset", description="Apply a preset: precise, balanced, creative.")
    @app_commands.describe(name="The preset", scope="This channel (default) or the whole server")
    @app_commands.choices(name=PRESET_CHOICES)
    async def preset(
        self, interaction: discord.Interaction, name: str,
        scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        values = dict(PRESETS[name])
        await bot_of(interaction).app.store.set_knobs(target, values, actor_id=interaction.user.id)
        shown = ", ".join(f"{k} = `{format_knob(k, v)}`" for k, v in values.items())
        await interaction.response.send_message(
            f"Applied **{name}** to {scope_word(target)}: {shown}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Knobs())


