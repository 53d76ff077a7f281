"""/tokens: how the model's tokenizer splits a text, like the guide's tokenizer playground.

Answered privately unless the member asks to post it: it is a tool, not a
conversation. Tokens that are only part of a character (an emoji's bytes in a
byte-level vocabulary) are shown as their bytes, ``<0xF0>``, since their text
alone is empty: otherwise "20 tokens" would show 12 pieces.
"""

from __future__ import annotations

import re
from functools import cache

import discord
from discord import app_commands
from discord.ext import commands

from bot.engine.streaming import token_pieces
from bot.model.tokenizer import Tokenizer
from cogs._common import NO_MENTIONS, bot_of, location_of

# ANSI foreground colours Discord renders in ```ansi blocks; alternating per token.
COLOURS = ("\u001b[0;31m", "\u001b[0;32m", "\u001b[0;33m", "\u001b[0;34m", "\u001b[0;35m",
           "\u001b[0;36m")
RESET = "\u001b[0m"
BLOCK_BUDGET = 1700
_BYTE_TOKEN = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (used by Llama 3, SmolLM2 …): character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(raw: str) -> bytes | None:
    """The bytes a vocabulary entry stands for, when its spelling says so; else None."""
    if _BYTE_TOKEN.fullmatch(raw):  # SentencePiece byte fallback (Llama 2, Mistral)
        return bytes(int(raw[i + 3: i + 5], 16) for i in range(0, len(raw), 6))
    decoder = _byte_decoder()
    if raw and all(c in decoder for c in raw):
        return bytes(decoder[c] for c in raw)
    return None


def piece_label(tokenizer: Tokenizer, token_id: int, text: str) -> str:
    """What to show for one token: its text, or its bytes when it is part of a character."""
    raw = tokenizer.id_to_token(token_id)
    data = token_bytes(raw)
    if data is not None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Whole characters as text (a leading space stays a space), the rest as bytes.
            head = data[: exc.start].decode("utf-8")
            return head + "".join(f"<0x{b:02X}>" for b in data[exc.start:])
    if text and "\ufffd" not in text:
        return text
    return raw or f"<{token_id}>"


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
    @app_commands.command(name="tokens", description="Show how the model splits text into tokens.")
    @app_commands.describe(text="The text to tokenize",
                           public="Post it in the channel (default: only you see it)")
    async def tokens(
        self, interaction: discord.Interaction, text: app_commands.Range[str, 1, 6000],
        public: bool = False,
    ) -> None:
        app = bot_of(interaction).app
        # Issue 23: the tokenizer of the model answering here, loaded first if it is not.
        models = app.models
        name = models.choice(await app.resolve(location_of(interaction))).name
        engine = models.loaded(name)
        deferred = engine is None
        if engine is None:
            await interaction.response.defer(thinking=True, ephemeral=not public)
            engine = await models.engine(name)
        tokenizer = engine.bundle.tokenizer
        pieces = [piece_label(tokenizer, i, t) for i, t in token_pieces(tokenizer, text)]
        block, shown = render_tokens(pieces)
        more = f" (showing the first {shown})" if shown < len(pieces) else ""
        noun = "token" if len(pieces) == 1 else "tokens"
        which = f" · model `{name}`" if models.several else ""
        content = (f"**{len(pieces)} {noun}**{more} · context window "
                   f"{engine.info.context_length} tokens{which}\n```ansi\n{block}\n```")
        if deferred:
            await interaction.followup.send(content, ephemeral=not public,
                                            allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.send_message(
            content, ephemeral=not public, allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Tokens())
