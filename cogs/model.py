"""/model: which model answers, per server and channel.

`/model list` is everyone's (what is served, how big, its window, loaded or not,
where it is chosen); `set` and `reset` change a setting, so they take the same
checks as /system and /knobs (`scope_for_write`: Manage Channels for a channel
or thread, Manage Server for the server, a DM's own; the write limiter). A model
that does not fit in memory beside the default one unloads it whenever it loads,
so choosing it takes Manage Server anywhere and is refused in DMs (the host also
rate-limits such swaps per server: bot/hosting/host.py). The
group has no default permission because `list` is for everyone; the checks
decide. The choice is a `model` setting of the scope, audited like the others.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.discord.common import location_of
from bot.hosting.host import model_lines
from bot.store.scopes import Scope, ScopeKind
from cogs._common import (
    DESCRIPTION_LIMIT,
    NO_MENTIONS,
    ScopeChoice,
    bot_of,
    scope_for_write,
    scope_word,
    settings_of,
)


def _where(scope: Scope) -> str:
    if scope.kind is ScopeKind.SERVER:
        return wording.place_word(scope.kind.value)
    return f"<#{scope.id}>"  # a channel mention pings nobody, and names threads too


class Model(commands.GroupCog, group_name="model",
            group_description=wording.COMMANDS["model"]):
    @app_commands.command(name="list", description=wording.COMMANDS["model list"])
    async def list_(self, interaction: discord.Interaction) -> None:
        app = bot_of(interaction).app
        in_use: dict[str, list[str]] = {}
        if interaction.guild_id is not None:
            for name, scope in await app.scope_settings.model_choices(interaction.guild_id):
                in_use.setdefault(name, []).append(_where(scope))
        choice = app.models.choice(await app.resolve(location_of(interaction)))
        body = "\n".join(f"• {line}" for line in model_lines(app.models, in_use))
        body += wording.model_here(choice.describe())
        if len(body) > DESCRIPTION_LIMIT:
            body = body[: DESCRIPTION_LIMIT - 1] + "…"
        await interaction.response.send_message(
            embed=discord.Embed(title=wording.MODELS_TITLE, description=body), ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="set", description=wording.COMMANDS["model set"])
    @app_commands.describe(**wording.OPTIONS["model set"])
    async def set_(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64],
        scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        models = bot_of(interaction).app.models
        change = await settings_of(interaction).set_model(
            target, name, actor_id=interaction.user.id,
            manage_server=interaction.permissions.manage_guild)
        note = (wording.model_swap_note(models.default, models.swap_cooldown_s)
                if change.swaps else "")
        await interaction.response.send_message(
            wording.model_chosen(change.value, scope_word(target)) + note, ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @set_.autocomplete("name")
    async def _model_names(self, interaction: discord.Interaction,
                           current: str) -> list[app_commands.Choice[str]]:
        """The models served, as /model list names them."""
        typed = current.strip().lower()
        return [app_commands.Choice(name=name, value=name)
                for name in bot_of(interaction).app.models.names if typed in name.lower()][:25]

    @app_commands.command(name="reset", description=wording.COMMANDS["model reset"])
    @app_commands.describe(**wording.OPTIONS["model reset"])
    async def reset(self, interaction: discord.Interaction, scope: ScopeChoice = "channel") -> None:
        target = scope_for_write(interaction, scope)
        change = await settings_of(interaction).reset_model(target, actor_id=interaction.user.id)
        msg = wording.model_reset(scope_word(target), changed=change.changed)
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Model())
