"""/system: the persona (system prompt) per server, with per-channel overrides."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.asks import persona
from bot.discord.common import location_of
from bot.discord.errors import send_error
from bot.settings.scopes import MAX_SYSTEM_PROMPT_CHARS, Scope
from cogs._common import NO_MENTIONS, ScopeChoice, bot_of, scope_for_write, scope_word

SHOW_LIMIT = 1800


class SystemPromptModal(discord.ui.Modal, title="Edit the system prompt"):
    """Slash-command strings are one line; a modal gives a multi-line editor."""

    def __init__(self, scope: Scope, current: str) -> None:
        super().__init__(timeout=600)
        self.scope = scope
        self.text: discord.ui.TextInput[SystemPromptModal] = discord.ui.TextInput(
            label="System prompt (persona)", style=discord.TextStyle.paragraph,
            default=current[:MAX_SYSTEM_PROMPT_CHARS] or None,
            max_length=MAX_SYSTEM_PROMPT_CHARS, required=True,
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await bot_of(interaction).app.store.set_system_prompt(
            self.scope, self.text.value, actor_id=interaction.user.id
        )
        await interaction.response.send_message(
            f"System prompt saved for {scope_word(self.scope)}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception
    ) -> None:
        await send_error(interaction, error)


@app_commands.guild_only()
class System(commands.GroupCog, group_name="system", group_description="The bot's persona"):
    @app_commands.command(name="show", description="Show the system prompt in effect here.")
    async def show(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or "*(none: the model's own default applies)*"
        if len(body) > SHOW_LIMIT:
            body = body[:SHOW_LIMIT] + "…"
        embed = discord.Embed(title="System prompt", description=body)
        embed.set_footer(text=f"from: {source}")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="set", description="Set the system prompt (one line; see /system edit)."
    )
    @app_commands.describe(text="The persona", scope="This channel (default) or the whole server")
    async def set_(
        self, interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT_CHARS],
        scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        await bot_of(interaction).app.store.set_system_prompt(
            target, text, actor_id=interaction.user.id
        )
        await interaction.response.send_message(
            f"System prompt set for {scope_word(target)}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="edit", description="Edit the system prompt in a multi-line box.")
    @app_commands.describe(scope="This channel (default) or the whole server")
    async def edit(self, interaction: discord.Interaction, scope: ScopeChoice = "channel") -> None:
        target = scope_for_write(interaction, scope)
        overrides = await bot_of(interaction).app.store.scope_overrides(target)
        current = overrides.get("system_prompt") or ""
        await interaction.response.send_modal(SystemPromptModal(target, str(current)))

    @app_commands.command(name="reset", description="Remove the system prompt set here.")
    @app_commands.describe(scope="This channel (default) or the whole server")
    async def reset(self, interaction: discord.Interaction, scope: ScopeChoice = "channel") -> None:
        target = scope_for_write(interaction, scope)
        changed = await bot_of(interaction).app.store.reset_system_prompt(
            target, actor_id=interaction.user.id
        )
        msg = (f"System prompt reset for {scope_word(target)}." if changed
               else f"{scope_word(target).capitalize()} had no system prompt of its own.")
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(System())
