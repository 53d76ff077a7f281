"""The Discord client: built around an `App`, loads the cogs, runs until SIGTERM.

No privileged intents: slash commands and buttons arrive as interactions,
which need only the default intents. Mentions are disabled client-wide and
again on every send, so model output can never ping anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from typing import Any

import discord
from discord.ext import commands

from bot.app import App, open_app
from bot.config import Settings
from bot.discord_reply import AskRunner, RegenerateButton, StopButton
from bot.logs import register_secret

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.errors", "cogs.ask", "cogs.system", "cogs.knobs", "cogs.tokens", "cogs.status")


class _LlamaMixin:
    """Shared by the plain and the auto-sharded client."""

    app: App
    runner: AskRunner
    started_at: float
    recent_rates: deque[float]
    ready_event: asyncio.Event

    def _init_llama(self, app: App) -> None:
        self.app = app
        self.started_at = time.monotonic()
        self.recent_rates = deque(maxlen=50)
        self.ready_event = asyncio.Event()
        self.runner = AskRunner(self)  # type: ignore[arg-type]
        app.engine.on_result.append(
            lambda r: self.recent_rates.append(r.decode_tok_s) if r.decode_tok_s else None
        )

    async def _setup_llama(self) -> None:
        bot: commands.Bot = self  # type: ignore[assignment]
        for ext in EXTENSIONS:
            await bot.load_extension(ext)
        bot.add_dynamic_items(StopButton, RegenerateButton)
        guild_ids = self.app.settings.sync_guild_ids
        if guild_ids:
            for gid in guild_ids:
                guild = discord.Object(id=gid)
                bot.tree.copy_global_to(guild=guild)
                await bot.tree.sync(guild=guild)
        else:
            await bot.tree.sync()
        log.info("slash commands synced (%s)", "guilds " + str(guild_ids) if guild_ids else "global")


def _client_kwargs() -> dict[str, Any]:
    return {
        "command_prefix": commands.when_mentioned,
        "intents": discord.Intents.default(),
        "allowed_mentions": discord.AllowedMentions.none(),
        "help_command": None,
    }


class LlamaBot(_LlamaMixin, commands.Bot):
    def __init__(self, app: App, **kwargs: Any) -> None:
        super().__init__(**{**_client_kwargs(), **kwargs})
        self._init_llama(app)

    async def setup_hook(self) -> None:
        await self._setup_llama()

    async def on_ready(self) -> None:
        self.ready_event.set()
        log.info("connected as %s to %d servers", self.user, len(self.guilds))


class ShardedLlamaBot(_LlamaMixin, commands.AutoShardedBot):
    def __init__(self, app: App, **kwargs: Any) -> None:
        super().__init__(**{**_client_kwargs(), **kwargs})
        self._init_llama(app)

    async def setup_hook(self) -> None:
        await self._setup_llama()

    async def on_ready(self) -> None:
        self.ready_event.set()
        log.info("connected as %s (shards %s) to %d servers", self.user, self.shard_ids,
                 len(self.guilds))


def make_bot(app: App, **kwargs: Any) -> LlamaBot | ShardedLlamaBot:
    """A sharded client when shards are configured (several hosts), else a plain one."""
    settings = app.settings
    if settings.shard_count is not None:
        return ShardedLlamaBot(
            app, shard_count=settings.shard_count, shard_ids=settings.shard_ids, **kwargs
        )
    return LlamaBot(app, **kwargs)


async def graceful_stop(bot: LlamaBot | ShardedLlamaBot, grace_s: float) -> None:
    """SIGTERM: refuse new asks, let replies finish for `grace_s`, interrupt the rest, close."""
    log.info("stopping: letting replies finish for up to %.0f s", grace_s)
    await bot.runner.shutdown(grace_s)
    await bot.close()


async def run_bot(settings: Settings) -> int:
    from bot.sdnotify import Notifier, watchdog_loop

    assert settings.discord_token is not None
    token = settings.discord_token.get_secret_value()
    register_secret(token)
    notifier = Notifier.from_env()
    notifier.status("loading the model")
    async with open_app(settings, progress=lambda s: log.info("%s", s)) as app:
        metrics_server = None
        if settings.metrics_port:
            from bot.metrics import Metrics

            metrics = Metrics()
            metrics_server = metrics.start_server(settings.metrics_port)
            app.metrics = metrics
        bot = make_bot(app)
        loop = asyncio.get_running_loop()
        stopping: asyncio.Task[None] | None = None

        def on_term() -> None:
            nonlocal stopping
            if stopping is None:
                notifier.stopping()
                stopping = asyncio.create_task(graceful_stop(bot, settings.shutdown_grace_s))

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_term)
        watchdog: asyncio.Task[None] | None = None
        interval = notifier.watchdog_interval()
        if interval:
            watchdog = asyncio.create_task(watchdog_loop(notifier, interval))

        async def announce_ready() -> None:
            await bot.ready_event.wait()
            notifier.ready(status=f"serving {app.engine.info.model_name}")

        ready_task = asyncio.create_task(announce_ready())
        try:
            async with bot:
                await bot.start(token)
        finally:
            ready_task.cancel()
            if watchdog is not None:
                watchdog.cancel()
            if stopping is not None:
                with contextlib.suppress(Exception):
                    await stopping
            if metrics_server is not None:
                with contextlib.suppress(Exception):
                    metrics_server.close()
    log.info("stopped cleanly")
    return 0
