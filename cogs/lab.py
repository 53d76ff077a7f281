"""/compare and /probs: the knobs lab (bot.lab does the numbers, bot/discord/lab.py the views)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.discord.common import location_of
from bot.discord.lab import CompareAsk
from bot.lab.compare import SEED_LIMIT, parse_variant, plan_variants, variant_suggestions

if TYPE_CHECKING:
    from bot.discord.client import LlamaBot

PROMPT_LIMIT = 6000


class Lab(commands.Cog):
    """/compare and /probs on the client's lab (`LlamaBot.lab`, which the buttons find)."""

    def __init__(self, bot: commands.Bot) -> None:
        self.lab = cast("LlamaBot", bot).lab

    @app_commands.command(name="compare", description=wording.COMMANDS["compare"])
    @app_commands.describe(**wording.OPTIONS["compare"])
    async def compare(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, PROMPT_LIMIT],
        a: str | None = None, b: str | None = None, c: str | None = None, d: str | None = None,
        seed: app_commands.Range[int, 0, SEED_LIMIT - 1] | None = None, public: bool = False,
    ) -> None:
        turn = await self.lab.fresh_request(interaction, prompt)
        where = location_of(interaction)
        here = wording.place_word("channel" if where.guild_id is not None else "dm",
                                  in_thread=where.parent_channel_id is not None)
        variants = plan_variants([a, b, c, d], turn.request.knobs, here)
        await self.lab.compare(interaction, CompareAsk(
            user_id=interaction.user.id, guild_id=interaction.guild_id,
            channel_id=interaction.channel_id, prompt=prompt.strip(), request=turn.request,
            variants=variants, private=not public, model=turn.model,
        ), seed=seed)

    @compare.autocomplete("a")
    @compare.autocomplete("b")
    @compare.autocomplete("c")
    @compare.autocomplete("d")
    async def _variants(self, interaction: discord.Interaction,
                        current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=text, value=text) for text in variant_suggestions(current)]

    @app_commands.command(name="probs", description=wording.COMMANDS["probs"])
    @app_commands.describe(**wording.OPTIONS["probs"])
    async def probs(
        self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, PROMPT_LIMIT],
        knobs: str | None = None, seed: app_commands.Range[int, 0, SEED_LIMIT - 1] | None = None,
        public: bool = False, raw: bool = False,
    ) -> None:
        overrides: dict[str, Any] = parse_variant(knobs).overrides if knobs else {}
        turn = await self.lab.fresh_request(interaction, prompt, overrides)
        await self.lab.probs(interaction, turn, private=not public, seed=seed, raw=raw,
                             header=wording.PROBS_RAW if raw else wording.PROBS_CHAT)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Lab(bot))

