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
from bot.discord.errors import MissingScopePermission
from bot.hosting.host import model_lines
from bot.store.scopes import Scope, ScopeKind
from cogs._common import (
    DESCRIPTION_LIMIT,
    NO_MENTIONS,
    ScopeChoice,
    bot_of,
    scope_for_write,
    scope_word,
)

#: An embed's description holds 4,096 characters.
SCOPE_HELP = "This channel (default) or the whole server"


def _where(scope: Scope) -> str:
    if scope.kind is ScopeKind.SERVER:
        return "this server"
    return f"<#{scope.id}>"  # a channel mention pings nobody, and names threads too


class Model(commands.GroupCog, group_name="model", group_description="Which model answers here"):
    @app_commands.command(name="list", description="The models served, and where each is used.")
    async def list_(self, interaction: discord.Interaction) -> None:
        app = bot_of(interaction).app
        in_use: dict[str, list[str]] = {}
        if interaction.guild_id is not None:
            for name, scope in await app.store.model_choices(interaction.guild_id):
                in_use.setdefault(name, []).append(_where(scope))
        choice = app.models.choice(await app.resolve(location_of(interaction)))
        body = "\n".join(f"• {line}" for line in model_lines(app.models, in_use))
        body += f"\n\n**Here:** {choice.describe()}"
        if len(body) > DESCRIPTION_LIMIT:
            body = body[: DESCRIPTION_LIMIT - 1] + "…"
        await interaction.response.send_message(
            embed=discord.Embed(title="Models", description=body), ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="set", description="Choose the model that answers here.")
    @app_commands.describe(name="A model from /model list", scope=SCOPE_HELP)
    async def set_(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64],
        scope: ScopeChoice = "channel",
    ) -> None:
        target = await scope_for_write(interaction, scope)
        app = bot_of(interaction).app
        wanted = name.strip().lower()
        swaps = wanted in app.models.names and app.models.swaps_default(wanted)
        if swaps and interaction.guild_id is None:
            raise MissingScopePermission(wording.MODEL_SWAP_NOT_IN_DMS)
        if swaps and not interaction.permissions.manage_guild:
            raise MissingScopePermission(wording.MODEL_SWAP_PERMISSION)
        chosen = await app.store.set_model(
            target, name, actor_id=interaction.user.id, known=app.models.names
        )
        note = (f"\nNote: {wording.model_swaps(app.models.default, app.models.swap_cooldown_s)}."
                if swaps else "")
        await interaction.response.send_message(
            wording.model_chosen(chosen, scope_word(target)) + note, ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @set_.autocomplete("name")
    async def _model_names(self, interaction: discord.Interaction,
                           current: str) -> list[app_commands.Choice[str]]:
        """The models served, as /model list names them."""
        typed = current.strip().lower()
        return [app_commands.Choice(name=name, value=name)
                for name in bot_of(interaction).app.models.names if typed in name.lower()][:25]

    @app_commands.command(name="reset", description="Remove the model chosen here.")
    @app_commands.describe(scope=SCOPE_HELP)
    async def reset(self, interaction: discord.Interaction, scope: ScopeChoice = "channel") -> None:
        target = await scope_for_write(interaction, scope)
        changed = await bot_of(interaction).app.store.reset_model(
            target, actor_id=interaction.user.id
        )
        msg = wording.model_reset(scope_word(target), changed=changed)
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Model())
