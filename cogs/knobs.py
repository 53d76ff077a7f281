"""/knobs (sampling settings per server and channel) and /settings (what applies here).

Arranged by who may use what: `/knobs` changes settings, so its group carries
Manage Channels as its default permission and members are not offered actions
they cannot take (in DMs everyone sees it: DM settings are their own). Reading
the settings in force is `/settings`, open to everyone. The checks in
`scope_for_write` still decide; default permissions only hide commands.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.chat.request import persona
from bot.chat.service import PROBE
from bot.chat.turns import TurnAsk
from bot.discord.common import location_of
from bot.discord.conversation import display_name, place_of
from bot.discord.lab import knob_help_view
from bot.knobs import KNOB_NAMES, KNOB_SPECS, PRESETS, display_knob
from cogs._common import (
    DESCRIPTION_LIMIT,
    KNOB_DESCRIPTIONS,
    NO_MENTIONS,
    MaxNewOpt,
    MinNewOpt,
    RepPenaltyOpt,
    ScopeOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    bot_of,
    knob_options,
    scope_for_write,
    scope_word,
    settings_of,
)

# Choices built from the knobs model, so a new knob or preset needs no edit here.
KNOB_CHOICES = [app_commands.Choice(name=n, value=n) for n in ("all", *KNOB_NAMES)]
PRESET_CHOICES = [app_commands.Choice(name=n, value=n) for n in PRESETS]
#: An embed's description holds 4,096 characters; a persona is at most 4,000.


async def knobs_embed(interaction: discord.Interaction) -> discord.Embed:
    """Every knob here: its value in words, where it comes from, and its range."""
    eff = await bot_of(interaction).app.resolve(location_of(interaction))
    embed = discord.Embed(title=wording.KNOBS_TITLE)
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
    commands.GroupCog, group_name="knobs", group_description=wording.COMMANDS["knobs"]
):
    @app_commands.command(name="show", description=wording.COMMANDS["knobs show"])
    async def show(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            embed=await knobs_embed(interaction), ephemeral=True, allowed_mentions=NO_MENTIONS,
            view=knob_help_view(),  # "What do these do?" (bot/discord/lab.py)
        )

    @app_commands.command(name="set", description=wording.COMMANDS["knobs set"])
    @app_commands.describe(**KNOB_DESCRIPTIONS, **wording.OPTIONS["knobs set"])
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
                wording.PICK_A_SETTING, ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        target = scope_for_write(interaction, scope)
        change = await settings_of(interaction).set_knobs(target, values,
                                                          actor_id=interaction.user.id)
        shown = {k: display_knob(k, v) for k, v in values.items()}
        await interaction.response.send_message(
            wording.knobs_set(shown, scope_word(target, interaction), change.notes),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="reset", description=wording.COMMANDS["knobs reset"])
    @app_commands.describe(**wording.OPTIONS["knobs reset"])
    @app_commands.choices(knob=KNOB_CHOICES)
    async def reset(
        self, interaction: discord.Interaction, knob: str = "all",
        scope: ScopeOpt = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        names = None if knob == "all" else [knob]
        done = (await settings_of(interaction).reset_knobs(
            target, names, actor_id=interaction.user.id)).names
        where = scope_word(target, interaction)
        msg = (wording.knobs_reset(done, where) if done
               else wording.nothing_to_reset(None if names is None else knob, where))
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="preset", description=wording.COMMANDS["knobs preset"])
    @app_commands.describe(**wording.OPTIONS["knobs preset"])
    @app_commands.choices(name=PRESET_CHOICES)
    async def preset(
        self, interaction: discord.Interaction, name: str,
        scope: ScopeOpt = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        values = dict(PRESETS[name])
        await settings_of(interaction).set_knobs(target, values, actor_id=interaction.user.id)
        shown = {k: display_knob(k, v) for k, v in values.items()}
        await interaction.response.send_message(
            wording.preset_applied(name, shown, scope_word(target, interaction)), ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


class Settings(commands.Cog):
    @app_commands.command(name="settings", description=wording.COMMANDS["settings"])
    async def settings(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or wording.PERSONA_NONE
        thread = isinstance(interaction.channel, discord.Thread)
        # The model answering here, and where that choice comes from.
        choice = bot.app.models.choice(eff)
        intro = wording.settings_intro(choice.describe(),
                                       wording.source_label(source, in_thread=thread))
        extra = await _reasoning_and_context(interaction, eff.reasoning, choice.name)
        room = DESCRIPTION_LIMIT - len(intro) - len(extra)
        if len(body) > room:
            body = body[: room - 1] + "…"
        embeds: list[Any] = [discord.Embed(title=wording.SETTINGS_TITLE,
                                           description=intro + body + extra),
                             await knobs_embed(interaction)]
        await interaction.response.send_message(
            embeds=embeds, ephemeral=True, view=knob_help_view(), allowed_mentions=NO_MENTIONS
        )


async def _reasoning_and_context(interaction: discord.Interaction, reasoning: bool,
                                 model: str) -> str:
    """The reasoning setting and how much of the window (of `model`, the one answering
    here) the conversation uses."""
    app = bot_of(interaction).app
    lines = ["\n\n" + wording.reasoning_setting(reasoning)]
    user = interaction.user
    dm = interaction.guild_id is None
    usage = await app.chat.usage_here(TurnAsk(
        location=location_of(interaction), prompt=PROBE, author_id=user.id,
        author_name=display_name(user), direct=dm, shared=True,
        place=await place_of(app.chat, interaction.channel, user.id, dm),
    ))
    if usage is not None:
        lines.append(wording.context_in_use(
            usage.usage_text(), usage.dropped_text() if usage.dropped_turns else None))
    else:  # the window of the model answering here
        context = app.models.context_length(model)
        lines.append(wording.context_window(context) if context else wording.CONTEXT_UNKNOWN)
    return "\n".join(lines)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Knobs())
    await bot.add_cog(Settings())
