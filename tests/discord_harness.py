"""A running bot against the fake Discord, for tests that read as short stories.

`running_bot(...)` builds the real App (engine + SQLite store), the real
`LlamaBot`, and a `FakeDiscord` on 127.0.0.1, connects them, and tears all of
it down. `ScriptedGenerator` stands in for CTranslate2 when a test needs
exact model output (a mention, a code block, 5,000 characters): it feeds
real token ids of a chosen text through the engine's real callback path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.app import App
from bot.client import LlamaBot
from bot.config import Settings, load_settings
from bot.engine import Engine
from bot.fake_discord import FakeDiscord, FakeGuild, FakeInteraction, default_guild
from bot.store import Scope, SettingsStore


class ScriptedGenerator:
    """Emit the tokens of `text_for(prompt_tokens)` for each batch item, then the end token."""

    def __init__(self, tokenizer: Any, text_for: Callable[[list[str]], str] | str,
                 delay: float = 0.005) -> None:
        self.tokenizer = tokenizer
        self.text_for = text_for if callable(text_for) else (lambda _t: text_for)
        self.delay = delay
        self.calls = 0
        self._prompts: list[list[str]] = []

    def generate_batch(self, start_tokens: list[list[str]], **kw: Any) -> list[Any]:
        self.calls += 1
        callback = kw["callback"]
        end = kw["end_token"][0]
        max_length = kw["max_length"]
        scripts: list[list[int]] = []
        offsets: list[int] = []
        for tokens in start_tokens:
            # A request the engine preempted comes back as prompt + tokens so far:
            # continue its script where it stopped instead of starting over.
            prompt = next((p for p in self._prompts if tokens[: len(p)] == p), None)
            if prompt is None:
                prompt = list(tokens)
                self._prompts.append(prompt)
            scripts.append([*self.tokenizer.encode(self.text_for(prompt)), end])
            offsets.append(len(tokens) - len(prompt))
        active = set(range(len(scripts)))
        for step in range(max_length):
            for i in sorted(active):
                ids = scripts[i]
                pos = offsets[i] + step
                token = ids[pos] if pos < len(ids) else end
                last = token == end or step == max_length - 1
                if callback(SimpleNamespace(batch_id=i, step=step, token_id=token,
                                            is_last=last)) or last:
                    active.discard(i)
            if not active:
                break
            time.sleep(self.delay)
        return []


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


ASK_OPTIONS = {"temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens", "stop",
               "repetition_penalty", "private"}
FOOTER_WORDS = ("end of reply", "max tokens", "stop sequence", "stopped", "error")


def is_final(content: str) -> bool:
    return any(f" · {w}" in content for w in FOOTER_WORDS)


@contextlib.asynccontextmanager
async def running_bot(
    model_dir: Path, tmp_path: Path, *, scripted: Callable[[list[str]], str] | str | None = None,
    script_delay: float = 0.005, enforce_buckets: bool = False, bucket_window: float = 5.0,
    guilds: list[FakeGuild] | None = None, **settings_overrides: Any,
) -> AsyncIterator[Harness]:
    overrides: dict[str, Any] = {
        "database_path": tmp_path / "bot.sqlite3",
        "model_dir": model_dir,
        "device": "cpu",
        "edit_interval_s": 0.2,
        "batch_wait_ms": 5,
        "cpu_threads": 1,
    }
    overrides.update(settings_overrides)
    settings: Settings = load_settings(None, **overrides)
    store = await SettingsStore.open(settings.database_path)
    engine = await Engine.load(
        model_dir, device="cpu", cpu_threads=settings.cpu_threads,
        max_batch_size=settings.max_batch_size, queue_size=settings.queue_size,
        batch_wait_ms=settings.batch_wait_ms,
    )
    if scripted is not None:
        engine._generator = ScriptedGenerator(engine.bundle.tokenizer, scripted, script_delay)
    app = App(settings=settings, engine=engine, store=store)
    guilds = guilds or [default_guild()]
    if scripted is not None:
        # Scripted replies are long; let them run to their end rather than 128 tokens.
        await store.set_knobs(Scope.server(guilds[0].id), {"max_new_tokens": 1024}, actor_id=1)
    try:
        async with FakeDiscord(guilds=guilds, enforce_buckets=enforce_buckets,
                               bucket_window=bucket_window) as fake:
            bot = fake.make_bot(LlamaBot, app=app)
            async with fake.run_bot(bot):
                await fake.wait_for(lambda: fake.commands or None, timeout=10)
                yield Harness(fake=fake, bot=bot, app=app, guild=guilds[0])
    finally:
        await engine.close()
        await store.close()
