"""/tokens: how the model's tokenizer splits a text, like the guide's tokenizer playground."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.streaming import token_pieces
from cogs._common import NO_MENTIONS, bot_of

# ANSI foreground colours Discord renders in ```ansi blocks; alternating per token.
COLOURS = ("\u001b[0;31m", "\u001b[0;32m", "\u001b[0;33m", "\u001b[0;34m", "\u001b[0;35m",
           "\u001b[0;36m")
RESET = "\u001b[0m"
BLOCK_BUDGET = 1700


def render_tokens(pieces: list[tuple[int, str]]) -> tuple[str, int]:
    """The coloured block and how many tokens fit in it."""
    out: list[str] = []
    used = 0
    shown = 0
    for i, (_, text) in enumerate(pieces):
        safe = text.replace("`", "ˋ")
        chunk = COLOURS[i % len(COLOURS)] + safe
        if used + len(chunk) > BLOCK_BUDGET:
            break
        out.append(chunk)
        used += len(chunk)
        shown += 1
    return "".join(out) + RESET, shown


class Tokens(commands.Cog):
    @app_commands.command(name="tokens", description="Show how the model splits text into tokens.")
    @app_commands.describe(text="The text to tokenize")
    async def tokens(
        self, interaction: discord.Interaction, text: app_commands.Range[str, 1, 6000]
    ) -> None:
        engine = bot_of(interaction).app.engine
        pieces = token_pieces(engine.bundle.tokenizer, text)
        block, shown = render_tokens(pieces)
        more = f" (showing the first {shown})" if shown < len(pieces) else ""
        await interaction.response.send_message(
            f"**{len(pieces)} tokens**{more} · context window "
            f"{engine.info.context_length} tokens\n```ansi\n{block}\n```",
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Tokens())
