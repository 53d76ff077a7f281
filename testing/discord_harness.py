"""A running bot against the fake Discord, for tests that read as short stories.

`running_bot(...)` builds the real App through the composition root
(`bot.app.open_app`, engine + SQLite store), the real `LlamaBot`, and a
`FakeDiscord` on 127.0.0.1, connects them, and tears all of it down. A scripted
model stands in for CTranslate2 when a test needs exact model output (a mention,
a code block, 5,000 characters): it feeds real token ids of a chosen text
through the engine's real callback path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import App, open_app
from bot.chat.request import FINISH_WORDS
from bot.discord.client import LlamaBot
from bot.knobs import KNOB_NAMES
from bot.store.scopes import Scope
from bot.wording import EMPTY_REPLY
from testing.apps import story_engine, story_settings
from testing.fake_discord import FakeDiscord, FakeGuild, FakeInteraction, default_guild
from testing.scripted import Script


@dataclass
class Harness:
    fake: FakeDiscord
    bot: LlamaBot
    app: App
    guild: FakeGuild

    @property
    def general(self) -> int:
        return self.guild.channels[0].id

    @property
    def help(self) -> int:
        return self.guild.channels[1].id

    @property
    def thread(self) -> int:
        return self.guild.channels[2].id

    async def command(self, name: str, options: dict[str, Any] | None = None,
                      **kw: Any) -> FakeInteraction:
        kw.setdefault("channel_id", self.general)
        return await self.fake.inject_interaction(name, options or {}, **kw)

    async def ask(self, prompt: str, timeout: float = 30.0, **kw: Any) -> FakeInteraction:  # noqa: ASYNC109
        """/ask and wait for the finished reply (its footer)."""
        options = {"prompt": prompt, **{k: v for k, v in kw.items() if k in ASK_OPTIONS}}
        rest = {k: v for k, v in kw.items() if k not in ASK_OPTIONS}
        itx = await self.command("ask", options, **rest)
        await self.finished(itx, timeout)
        return itx

    async def finished(self, itx: FakeInteraction, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        def done() -> bool:
            msgs = [m for m in [itx.original, *itx.followups] if m is not None]
            return any(is_final(m.content) for m in msgs)

        await self.fake.wait_for(lambda: done() or None, timeout=timeout)

    def full_text(self, itx: FakeInteraction) -> str:
        msgs = [m for m in [itx.original, *itx.followups] if m is not None]
        return "\n".join(m.content for m in msgs)


ASK_OPTIONS = {*KNOB_NAMES, "private", "thread"}
#: What a finished reply's footer says after " · ": the finish words, and the two
#: footers that replace them (a cap that lowered the ask, an empty reply).
FOOTER_WORDS = (*FINISH_WORDS.values(), "capped at", EMPTY_REPLY)


def is_final(content: str) -> bool:
    return any(f" · {w}" in content for w in FOOTER_WORDS)


@contextlib.asynccontextmanager
async def running_bot(
    model_dir: Path, tmp_path: Path, *, scripted: Script | None = None,
    script_delay: float = 0.005, weights: bool | None = None, enforce_buckets: bool = False,
    bucket_window: float = 5.0, guilds: list[FakeGuild] | None = None,
    privileged_intents: int = 0, max_concurrency: int = 1,
    **settings_overrides: Any,
) -> AsyncIterator[Harness]:
    """The bot over `model_dir` on a fake Discord; `scripted` makes the model say that.

    A scripted model runs without the CTranslate2 weights (`testing.scripted`) unless
    `weights=True`: what needs them (probabilities, the lab) then sees the real model
    while replies stay scripted.
    """
    guilds = guilds or [default_guild()]
    settings = story_settings(model_dir, tmp_path, **settings_overrides)
    if weights is None:
        weights = scripted is None
    async with (
        story_engine(settings, model_dir, scripted, script_delay, weights=weights) as engine,
        open_app(settings, engine=engine) as app,
    ):
        if scripted is not None:
            # Scripted replies are long; let them run to their end rather than 128 tokens.
            longest = min(1024, settings.max_new_tokens_ceiling or 1024)
            await app.store.set_knobs(Scope.server(guilds[0].id), {"max_new_tokens": longest},
                                      actor_id=1)
        async with FakeDiscord(guilds=guilds, enforce_buckets=enforce_buckets,
                               bucket_window=bucket_window,
                               privileged_intents=privileged_intents,
                               max_concurrency=max_concurrency) as fake:
            bot = fake.make_bot(LlamaBot, app=app)
            async with fake.run_bot(bot):
                await fake.wait_for(lambda: fake.commands or None, timeout=10)
                yield Harness(fake=fake, bot=bot, app=app, guild=guilds[0])
