"""/system: the persona (system prompt) per server, with per-channel overrides.

Every subcommand but `show` changes something, so the group carries Manage
Channels as its default permission (members read the persona with /settings);
`scope_for_write` is still the check that decides, at the command and again
when the edit box is submitted.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.asks import persona
from bot.discord.common import location_of
from bot.discord.errors import send_error
from bot.settings.scopes import MAX_SYSTEM_PROMPT_CHARS, Scope
from cogs._common import NO_MENTIONS, ScopeChoice, bot_of, scope_for_write, scope_word

#: An embed's description holds 4,096 characters (a persona is at most 4,000).
SHOW_LIMIT = 4096
#: Discord's limit for a text input's label.
LABEL_LIMIT = 45


class SystemPromptModal(discord.ui.Modal, title="Edit the system prompt"):
    """Slash-command strings are one line; a modal gives a multi-line editor.

    It opens with the persona in effect (inherited ones included) and its label
    says where that comes from. Submitting re-checks the member's permission:
    a modal stays open for minutes, long enough for a role to be taken away.
    """

    def __init__(self, scope: Scope, choice: ScopeChoice, current: str, source: str) -> None:
        super().__init__(timeout=600)
        self.scope = scope
        self.choice: ScopeChoice = choice
        where = scope_word(scope)
        label = ("Persona for " + where if source == where
                 else f"Persona (now from: {source})")
        self.text: discord.ui.TextInput[SystemPromptModal] = discord.ui.TextInput(
            label=label[:LABEL_LIMIT], style=discord.TextStyle.paragraph,
            default=current[:MAX_SYSTEM_PROMPT_CHARS] or None,
            placeholder=f"Saving sets the persona for {where}."[:100],
            max_length=MAX_SYSTEM_PROMPT_CHARS, required=True,
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        target = scope_for_write(interaction, self.choice, count=False)
        if target != self.scope:
            raise app_commands.CheckFailure("This edit box was opened somewhere else.")
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


def _source_words(source: str) -> str:
    return {"default": "the bot's default", "server": "this server", "channel": "this channel",
            "thread": "this thread", "dm": "our DMs"}.get(source, source)


@app_commands.guild_only()
@app_commands.default_permissions(manage_channels=True)
class System(commands.GroupCog, group_name="system", group_description="The bot's persona"):
    @app_commands.command(name="show", description="Show the system prompt in effect here.")
    async def show(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or "*(none: the model's own default applies)*"
        if len(body) > SHOW_LIMIT:
            body = body[: SHOW_LIMIT - 1] + "…"
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
        bot = bot_of(interaction)
        overrides = await bot.app.store.scope_overrides(target)
        own = overrides.get("system_prompt")
        if own is not None:
            current, source = str(own), scope_word(target)
        else:
            # Nothing set here yet: start from what applies here now, and say whose it is.
            eff = await bot.app.resolve(location_of(interaction))
            if target.kind.value == "server":
                # A server persona is inherited by channels, never from them.
                text, where = (bot.app.settings.system_prompt or None), "default"
            else:
                text, where = persona(eff, bot.app.settings.system_prompt)
            current, source = text or "", _source_words(where)
        await interaction.response.send_modal(SystemPromptModal(target, scope, current, source))

    @app_commands.command(name="reset", description="Remove the system prompt set here.")
    @app_commands.describe(scope="This channel (default) or the whole server")
    async def reset(self, interaction: discord.Interaction, scope: ScopeChoice = "channel") -> None:
        target = scope_for_write(interaction, scope)
        changed = await bot_of(interaction).app.store.reset_system_prompt(
            target, actor_id=interaction.user.id
        )
        msg = (f"System prompt reset for {scope_word(target)}." if changed
               else f"{scope_word(target).capitalize()} has no system prompt of its own.")
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(System())
