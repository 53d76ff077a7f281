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
from bot.discord.attachments import read_attachment
from bot.discord.common import location_of
from bot.discord.errors import MissingScopePermission
from bot.discord.greeting import post_greeting
from bot.discord.guard import parse_id
from bot.discord.modals import ModalRouter, send_stateless
from bot.errors import UserFacingError
from bot.store.personas import MAX_NAME_CHARS
from bot.store.scopes import MAX_SYSTEM_PROMPT_CHARS, Scope
from cogs._common import (
    NO_MENTIONS,
    ScopeChoice,
    ScopeOpt,
    bot_of,
    scope_for_write,
    scope_word,
    settings_of,
)

#: An embed's description holds 4,096 characters (a persona is at most 4,000).
SHOW_LIMIT = 4096
#: Discord's limit for a text input's label.
LABEL_LIMIT = 45


#: The edit box's custom id: its scope choice and the scope's id, so its submission
#: is routed after a restart too (see bot/discord/modals.py).
PERSONA_MODAL_ID = "llm:persona:{choice}:{scope_id}"
PERSONA_MODAL_PATTERN = r"llm:persona:(?P<choice>channel|server):(?P<scope>[0-9]+)"


class SystemPromptModal(discord.ui.Modal, title=wording.PERSONA_BOX_TITLE):
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
        label = wording.persona_box_label(where, source)
        self.text: discord.ui.TextInput[SystemPromptModal] = discord.ui.TextInput(
            label=label[:LABEL_LIMIT], style=discord.TextStyle.paragraph,
            default=current[:MAX_SYSTEM_PROMPT_CHARS] or None,
            placeholder=wording.persona_box_placeholder(where)[:100],
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
    target = scope_for_write(interaction, choice)
    if target.id != parse_id(match["scope"]):
        raise app_commands.CheckFailure(wording.BOX_OPENED_ELSEWHERE)
    await save_persona(interaction, target, values.get("text", ""))


async def save_persona(interaction: discord.Interaction, target: Scope, text: str) -> None:
    """The edit box's text becomes the persona at `target`.

    Shared by the live modal and by the route that answers a box submitted after
    a restart, which has no modal object left (bot/discord/modals.py).
    """
    await settings_of(interaction).set_persona(target, text, actor_id=interaction.user.id)
    await interaction.response.send_message(
        wording.persona_saved(scope_word(target, interaction)), ephemeral=True,
        allowed_mentions=NO_MENTIONS,
    )


def _source_words(source: str, in_thread: bool = False) -> str:
    return wording.source_label(source, in_thread=in_thread)


def _in_thread(interaction: discord.Interaction) -> bool:
    return isinstance(interaction.channel, discord.Thread)


@app_commands.default_permissions(manage_channels=True)
class System(commands.GroupCog, group_name="system",
             group_description=wording.COMMANDS["system"]):
    @app_commands.command(name="show", description=wording.COMMANDS["system show"])
    async def show(self, interaction: discord.Interaction) -> None:
        bot = bot_of(interaction)
        eff = await bot.app.resolve(location_of(interaction))
        text, source = persona(eff, bot.app.settings.system_prompt)
        body = text or wording.PERSONA_NONE
        if len(body) > SHOW_LIMIT:
            body = body[: SHOW_LIMIT - 1] + "…"
        embed = discord.Embed(title=wording.PERSONA_TITLE, description=body)
        embed.set_footer(text=wording.persona_source(_source_words(source,
                                                                   _in_thread(interaction))))
        await interaction.response.send_message(
            embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="set", description=wording.COMMANDS["system set"])
    @app_commands.describe(**wording.OPTIONS["system set"])
    async def set_(
        self, interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT_CHARS],
        scope: ScopeOpt = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        await settings_of(interaction).set_persona(target, text, actor_id=interaction.user.id)
        await interaction.response.send_message(
            wording.persona_set(scope_word(target, interaction)), ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="edit", description=wording.COMMANDS["system edit"])
    @app_commands.describe(**wording.OPTIONS["system edit"])
    async def edit(self, interaction: discord.Interaction, scope: ScopeOpt = "channel") -> None:
        target = scope_for_write(interaction, scope)
        choice: ScopeChoice = "server" if scope == "server" else "channel"
        draft = await settings_of(interaction).persona_draft(
            target, location_of(interaction), actor_id=interaction.user.id)
        where = scope_word(target, interaction)
        source = (where if draft.source is None
                  else _source_words(draft.source, _in_thread(interaction)))
        await send_stateless(interaction, SystemPromptModal(target, choice, draft.text, source,
                                                            where))

    @app_commands.command(name="reset", description=wording.COMMANDS["system reset"])
    @app_commands.describe(**wording.OPTIONS["system reset"])
    async def reset(self, interaction: discord.Interaction, scope: ScopeOpt = "channel") -> None:
        target = scope_for_write(interaction, scope)
        change = await settings_of(interaction).reset_persona(target,
                                                              actor_id=interaction.user.id)
        where = scope_word(target, interaction)
        msg = wording.persona_reset(where) if change.changed else wording.persona_not_set(where)
        await interaction.response.send_message(msg, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # --- character cards, named personas, the reasoning setting -------------
    # The rules live in the core (bot.chat.characters, bot.store.personas); these
    # subcommands only fetch the attachment, pick the scope and say what happened.

    @app_commands.command(name="import", description=wording.COMMANDS["system import"])
    @app_commands.describe(**wording.OPTIONS["system import"])
    async def import_(
        self, interaction: discord.Interaction, card: discord.Attachment,
        scope: ScopeChoice = "channel", greeting: bool = False,
    ) -> None:
        target = scope_for_write(interaction, scope)
        data = await read_attachment(card, MAX_PNG_BYTES)
        parsed = await read_card(data, filename=card.filename)
        may_save = _may_name_personas(interaction)
        done = await settings_of(interaction).import_card(
            target, parsed, guild_id=interaction.guild_id if may_save else None,
            actor_id=interaction.user.id)
        saved_as, not_saved = done.saved_as, done.not_saved
        saved_note = ""
        if interaction.guild_id is not None and not may_save:
            saved_note = f" ({wording.IMPORT_NOT_SAVED})"
        elif saved_as is not None:
            saved_note = wording.card_saved_as(saved_as)
            if saved_as != parsed.name[:MAX_NAME_CHARS]:
                saved_note += wording.kept_existing(parsed.name[:MAX_NAME_CHARS])
        elif not_saved is not None:
            saved_note = wording.card_not_saved(not_saved)
        lines = [wording.card_imported(discord.utils.escape_markdown(parsed.name),
                                       scope_word(target), saved_note)]
        if (notice := parsed.notice()) is not None:
            lines.append(notice)
        if parsed.ignored:
            lines.append(wording.card_ignored(parsed.ignored))
        await interaction.response.send_message("\n".join(lines), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
        if greeting and parsed.greetings:
            await post_greeting(bot_of(interaction).app, interaction, parsed.greetings)

    @app_commands.command(name="save", description=wording.COMMANDS["system save"])
    @app_commands.describe(**wording.OPTIONS["system save"])
    async def save(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS], knobs: bool = False,
    ) -> None:
        guild_id = _named_personas_writer(interaction)
        saved, replaced = await settings_of(interaction).save_persona(
            location_of(interaction), guild_id, name, actor_id=interaction.user.id,
            with_knobs=knobs)
        await interaction.response.send_message(
            wording.persona_named(saved.name, replaced=replaced, knobs=len(saved.knobs)),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="delete", description=wording.COMMANDS["system delete"])
    @app_commands.describe(**wording.OPTIONS["system delete"])
    async def delete(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
    ) -> None:
        guild_id = _named_personas_writer(interaction)
        deleted = await settings_of(interaction).delete_persona(guild_id, name,
                                                                actor_id=interaction.user.id)
        msg = (wording.persona_not_saved(discord.utils.escape_markdown(" ".join(name.split())))
               if deleted is None else wording.persona_deleted(deleted))
        await interaction.response.send_message(msg, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="load", description=wording.COMMANDS["system load"])
    @app_commands.describe(**wording.OPTIONS["system load"])
    async def load(
        self, interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
        scope: ScopeChoice = "channel", greeting: bool = False,
    ) -> None:
        guild_id = _server_of(interaction)
        target = scope_for_write(interaction, scope)
        saved, change = await settings_of(interaction).load_persona(
            target, guild_id, name, actor_id=interaction.user.id)
        msg = wording.persona_loaded(saved.name, scope_word(target), saved.knobs,
                                     change.notes)
        await interaction.response.send_message(msg, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)
        if greeting and saved.greeting:
            await post_greeting(bot_of(interaction).app, interaction, [saved.greeting])

    @load.autocomplete("name")
    async def _persona_names(self, interaction: discord.Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
        """The server's saved personas whose names contain what was typed."""
        if interaction.guild_id is None:
            return []
        saved = await settings_of(interaction).saved_personas(interaction.guild_id)
        typed = current.strip().lower()
        return [app_commands.Choice(name=p.name, value=p.name) for p in saved
                if typed in p.name.lower()][:25]

    @app_commands.command(name="list", description=wording.COMMANDS["system list"])
    async def list_(self, interaction: discord.Interaction) -> None:
        saved = await settings_of(interaction).saved_personas(_server_of(interaction))
        body = "\n".join(
            wording.saved_persona_line(p.name, knobs=len(p.knobs), greeting=bool(p.greeting))
            for p in saved) or wording.NO_SAVED_PERSONAS
        await interaction.response.send_message(body, ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="reasoning", description=wording.COMMANDS["system reasoning"])
    @app_commands.describe(**wording.OPTIONS["system reasoning"])
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m)
                                for m in wording.REASONING_MODES])
    async def reasoning(
        self, interaction: discord.Interaction, mode: str, scope: ScopeChoice = "channel",
    ) -> None:
        target = scope_for_write(interaction, scope)
        on = {"on": True, "off": False}.get(mode)
        await settings_of(interaction).set_reasoning(target, on, actor_id=interaction.user.id)
        await interaction.response.send_message(
            wording.reasoning_is(mode, scope_word(target)), ephemeral=True,
            allowed_mentions=NO_MENTIONS)


def _server_of(interaction: discord.Interaction) -> int:
    """Named personas belong to a server: refused plainly in DMs, where /system also works."""
    if interaction.guild_id is None:
        raise UserFacingError(wording.SAVED_PERSONAS_NEED_A_SERVER)
    return interaction.guild_id


def _may_name_personas(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions.manage_guild)


def _named_personas_writer(interaction: discord.Interaction) -> int:
    """The server whose saved personas this member may change (Manage Server, like
    `/system set scope: server`); else a refusal."""
    guild_id = _server_of(interaction)
    if not _may_name_personas(interaction):
        raise MissingScopePermission(wording.NAMED_PERSONAS_PERMISSION)
    return guild_id


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(System())
    router = getattr(bot, "modals", None)
    if isinstance(router, ModalRouter):
        router.add(PERSONA_MODAL_PATTERN, submit_persona)
