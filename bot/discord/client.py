"""The Discord client: built around an `App`, loads the cogs, runs until SIGTERM.

No privileged intent unless message-content mode asks for it
(`bot.discord.follow`): slash commands and buttons arrive as interactions, which
need only the default intents. Mentions are disabled client-wide and
again on every send, so model output can never ping anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.app import App, open_app
from bot.config import Settings
from bot.discord.buttons import REPLY_MODAL_PATTERN, dispatch_press, submit_reply
from bot.discord.follow import ContentMode, Follower
from bot.discord.guard import GuardedTree
from bot.discord.lab import LabRunner
from bot.discord.modals import ModalRouter
from bot.discord.runner import AskRunner
from bot.engine import FinishReason, GenerationResult
from bot.errors import UserFacingError
from bot.ops.logs import register_secret
from bot.store.identify import IdentifyGate
from bot.wording import CONTENT_INTENT_REFUSED_LOG, JOINED

if TYPE_CHECKING:
    from bot.ops.metrics import Metrics
    from bot.ops.sdnotify import Notifier

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.errors", "cogs.ask", "cogs.system", "cogs.knobs", "cogs.tokens", "cogs.status",
              "cogs.model", "cogs.help", "cogs.conversation",
              "cogs.lab")


class LlamaBot(commands.AutoShardedBot):
    """The one bot class: slash commands, buttons and the ask runner around an `App`.

    Always the auto-sharded client, so one host or many run the same code: with
    no shard settings it runs shard 0 of 1, which is what a plain client does;
    `BOT_SHARD_COUNT` / `BOT_SHARD_IDS` give a host its range of shards.
    """

    def __init__(self, app: App, *, content_mode: ContentMode | None = None,
                 **kwargs: Any) -> None:
        settings = app.settings
        mode = content_mode or ContentMode(settings.message_content)
        intents = kwargs.pop("intents", None) or discord.Intents.default()
        intents.message_content = mode.on
        options: dict[str, Any] = {
            "command_prefix": commands.when_mentioned,
            "intents": intents,
            "allowed_mentions": discord.AllowedMentions.none(),
            "help_command": None,
            "shard_count": settings.shard_count or 1,
            "shard_ids": settings.shard_ids,
            "tree_cls": GuardedTree,  # server-only commands and raw option types, checked
        }
        super().__init__(**{**options, **kwargs})
        self.app = app
        self.started_at = time.monotonic()
        self.recent_rates: deque[float] = deque(maxlen=50)
        self.ready_event = asyncio.Event()
        self.runner = AskRunner(app)
        self.content_mode = mode
        self.follower = Follower(self.runner, mode)
        # The knobs lab (/compare, /probs, Inspect): its buttons find it here.
        self.lab = LabRunner(app, self.runner)
        # Edit boxes answered by custom id, like the buttons (cogs add their own routes).
        self.modals = ModalRouter()
        self.modals.add(REPLY_MODAL_PATTERN, submit_reply)
        # Hosts sharing a PostgreSQL store take turns to identify (bot/store/identify.py).
        self.identify_gate = (
            IdentifyGate(settings.database_url.get_secret_value())
            if settings.database_url is not None else None
        )
        app.engine.on_result.append(
            lambda r: self.recent_rates.append(r.decode_tok_s) if r.decode_tok_s else None
        )

    async def login(self, token: str) -> None:
        """A bounded pool of kept-alive connections to Discord's API (discord.py's default
        has no bound: a flood of presses opened a connection per acknowledgement)."""
        self.http.connector = aiohttp.TCPConnector(limit=self.app.settings.http_connections)
        await super().login(token)

    async def setup_hook(self) -> None:
        if self.identify_gate is not None:
            await self._take_identify_concurrency(self.identify_gate)
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        if self.app.metrics is not None:
            # After the cogs: the error cog installs the tree's error handler we wrap.
            attach_metrics(self, self.app.metrics)
        guild_ids = self.app.settings.sync_guild_ids
        if guild_ids:
            for gid in guild_ids:
                guild = discord.Object(id=gid)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        log.info("slash commands synced (%s)",
                 "guilds " + str(guild_ids) if guild_ids else "global")

    async def on_message(self, message: discord.Message) -> None:
        """Followed places and auto-threads first; then mentions, replies to our answers and
        DMs, which continue conversations with no intent needed."""
        if await self.follower.handle(message, self.user):
            return
        await self.runner.handle_message(message, self.user)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Presses of our controls (bot/discord/buttons.py) and our edit boxes' submissions
        (bot/discord/modals.py), live or from before a restart."""
        if await dispatch_press(interaction):
            return
        await self.modals.dispatch(interaction)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        """A short note where the bot may post (the system channel), pinging nobody."""
        channel = guild.system_channel
        if channel is None or not channel.permissions_for(guild.me).send_messages:
            return
        with contextlib.suppress(discord.HTTPException):
            await channel.send(JOINED, allowed_mentions=discord.AllowedMentions.none())

    async def _take_identify_concurrency(self, gate: IdentifyGate) -> None:
        """Discord's `max_concurrency` for this bot (GET /gateway/bot), before any shard
        identifies; where it cannot be read, one at a time, which is always allowed."""
        try:
            limits = await self.fetch_session_start_limits()
        except (discord.HTTPException, discord.GatewayNotFound) as exc:
            log.warning("session start limits unavailable (%s); identifying one at a time", exc)
            return
        gate.max_concurrency = max(1, int(limits.max_concurrency))
        log.info("identify concurrency: %d", gate.max_concurrency)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if self.identify_gate is None:
            await super().before_identify_hook(shard_id, initial=initial)
        else:
            await self.identify_gate.wait_turn(shard_id or 0)

    async def close(self) -> None:
        await super().close()
        if self.identify_gate is not None:
            await self.identify_gate.close()

    async def on_ready(self) -> None:
        self.ready_event.set()
        count = self.shard_count or 1
        shards = list(self.shard_ids) if self.shard_ids is not None else list(range(count))
        log.info("connected as %s (shards %s of %d) to %d servers", self.user, shards, count,
                 len(self.guilds))


def make_bot(app: App, **kwargs: Any) -> LlamaBot:
    """The bot for `app` (kept for callers that build one with extra client options)."""
    return LlamaBot(app, **kwargs)


#: Finish reasons that mean the member got the whole reply they asked for.
_OK_FINISHES = frozenset({FinishReason.END, FinishReason.MAX_TOKENS, FinishReason.STOP_SEQUENCE})


def ask_outcome(result: GenerationResult) -> str:
    """The `asks_total` label for a reply that was delivered: ok, cancelled or error."""
    if result.error or result.finish_reason == FinishReason.ERROR:
        return "error"
    if result.finish_reason in _OK_FINISHES:
        return "ok"
    return "cancelled"


def _is_refusal(error: BaseException) -> bool:
    """Errors the member caused (bad input, a missing permission, "restarting"), not bugs."""
    original = getattr(error, "original", None)
    if isinstance(error, app_commands.CommandInvokeError) and original is not None:
        error = original
    return isinstance(
        error, UserFacingError | app_commands.CheckFailure | app_commands.TransformerError
    )


def attach_metrics(bot: LlamaBot, metrics: Metrics) -> Callable[[], None]:
    """Feed `metrics` from the engine, the ask runner, the command tree and the log.

    Call after the cogs are loaded (`setup_hook` does when `app.metrics` is set; a
    test may call it on a running bot). Every hook only counts, so a metrics bug
    cannot change what a member sees. Returns a function that detaches all of it.

    - tokens, time to first token, decode speed, finish reasons: the engine's
      `on_result`, once per generation that reached a model replica;
    - `asks_total{outcome}`: ok / cancelled / error when a reply (to a command, a
      button, a mention or a DM) is finished
      (interrupted replies count as cancelled), refused when /ask answers with an
      error before acknowledging (bad knobs, busy, restarting, cooldown);
    - queue depth and active replies: read at scrape time, never pushed;
    - Discord 429s and logged errors: `LogCounter`, because discord.py handles
      rate limits internally and only tells its log.
    """
    from bot.ops.metrics import LogCounter

    app = bot.app
    runner = bot.runner
    engine = app.engine
    app.metrics = metrics
    engine.on_result.append(metrics.observe)
    metrics.queue_depth_from(app.models.queue_depth)  # every model's queue
    metrics.active_replies_from(lambda: len(runner.active))

    def on_finish(_ask: Any, result: GenerationResult) -> None:
        metrics.ask(ask_outcome(result))

    runner.on_finish.append(on_finish)

    tree = bot.tree
    previous = tree.on_error

    async def counting_on_error(
        interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        command = interaction.command
        if command is not None and command.qualified_name == "ask":
            metrics.ask("refused" if _is_refusal(error) else "error")
        await previous(interaction, error)

    tree.on_error = counting_on_error  # type: ignore[method-assign]
    counter = LogCounter(metrics)
    root = logging.getLogger()
    root.addHandler(counter)

    def detach() -> None:
        with contextlib.suppress(ValueError):
            engine.on_result.remove(metrics.observe)
        with contextlib.suppress(ValueError):
            runner.on_finish.remove(on_finish)
        if tree.on_error is counting_on_error:
            tree.on_error = previous  # type: ignore[method-assign]
        root.removeHandler(counter)

    return detach


def use_endpoints(settings: Settings) -> None:
    """Point discord.py at `BOT_DISCORD_API_BASE` / `BOT_DISCORD_GATEWAY_URL` if set.

    Both are class attributes in discord.py, so this is process-wide and must run
    before the client logs in. The gateway URL serves the sharded client too (it is
    given `shard_count`, so it never asks `GET /gateway/bot`). Unset, as in
    production, leaves discord.com in place. Logged at WARNING: a bot talking to
    anything but Discord should be visible in the journal.
    """
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    if settings.discord_api_base:
        Route.BASE = settings.discord_api_base
        log.warning("using the Discord REST API at %s", settings.discord_api_base)
    if settings.discord_gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
        log.warning("using the Discord gateway at %s", settings.discord_gateway_url)


async def graceful_stop(bot: LlamaBot, grace_s: float) -> None:
    """SIGTERM: refuse new asks, let replies finish for `grace_s`, interrupt the rest, close.

    The gateway stays connected during the grace period on purpose: asks that
    arrive meanwhile are answered "restarting, try again" instead of timing out
    as "The application did not respond", and replies still stream.
    """
    log.info("stopping: letting replies finish for up to %.0f s", grace_s)
    await bot.runner.shutdown(grace_s)
    await bot.close()


async def run_bot(settings: Settings) -> int:
    """Serve Discord until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
    from bot.ops.sdnotify import Notifier

    assert settings.discord_token is not None
    token = settings.discord_token.get_secret_value()
    register_secret(token)
    use_endpoints(settings)
    notifier = Notifier.from_env()
    notifier.status("loading the model")
    async with open_app(settings, progress=lambda s: log.info("%s", s)) as app:
        metrics_server = None
        if settings.metrics_port:
            from bot.ops.metrics import Metrics

            metrics = Metrics()
            metrics_server = metrics.start_server(settings.metrics_port)
            app.metrics = metrics  # wired to the bot in setup_hook, once the cogs load
        mode = ContentMode(settings.message_content)
        while True:
            bot = make_bot(app, content_mode=mode)
            try:
                await _serve(bot, app, token, notifier, settings)
            except discord.PrivilegedIntentsRequired:
                if not mode.on:
                    raise
                # The Portal switch is off: say how to fix it, and serve without the mode
                # rather than not at all (/status says so too).
                log.error("%s", CONTENT_INTENT_REFUSED_LOG)
                mode = ContentMode(wanted=True, refused=True)
                continue
            break
        if metrics_server is not None:
            with contextlib.suppress(Exception):
                metrics_server.close()
    log.info("stopped cleanly")
    return 0


async def _serve(bot: LlamaBot, app: App, token: str, notifier: Notifier,
                 settings: Settings) -> None:
    """Run `bot` until it closes: a signal stops it gracefully; systemd hears ready/stopping."""
    from bot.ops.sdnotify import watchdog_loop

    loop = asyncio.get_running_loop()
    stopping: asyncio.Task[None] | None = None

    def on_term() -> None:
        nonlocal stopping
        if stopping is None:
            # Refuse asks from this instant, before anything else runs: an ask
            # arriving after STOPPING=1 must never start a reply we then cut off.
            bot.runner.accepting = False
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
        if stopping is None:
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
