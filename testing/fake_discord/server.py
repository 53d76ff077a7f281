"""`FakeDiscord`: the layers of the fake put together, plus how a test starts and stops it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar, overload

import discord
import yarl
from aiohttp import web
from discord.ext import commands

from testing.fake_discord.inject import Inject
from testing.fake_discord.rest import Rest
from testing.fake_discord.world import FakeGuild, World

ClientT = TypeVar("ClientT", bound=discord.Client)


class FakeDiscord(Inject, Rest):
    """Discord's REST API and gateway for one application, served by aiohttp on 127.0.0.1.

    One object, one world: each base class is a layer of the fake (`World` the state,
    `Records` the request log, `Http` faults and buckets, `Gateway` the websocket,
    `Rest` the routes, `Inject` what members do), and every layer reads and changes
    the same guilds, messages, interactions and sessions.

    Everything is recorded (`requests`, `messages`, `interactions`, `gateway_received`)
    and failures are injected on demand (`fail_next`, `delay`, `send_reconnect`,
    `close_gateway`, `invalidate_session`). With `enforce_buckets=True` webhook edits
    (per token) and channel messages (per channel) are limited to `bucket_limit` per
    `bucket_window` seconds and every such response carries Discord's X-RateLimit-*
    headers, so discord.py's own limiter can be tested against it.
    """

    def __init__(
        self,
        *,
        guilds: Sequence[FakeGuild] | None = None,
        shard_count: int = 1,
        max_concurrency: int = 1,
        application_id: int = 1_100_000_000_000_000_001,
        bot_name: str = "llamacord",
        token: str | None = None,
        enforce_buckets: bool = False,
        bucket_limit: int = 5,
        bucket_window: float = 5.0,
        callback_deadline: float | None = 3.0,
        heartbeat_interval_ms: int = 41_250,
        validate: bool = True,
        privileged_intents: int = 0,
    ) -> None:
        """`token=None` accepts any token; `callback_deadline` is Discord's 3 s to answer.

        `validate` checks every request against Discord's schemas and rules (see
        `validation`); a refusal left untaken fails the `async with` block on exit.
        `privileged_intents` are those switched on in the Developer Portal
        (`INTENT_MESSAGE_CONTENT`, ...): an IDENTIFY asking for any other privileged
        intent is closed with 4014, as Discord does. `max_concurrency` is what
        ``GET /gateway/bot`` says may identify at once.
        """
        World.__init__(
            self,
            guilds=guilds,
            shard_count=shard_count,
            max_concurrency=max_concurrency,
            application_id=application_id,
            bot_name=bot_name,
            token=token,
        )
        self._setup_records()
        self._setup_validation(validate=validate)
        self._setup_http(
            enforce_buckets=enforce_buckets, bucket_limit=bucket_limit, bucket_window=bucket_window
        )
        self._setup_gateway(heartbeat_interval_ms=heartbeat_interval_ms,
                            privileged_intents=privileged_intents)
        self._setup_rest(callback_deadline=callback_deadline)
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        await self.close()
        if exc_type is None:
            self.assert_no_refusals()

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port (never on a public interface)."""
        app = web.Application(middlewares=[self._middleware])
        self._add_gateway_routes(app.router)
        self._add_rest_routes(app.router)
        self._catch_all = app.router.add_route("*", "/{tail:.*}", self._unknown).resource
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Close every gateway socket, stop serving and undo `patch_discord`."""
        await self._close_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.unpatch_discord()

    def patch_discord(self) -> FakeDiscord:
        """Point discord.py's REST base and default gateway here; undone on exit."""
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        if self._saved is None:
            self._saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = self.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        return self

    def unpatch_discord(self) -> None:
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        if self._saved is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None

    # ------------------------------------------------------------------ bot helpers

    @overload
    def make_bot(self, cls: None = None, **kwargs: Any) -> commands.Bot: ...

    @overload
    def make_bot(self, cls: type[ClientT], **kwargs: Any) -> ClientT: ...

    def make_bot(self, cls: type[discord.Client] | None = None, **kwargs: Any) -> discord.Client:
        """Build a client with test-friendly defaults (`build_client`) pointed at this fake."""
        self.patch_discord()
        return build_client(cls or commands.Bot, **kwargs)

    @contextlib.asynccontextmanager
    async def run_bot(
        self, bot: ClientT, *, token: str = "fake-token", ready_timeout: float = 10.0
    ) -> AsyncIterator[ClientT]:
        """Log in, connect, wait for `on_ready`; on exit close the bot and await its task."""
        self.patch_discord()
        async with running_client(bot, token=token, ready_timeout=ready_timeout):
            yield bot


# ---------------------------------------------------------------------- clients of any fake
# Shared with a fake served from another process (`testing.fake_discord.process`).


@contextlib.contextmanager
def discord_pointed_at(api_base: str, gateway_url: str) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at a fake; restore them on exit."""
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    Route.BASE = api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


def build_client(cls: type[ClientT], **kwargs: Any) -> ClientT:
    """Build a client with test-friendly defaults (discord.py must point at a fake).

    Defaults: `Intents.default()`, `command_prefix=when_mentioned` for `commands.Bot`,
    `guild_ready_timeout=0.05` (discord.py waits that long after the last
    GUILD_CREATE before `on_ready`) and no 5 s sleep before a non-initial IDENTIFY
    (discord.py's `before_identify_hook` default, there to respect Discord's
    identify rate limit, which the fake does not have).
    """
    kwargs.setdefault("intents", discord.Intents.default())
    kwargs.setdefault("guild_ready_timeout", 0.05)
    if issubclass(cls, commands.bot.BotBase):
        # when_mentioned: no prefix commands, so no message-content-intent warning.
        kwargs.setdefault("command_prefix", commands.when_mentioned)
    bot = cls(**kwargs)

    async def no_identify_wait(shard_id: int | None, *, initial: bool = False) -> None:
        return None

    setattr(bot, "before_identify_hook", no_identify_wait)  # noqa: B010
    return bot


@contextlib.asynccontextmanager
async def running_client(
    bot: ClientT, *, token: str = "fake-token", ready_timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Log in, connect, wait for `on_ready`; on exit close the bot and await its task."""
    task: asyncio.Task[None] | None = None
    try:
        await bot.login(token)
        task = asyncio.create_task(bot.connect(reconnect=True), name="fake-discord-bot")
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, task}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # raise the connection error
            raise TimeoutError(f"bot not ready after {ready_timeout} s")
        yield bot
    finally:
        await bot.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, discord.ConnectionClosed):
                await asyncio.wait_for(task, 10)
