"""A running bot against the fake Discord, for tests that read as short stories.

`running_bot(...)` builds the real App (engine + SQLite store), the real
`LlamaBot`, and a `FakeDiscord` on 127.0.0.1, connects them, and tears all of
it down. `ScriptedGenerator` stands in for CTranslate2 when a test needs
exact model output (a mention, a code block, 5,000 characters): it feeds
real token ids of a chosen text through the engine's real callback path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import App
from bot.chat.request import FINISH_WORDS
from bot.config import Settings, load_settings
from bot.discord.client import LlamaBot
from bot.engine import Engine, EngineOptions
from bot.knobs import KNOB_NAMES
from bot.store.ask_log import AskLog
from bot.store.scopes import Scope
from bot.store.store import SettingsStore
from bot.wording import EMPTY_REPLY
from testing.backends import ScriptedGenerator
from testing.fake_discord import FakeDiscord, FakeGuild, FakeInteraction, default_guild


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
    model_dir: Path, tmp_path: Path, *, scripted: Callable[[list[str]], str] | str | None = None,
    script_delay: float = 0.005, enforce_buckets: bool = False, bucket_window: float = 5.0,
    guilds: list[FakeGuild] | None = None, privileged_intents: int = 0,
    **settings_overrides: Any,
) -> AsyncIterator[Harness]:
    overrides: dict[str, Any] = {
        "database_path": tmp_path / "bot.sqlite3",
        "model_dir": model_dir,
        "device": "cpu",
        "edit_interval_s": 0.2,
        "batch_wait_ms": 5,
        "cpu_threads": 1,
        "settings_write_limit": 0,  # stories change settings quickly; tests of the limit set it
    }
    overrides.update(settings_overrides)
    settings: Settings = load_settings(None, **overrides)
    store = await SettingsStore.open(
        settings.database_path, max_new_tokens_ceiling=settings.max_new_tokens_ceiling
    )
    engine = await Engine.load(model_dir, EngineOptions(
        device="cpu", cpu_threads=settings.cpu_threads,
        max_batch_size=settings.max_batch_size, queue_size=settings.queue_size,
        batch_wait_ms=settings.batch_wait_ms,
    ))
    if scripted is not None:
        engine.set_backend(ScriptedGenerator(engine.bundle.tokenizer, scripted, script_delay))
    app = App(settings=settings, engine=engine, store=store, ask_log=AskLog(store.db))
    guilds = guilds or [default_guild()]
    if scripted is not None:
        # Scripted replies are long; let them run to their end rather than 128 tokens.
        longest = min(1024, settings.max_new_tokens_ceiling or 1024)
        await store.set_knobs(Scope.server(guilds[0].id), {"max_new_tokens": longest}, actor_id=1)
    try:
        async with FakeDiscord(guilds=guilds, enforce_buckets=enforce_buckets,
                               bucket_window=bucket_window,
                               privileged_intents=privileged_intents) as fake:
            bot = fake.make_bot(LlamaBot, app=app)
            async with fake.run_bot(bot):
                await fake.wait_for(lambda: fake.commands or None, timeout=10)
                yield Harness(fake=fake, bot=bot, app=app, guild=guilds[0])
    finally:
        await engine.close()
        await store.close()
