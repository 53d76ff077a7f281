"""Several models on one host, for stories: two model directories, the bot as `run_bot`
builds it (open_app with BOT_MODEL_DIRS) on the fake Discord, and the words to drive it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord

from bot.app import open_app
from bot.discord.client import LlamaBot
from bot.store.scopes import Scope
from testing.discord_harness import Harness
from testing.fake_discord import FakeDiscord, FakeInteraction, default_guild
from testing.stories import final_message

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
MANAGE_SERVER = str(discord.Permissions(manage_channels=True, manage_guild=True).value)
MANAGE_GUILD = str(discord.Permissions(manage_guild=True).value)
NEW_TOKENS = 6  # short replies: the point is which model answers, not what it says


def entries(smol: Path, tiny: Path, *more: dict[str, Any]) -> str:
    return json.dumps([{"dir": str(smol), "name": "smol"}, {"dir": str(tiny), "name": "tiny"},
                       *more])


@contextlib.asynccontextmanager
async def models_bot(tmp_path: Path, model_dirs: str, **overrides: Any) -> AsyncIterator[Harness]:
    """The bot as `run_bot` builds it (open_app with BOT_MODEL_DIRS) on the fake Discord."""
    from bot.config import load_settings

    settings = load_settings(None, **{
        "database_path": tmp_path / "bot.sqlite3", "model_dirs": model_dirs, "device": "cpu",
        "edit_interval_s": 0.2, "batch_wait_ms": 5, "cpu_threads": 1,
        "settings_write_limit": 0, **overrides,
    })
    guild = default_guild()
    async with open_app(settings, progress=lambda _line: None) as app:
        # Greedy, so what each model says (and whether it is stored) is the same every run.
        await app.store.set_knobs(Scope.server(guild.id),
                                  {"max_new_tokens": NEW_TOKENS, "top_k": 1}, actor_id=1)
        async with FakeDiscord(guilds=[guild]) as fake:
            bot = fake.make_bot(LlamaBot, app=app)
            async with fake.run_bot(bot):
                await fake.wait_for(lambda: fake.commands or None, timeout=10)
                yield Harness(fake=fake, bot=bot, app=app, guild=guild)


def footer_of(itx: FakeInteraction) -> str:
    return final_message(itx).content.rsplit("\n", 1)[-1]


def tokens_of(h: Harness, name: str) -> int:
    engine = h.app.models.loaded(name)
    return -1 if engine is None else engine.tokens_generated


async def answer_text(itx: FakeInteraction) -> str:
    data = (await itx.wait_response()).data
    embeds = data.get("embeds") or []
    return str(data.get("content") or "") + "".join(str(e.get("description", "")) for e in embeds)


async def set_model(h: Harness, name: str, channel_id: int, **kw: Any) -> str:
    kw.setdefault("permissions", MANAGE_CHANNELS)
    done = await h.command("model set", {"name": name}, channel_id=channel_id, **kw)
    return await answer_text(done)
