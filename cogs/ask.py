"""/ask: a prompt in, a reply streamed by editing the bot's message.

Each answer starts a conversation (its Reply button continues it); inside a
thread that `/ask thread:true` opened, /ask continues the thread's conversation.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import wording
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
    @app_commands.command(name="ask", description=wording.COMMANDS["ask"])
    @app_commands.describe(**{
        **{name: wording.ask_only(KNOB_HELP[name].option(85)) for name in KNOB_DESCRIPTIONS},
        **wording.OPTIONS["ask"],  # max_new_tokens: said how the scope's value caps it
    })
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
