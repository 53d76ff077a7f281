"""/tokens: how the model's tokenizer splits a text, like the guide's tokenizer playground.

Answered privately unless the member asks to post it: it is a tool, not a
conversation. Tokens that are only part of a character (an emoji's bytes in a
byte-level vocabulary) are shown as their bytes, ``<0xF0>``, since their text
alone is empty: otherwise "20 tokens" would show 12 pieces.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
from bot.engine.streaming import token_pieces
from bot.hosting.host import swapper_of
from bot.model.pieces import piece_label, token_bytes
from cogs._common import NO_MENTIONS, bot_of, location_of

# ANSI foreground colours Discord renders in ```ansi blocks; alternating per token.
COLOURS = ("\u001b[0;31m", "\u001b[0;32m", "\u001b[0;33m", "\u001b[0;34m", "\u001b[0;35m",
           "\u001b[0;36m")
RESET = "\u001b[0m"
BLOCK_BUDGET = 1700
__all__ = ["Tokens", "piece_label", "render_tokens", "token_bytes"]


def render_tokens(pieces: list[str]) -> tuple[str, int]:
    """The coloured block and how many tokens fit in it."""
    out: list[str] = []
    used = 0
    shown = 0
    for i, text in enumerate(pieces):
        # Only a run of three backticks could close the code block: break every run.
        safe = text.replace("`", "`\u200b")
        chunk = COLOURS[i % len(COLOURS)] + safe
        if used + len(chunk) > BLOCK_BUDGET:
            break
        out.append(chunk)
        used += len(chunk)
        shown += 1
    return "".join(out) + RESET, shown


class Tokens(commands.Cog):
    @app_commands.command(name="tokens", description=wording.COMMANDS["tokens"])
    @app_commands.describe(**wording.OPTIONS["tokens"])
    async def tokens(
        self, interaction: discord.Interaction, text: app_commands.Range[str, 1, 6000],
        public: bool = False,
    ) -> None:
        app = bot_of(interaction).app
        # The tokenizer of the model answering here, loaded first if it is not.
        models = app.models
        name = models.choice(await app.resolve(location_of(interaction))).name
        engine = models.loaded(name)
        deferred = engine is None
        if engine is None:
            await interaction.response.defer(thinking=True, ephemeral=not public)
            engine = await models.engine(
                name, swapper=swapper_of(interaction.guild_id, interaction.user.id))
        tokenizer = engine.bundle.tokenizer
        pieces = [piece_label(tokenizer, i, t) for i, t in token_pieces(tokenizer, text)]
        block, shown = render_tokens(pieces)
        head = wording.tokens_head(len(pieces), shown, engine.info.context_length,
                                   name if models.several else None)
        content = f"{head}\n```ansi\n{block}\n```"
        if deferred:
            await interaction.followup.send(content, ephemeral=not public,
                                            allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.send_message(
            content, ephemeral=not public, allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Tokens())
