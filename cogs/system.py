"""/system: the persona per server, with per-channel overrides, and your own in DMs.

Every subcommand but `show` changes something, so the group carries Manage
Channels as its default permission (members read the persona with /settings);
`scope_for_write` is still the check that decides, at the command and again
when the edit box is submitted. In DMs the persona is the member's own.
Members read "persona" everywhere; only the command is /system.
"""

from __future__ import annotations

import re

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.chat.characters import MAX_PNG_BYTES, read_card
from bot.chat.request import persona
from bot.chat.speakers import fill_user
from bot.discord.attachments import read_attachment
from bot.discord.common import location_of
from bot.discord.errors import MissingScopePermission
from bot.discord.guard import parse_id
from bot.discord.modals import ModalRouter, send_stateless
from bot.errors import UserFacingError
from bot.store.personas import MAX_NAME_CHARS
from bot.store.scopes import MAX_SYSTEM_PROMPT_CHARS, Scope
from cogs._common import (
    NO_MENTIONS,
    SCOPE_HELP,
    ScopeChoice,
    ScopeOpt,
    bot_of,
    count_write,
    scope_for_write,
    scope_word,
    take_write_slot,
)

#: An embed's description holds 4,096 characters (a persona is at most 4,000).
SHOW_LIMIT = 4096
#: Discord's limit for a text input's label.
LABEL_LIMIT = 45


#: The edit box's custom id: its scope choice and the scope's id, so its submission
#: is routed after a restart too (see bot/discord/modals.py).
PERSONA_MODAL_ID = "llm:persona:{choice}:{scope_id}"
PERSONA_MODAL_PATTERN = r"llm:persona:(?P<choice>channel|server):(?P<scope>[0-9]+)"


class SystemPromptModal(discord.ui.Modal, title="Edit the persona"):
    """Slash-command strings are one line; a modal gives a multi-line editor.

    It opens with the persona in effect (inherited ones included) and its label
    says where that comes from. Submitting re-checks the member's permission:
    a modal stays open for minutes, long enough for a role to be taken away.
    """

    def __init__(self, scope: Scope, choice: ScopeChoice, current: str, source: str,
                 where: str | None = None) -> None:
        super().__init__(timeout=600, custom_id=PERSONA_MODAL_ID.format(
            choice=choice, scope_id=scope.id))
        self.scope = scope
        self.choice: ScopeChoice = choice
        where = where or scope_word(scope)
        label = ("Persona for " + where if source == where
                 else f"Persona (now from: {source})")
        self.text: discord.ui.TextInput[SystemPromptModal] = discord.ui.TextInput(
            label=label[:LABEL_LIMIT], style=discord.TextStyle.paragraph,
            default=current[:MAX_SYSTEM_PROMPT_CHARS] or None,
            placeholder=f"Saving sets the persona for {where}."[:100],
            max_length=MAX_SYSTEM_PROMPT_CHARS, required=True, custom_id="text",
        )
        self.add_item(self.text)



async def submit_persona(
    interaction: discord.Interaction, match: re.Match[str], values: dict[str, str]
) -> None:
    """The edit box was submitted (now or after a restart): check again, then save.

    The member may have lost the permission while the box was open, and the
    box may come from another channel than the one it is submitted in.
    """
    choice: ScopeChoice = "server" if match["choice"] == "server" else "channel"
    target = await scope_for_write(interaction, choice)
    if target.id != parse_id(match["scope"]):
        raise app_commands.CheckFailure("This edit box was opened somewhere else.")
    await save_persona(interaction, target, values.get("text", ""))


async def save_persona(interaction: discord.Interaction, target: Scope, text: str) -> None:
    """The edit box's text becomes the persona at `target` (counted only if it changed).

    Shared by the live modal and by the route that answers a box submitted after
    a restart, which has no modal object left (bot/discord/modals.py).
    """
    store = bot_of(interaction).app.store
    before = (await store.scope_overrides(target)).get("system_prompt")
    await store.set_system_prompt(target, text, actor_id=interaction.user.id)
    now = (await store.scope_overrides(target)).get("system_prompt")
    await count_write(interaction, now != before)
    await interaction.response.send_message(
        wording.persona_saved(scope_word(target, interaction)), ephemeral=True,
        allowed_mentions=NO_MENTIONS,
    )


def _source_words(source: str, in_thread: bool = False) -> str:
    return wording.source_label(source, in_thread=in_thread)


def _in_thread(interaction: discord.Interaction) -> bool:
    return isinstance(interaction.channel, discord.Thread)


@app_commands.default_permissions(manage_channels=True)
class System(commands.GroupCog, group_name="system", group_description="The bot's persona"):
    @app_commands.command(name="show", description="Show the persona in effect here.")
    async def show(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or wording.PERSONA_NONE
        if len(body) > SHOW_LIMIT:
            body = body[: SHOW_LIMIT - 1] + "…"
        embed = discord.Embed(title="Persona", description=body)
        embed.set_footer(text=f"from: {_source_words(source, _in_thread(interaction))}")
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="set", description="Set the persona (one line; see /system edit)."
    )
    @app_commands.describe(text="The persona", scope=SCOPE_HELP)
    async def set_(
        self, interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT_CHARS],
        scope: ScopeOpt = "channel",
    ) -> None:
        target = await scope_for_write(interaction, scope)
        store = bot_of(interaction).app.store
        before = (await store.scope_overrides(target)).get("system_prompt")
        await store.set_system_prompt(target, text, actor_id=interaction.user.id)
        now = (await store.scope_overrides(target)).get("system_prompt")
        await count_write(interaction, now != before)
        await interaction.response.send_message(
            wording.persona_set(scope_word(target, interaction)), ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="edit", description="Edit the persona in a multi-line box.")
    @app_commands.describe(scope=SCOPE_HELP)
    async def edit(self, interaction: discord.Interaction, scope: ScopeOpt = "channel") -> None:
        # Checked, not counted: opening the box changes nothing.
        target = await scope_for_write(interaction, scope)
        choice: ScopeChoice = "server" if scope == "server" else "channel"
        bot = bot_of(interaction)
        overrides = await bot.app.store.scope_overrides(target)
        own = overrides.get("system_prompt")
        where = scope_word(target, interaction)
        if own is not None:
            current, source = str(own), where
        else:
            # Nothing set here yet: start from what applies here now, and say whose it is.
            eff = await bot.app.resolve(location_of(interaction))
            if target.kind.value == "server":
                # A server persona is inherited by channels, never from them.
                text, src = (bot.app.settings.system_prompt or None), "default"
            else:
                text, src = persona(eff, bot.app.settings.system_prompt)
            current, source = text or "", _source_words(src, _in_thread(interaction))
        await send_stateless(interaction, SystemPromptModal(target, choice, current, source, where))

    @app_commands.command(name="reset", description="Remove the persona set here.")
    @app_commands.describe(scope=SCOPE_HELP)
    async def reset(self, interaction: discord.Interaction, scope: ScopeOpt = "channel") -> None:
        target = await scope_for_write(interaction, scope)
        changed = await bot_of(interaction).app.store.reset_system_prompt(
            target, actor_id=interaction.user.id
        )
        await count_write(interaction, changed)  # a reset that found nothing is not a change
        where = scope_word(target, interaction)
        msg = wording.persona_reset(where) if changed else wording.persona_not_set(where)
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # --- character cards, named personas, the reasoning setting -------------
    # The rules live in the core (bot.chat.characters, bot.store.personas); these
    # subcommands only fetch the attachment, pick the scope and say what happened.

    @app_commands.command(name="import", description="Make a persona from a character card.")
    @app_commands.describe(
        card="A character card: V2/V3 JSON, or a PNG with the card inside",
        scope="This channel (default) or the whole server",
        greeting="Also post the card's greeting here",
    )
    async def import_(
        self, interaction: discord.Interaction, card: discord.Attachment,
        scope: ScopeChoice = "channel", greeting: bool = False,
    ) -> None:
        target = await scope_for_write(interaction, scope)
        app = bot_of(interaction).app
        data = await read_attachment(card, MAX_PNG_BYTES)
        parsed = await read_card(data, filename=card.filename)
        may_save = _may_name_personas(interaction)
        saved_as, not_saved = await app.chat.import_card(
            target, parsed, guild_id=interaction.guild_id if may_save else None,
            actor_id=interaction.user.id)
        await count_write(interaction)
        saved_note = ""
        if interaction.guild_id is not None and not may_save:
            saved_note = f" ({wording.IMPORT_NOT_SAVED})"
        elif saved_as is not None:
            saved_note = f" Saved as `{saved_as}` (`/system load`)."
            if saved_as != parsed.name[:MAX_NAME_CHARS]:
                saved_note += wording.kept_existing(parsed.name[:MAX_NAME_CHARS])
        elif not_saved is not None:
            saved_note = f" (Not saved by name: {not_saved})"
        lines = [f"Imported **{discord.utils.escape_markdown(parsed.name)}** as the persona "
                 f"for {scope_word(target)}.{saved_note}"]
        if (notice := parsed.notice()) is not None:
            lines.append(notice)
        if parsed.ignored:
            lines.append(wording.card_ignored(parsed.ignored))
        await interaction.response.send_message("\n".join(lines), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
        if greeting and parsed.greeting:
            await _post_greeting(interaction, parsed.greeting)

    @app_commands.command(name="save", description="Save the persona in effect here by name.")
    @app_commands.describe(name="1-32 characters", knobs="Bundle this channel's own knobs too")
    async def save(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS], knobs: bool = False,
    ) -> None:
        guild_id = await _named_personas_writer(interaction)
        app = bot_of(interaction).app
        saved, replaced = await app.chat.save_persona(
            location_of(interaction), guild_id, name, actor_id=interaction.user.id,
            with_knobs=knobs)
        await count_write(interaction)
        what = "Replaced" if replaced else "Saved"
        extra = f" with {wording.plural(len(saved.knobs), 'knob')}" if saved.knobs else ""
        await interaction.response.send_message(
            f"{what} the persona `{saved.name}`{extra}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="delete", description="Delete a persona saved on this server.")
    @app_commands.describe(name="A saved persona (see /system list)")
    async def delete(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
    ) -> None:
        guild_id = await _named_personas_writer(interaction)
        deleted = await bot_of(interaction).app.personas.remove(guild_id, name)
        await count_write(interaction, deleted is not None)
        msg = (wording.persona_not_saved(discord.utils.escape_markdown(" ".join(name.split())))
               if deleted is None else wording.persona_deleted(deleted))
        await interaction.response.send_message(msg, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="load", description="Use a saved persona here.")
    @app_commands.describe(name="A saved persona (see /system list)",
                           scope="This channel (default) or the whole server",
                           greeting="Also post its greeting here, if it has one")
    async def load(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
        scope: ScopeChoice = "channel", greeting: bool = False,
    ) -> None:
        guild_id = _server_of(interaction)
        target = await scope_for_write(interaction, scope)
        app = bot_of(interaction).app
        saved, notes = await app.chat.load_persona(target, guild_id, name,
                                                   actor_id=interaction.user.id)
        await count_write(interaction)
        msg = f"Loaded `{saved.name}` for {scope_word(target)}."
        if saved.knobs:
            msg += " Its knobs: " + ", ".join(f"{k}={v}" for k, v in saved.knobs.items()) + "."
        msg += "".join(f"\n{n}" for n in notes)
        await interaction.response.send_message(msg, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
        if greeting and saved.greeting:
            await _post_greeting(interaction, saved.greeting)

    @load.autocomplete("name")
    async def _persona_names(self, interaction: discord.Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
        """The server's saved personas whose names contain what was typed."""
        if interaction.guild_id is None:
            return []
        saved = await bot_of(interaction).app.personas.saved(interaction.guild_id)
        typed = current.strip().lower()
        return [app_commands.Choice(name=p.name, value=p.name) for p in saved
                if typed in p.name.lower()][:25]

    @app_commands.command(name="list", description="The personas saved on this server.")
    async def list_(self, interaction: discord.Interaction) -> None:
        saved = await bot_of(interaction).app.chat.saved_personas(_server_of(interaction))
        if not saved:
            body = "No saved personas yet: `/system save NAME` or `/system import`."
        else:
            body = "\n".join(
                f"• `{p.name}`" + (f" (+{len(p.knobs)} knobs)" if p.knobs else "")
                + (" (greeting)" if p.greeting else "") for p in saved)
        await interaction.response.send_message(body, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="reasoning",
                          description="Split a reasoning model's <think> part from the answer.")
    @app_commands.describe(mode="on, off, or inherit (from the server / the default)",
                           scope="This channel (default) or the whole server")
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m)
                                for m in ("on", "off", "inherit")])
    async def reasoning(
        self, interaction: discord.Interaction, mode: str, scope: ScopeChoice = "channel",
    ) -> None:
        target = await scope_for_write(interaction, scope)
        on = {"on": True, "off": False}.get(mode)
        changed = await bot_of(interaction).app.store.set_reasoning(
            target, on, actor_id=interaction.user.id)
        await count_write(interaction, changed)
        words = {"on": "on", "off": "off", "inherit": "inherited"}.get(mode, mode)
        await interaction.response.send_message(
            f"Reasoning is {words} for {scope_word(target)}.", ephemeral=True,
            allowed_mentions=NO_MENTIONS)


def _server_of(interaction: discord.Interaction) -> int:
    """Named personas belong to a server: refused plainly in DMs, where /system also works."""
    if interaction.guild_id is None:
        raise UserFacingError("Saved personas belong to a server: use them there.")
    return interaction.guild_id


def _may_name_personas(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions.manage_guild)


async def _named_personas_writer(interaction: discord.Interaction) -> int:
    """The server whose saved personas this member may change (Manage Server, like
    `/system set scope: server`), after the settings-write limit; else a refusal."""
    guild_id = _server_of(interaction)
    if not _may_name_personas(interaction):
        raise MissingScopePermission(wording.NAMED_PERSONAS_PERMISSION)
    await take_write_slot(interaction)
    return guild_id


async def _post_greeting(interaction: discord.Interaction, text: str) -> None:
    """The card's greeting, posted in the channel as plain text (never a ping).

    Everyone reads it, so its ``{{user}}`` is "you".
    """
    text = fill_user(text, None, default="you") or text
    for start in range(0, len(text), 2000):
        await interaction.followup.send(text[start:start + 2000], allowed_mentions=NO_MENTIONS)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(System())
    router = getattr(bot, "modals", None)
    if isinstance(router, ModalRouter):
        router.add(PERSONA_MODAL_PATTERN, submit_persona)
