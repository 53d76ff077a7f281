"""/ask: a prompt in, a reply streamed by editing the bot's message.

Each answer starts a conversation (its Reply button continues it); inside a
thread that `/ask thread:true` opened, /ask continues the thread's conversation.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.buttons import runner_of
from bot.lab.help import KNOB_HELP
from cogs._common import (
    KNOB_DESCRIPTIONS,
    MaxNewOpt,
    MinNewOpt,
    RepPenaltyOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    knob_options,
)

PROMPT_LIMIT = 6000  # Discord's own limit for a string option


class Ask(commands.Cog):
    @app_commands.command(name="ask", description="Ask the model; the reply streams in.")
    @app_commands.describe(
        prompt="What to ask",
        **{name: f"This ask only: {KNOB_HELP[name].option(85)}" for name in KNOB_DESCRIPTIONS
           if name != "max_new_tokens"},
        # Said where it is chosen: a larger value than the scope's is capped.
        max_new_tokens="This ask only: at most this many tokens, up to this channel's or "
                       "server's limit",
        stop=r"This ask only: stop sequences, separated by | (\n for a newline)",
        private="Only you see the reply and its follow-ups (only you can stop or regenerate it)",
        thread="Open a public thread from the answer; every /ask or mention there continues it",
        file="A text file (code, a log, notes) the model reads with your question",
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, PROMPT_LIMIT],
        temperature: TemperatureOpt | None = None,
        top_p: TopPOpt | None = None,
        top_k: TopKOpt | None = None,
        max_new_tokens: MaxNewOpt | None = None,
        min_new_tokens: MinNewOpt | None = None,
        stop: str | None = None,
        repetition_penalty: RepPenaltyOpt | None = None,
        private: bool = False,
        thread: bool = False,
        file: discord.Attachment | None = None,
    ) -> None:
        overrides = knob_options(
            stop, temperature=temperature, top_p=top_p, top_k=top_k,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
        )
        await runner_of(interaction).ask_command(
            interaction, prompt, overrides, private=private, thread=thread,
            attachments=[file] if file is not None else [],
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Ask())
