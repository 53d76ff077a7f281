"""/knobs (sampling settings per server and channel) and /settings (what applies here).

Arranged by who may use what: `/knobs` changes settings, so its group carries
Manage Channels as its default permission and members are not offered actions
they cannot take (in DMs everyone sees it: DM settings are their own). Reading
the settings in force is `/settings`, open to everyone. The checks in
`scope_for_write` still decide; default permissions only hide commands.
"""

from __future__ import annotations

import contextlib
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.chat.request import persona
from bot.chat.turns import TurnAsk
from bot.discord.common import location_of
from bot.discord.conversation import display_name, place_of
from bot.discord.lab import knob_help_view
from bot.errors import UserFacingError
from bot.knobs import KNOB_NAMES, KNOB_SPECS, PRESETS, display_knob
from cogs._common import (
    DESCRIPTION_LIMIT,
    KNOB_DESCRIPTIONS,
    NO_MENTIONS,
    SCOPE_HELP,
    MaxNewOpt,
    MinNewOpt,
    RepPenaltyOpt,
    ScopeOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    bot_of,
    count_write,
    knob_options,
    scope_for_write,
    scope_word,
)

# Choices built from the knobs model, so a new knob or preset needs no edit here.
KNOB_CHOICES = [app_commands.Choice(name=n, value=n) for n in ("all", *KNOB_NAMES)]
PRESET_CHOICES = [app_commands.Choice(name=n, value=n) for n in PRESETS]
#: An embed's description holds 4,096 characters; a persona is at most 4,000.


async def knobs_embed(interaction: discord.Interaction) -> discord.Embed:
    """Every knob here: its value in words, where it comes from, and its range."""
    eff = await bot_of(interaction).app.resolve(location_of(interaction))
    embed = discord.Embed(title="Sampling settings")
    thread = isinstance(interaction.channel, discord.Thread)
    for name in KNOB_NAMES:
        spec = KNOB_SPECS[name]
        embed.add_field(
            name=name,
            value=f"`{display_knob(name, getattr(eff.knobs, name))}` · "
            f"{wording.source_label(eff.sources.get(name, 'default'), in_thread=thread)}"
            f"\n-# {spec.range_text()}",
            inline=True,
        )
    return embed


# Members who may not change settings see /settings, never the /knobs actions.
@app_commands.default_permissions(manage_channels=True)
class Knobs(
    commands.GroupCog, group_name="knobs", group_description="Change the sampling settings"
):
    @app_commands.command(name="show", description="Every sampling setting here, and its source.")
    async def show(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            embed=await knobs_embed(interaction), ephemeral=True, allowed_mentions=NO_MENTIONS,
            view=knob_help_view(),  # "What do these do?" (bot/discord/lab.py)
        )

    @app_commands.command(name="set", description="Change sampling settings here.")
    @app_commands.describe(
        **KNOB_DESCRIPTIONS,
        stop=r"Stop sequences separated by | (\n for a newline; 'none' clears them)",
        scope=SCOPE_HELP,
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
        scope: ScopeOpt = "channel",
    ) -> None:
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
        target = await scope_for_write(interaction, scope)
        store = bot_of(interaction).app.store
        before = await store.scope_overrides(target)
        notes = await store.set_knobs(target, values, actor_id=interaction.user.id)
        await count_write(interaction, await store.scope_overrides(target) != before)
        shown = ", ".join(f"{k} = `{display_knob(k, v)}`" for k, v in values.items())
        await interaction.response.send_message(
            " ".join([f"Set {shown} for {scope_word(target, interaction)}.", *notes]),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="reset", description="Go back to the inherited value.")
    @app_commands.describe(knob="Which setting (default: all)", scope=SCOPE_HELP)
    @app_commands.choices(knob=KNOB_CHOICES)
    async def reset(
        self, interaction: discord.Interaction, knob: str = "all",
        scope: ScopeOpt = "channel",
    ) -> None:
        target = await scope_for_write(interaction, scope)
        names = None if knob == "all" else [knob]
        done = await bot_of(interaction).app.store.reset_knobs(
            target, names, actor_id=interaction.user.id
        )
        await count_write(interaction, bool(done))  # a reset that found nothing is not a change
        what = "sampling setting" if names is None else knob
        where = scope_word(target, interaction)
        msg = (f"Reset {', '.join(done)} for {where}." if done
               else f"Nothing to reset: no {what} is set for {where} itself.")
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="preset", description="Apply a preset: precise, balanced, creative.")
    @app_commands.describe(name="The preset", scope=SCOPE_HELP)
    @app_commands.choices(name=PRESET_CHOICES)
    async def preset(
        self, interaction: discord.Interaction, name: str,
        scope: ScopeOpt = "channel",
    ) -> None:
        target = await scope_for_write(interaction, scope)
        values = dict(PRESETS[name])
        store = bot_of(interaction).app.store
        before = await store.scope_overrides(target)
        await store.set_knobs(target, values, actor_id=interaction.user.id)
        await count_write(interaction, await store.scope_overrides(target) != before)
        shown = ", ".join(f"{k} = `{display_knob(k, v)}`" for k, v in values.items())
        await interaction.response.send_message(
            f"Applied **{name}** to {scope_word(target, interaction)}: {shown}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


class Settings(commands.Cog):
    @app_commands.command(
        name="settings", description="The persona and sampling settings in effect here."
    )
    async def settings(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or wording.PERSONA_NONE
        thread = isinstance(interaction.channel, discord.Thread)
        # The model answering here, and where that choice comes from.
        choice = bot.app.models.choice(eff)
        model = f"**Model** {choice.describe()}\n"
        intro = f"{model}**Persona** (from {wording.source_label(source, in_thread=thread)})\n"
        extra = await _issue22_lines(interaction, eff.reasoning, choice.name)
        room = DESCRIPTION_LIMIT - len(intro) - len(extra)
        if len(body) > room:
            body = body[: room - 1] + "…"
        embeds: list[Any] = [discord.Embed(title="Settings here",
                                           description=intro + body + extra),
                             await knobs_embed(interaction)]
        await interaction.response.send_message(
            embeds=embeds, ephemeral=True, view=knob_help_view(), allowed_mentions=NO_MENTIONS
        )


async def _issue22_lines(interaction: discord.Interaction, reasoning: bool, model: str) -> str:
    """The reasoning setting and how much of the window (of `model`, the one answering
    here) the conversation uses."""
    app = bot_of(interaction).app
    lines = [f"\n\n**Reasoning** (`<think>` split): {'on' if reasoning else 'off'}"]
    user = interaction.user
    dm = interaction.guild_id is None
    place = await place_of(app.chat, interaction.channel, user.id, dm)
    usage = None
    if place is not None and await app.chat.head(place) is not None:
        with contextlib.suppress(UserFacingError):
            usage = await app.chat.usage(TurnAsk(
                location=location_of(interaction), prompt="?", author_id=user.id,
                author_name=display_name(user), place=place, direct=dm, shared=True,
            ))
    if usage is not None:
        lines.append(f"**Context**: this conversation {usage.usage_text()}"
                     + (f"; {usage.dropped_text()}" if usage.dropped_turns else ""))
    else:  # the window of the model answering here
        context = app.models.context_length(model)
        lines.append(f"**Context window**: {context:,} tokens" if context
                     else wording.CONTEXT_UNKNOWN)
    return "\n".join(lines)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Knobs())
    await bot.add_cog(Settings())
