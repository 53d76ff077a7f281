"""A fake Discord (REST API and gateway) on 127.0.0.1, driven by the real discord.py client.

Why a fake rather than mocks: the behaviour worth testing lives in discord.py itself —
its rate-limit pacing, its retries on 429/5xx, RESUME after a RECONNECT, how it parses
READY and INTERACTION_CREATE. Mocking discord.py's classes would test our guesses about
it; pointing the real client at a small server tests the bot as it runs in production.
The benchmark (`python -m bot bench --discord`) uses the same fake to measure edit
pacing, which is why this lives in the package and not under `tests/`.

Usage::

    async with FakeDiscord(guilds=[default_guild()]) as fake:
        fake.patch_discord()              # Route.BASE and DEFAULT_GATEWAY -> the fake
        bot = fake.make_bot()             # commands.Bot with test-friendly defaults
        async with fake.run_bot(bot):     # login, connect, wait for on_ready; close after
            itx = await fake.inject_interaction("ask", {"prompt": "hi"})
            original = await itx.wait_original(lambda m: m.content.endswith("."))
            assert fake.edits(itx.token)[-1] == original.content

Route templates (`RecordedRequest.route`, `fail_next`, `delay`, `requests_for`) are
discord.py's own `Route` paths verbatim, e.g.
``"PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"``.

Limitations (by design): `Route.BASE` and `DEFAULT_GATEWAY` are process-wide, so only one
patched fake per process at a time; events are sent as plain JSON text frames even
though discord.py asks for zlib-stream (it accepts both); no voice, no zlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import discord
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from discord.ext import commands

__all__ = [
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeRole",
    "FakeStats",
    "FakeUser",
    "Fault",
    "GatewaySession",
    "InteractionCallback",
    "RecordedRequest",
    "Routes",
    "StoredMessage",
    "default_guild",
]

JSONDict = dict[str, Any]
T = TypeVar("T")
ClientT = TypeVar("ClientT", bound=discord.Client)

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DM_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
# Gateway close codes after which Discord refuses a RESUME of the same session.
NON_RESUMABLE_CLOSE_CODES = frozenset({4007, 4009})
DEFAULT_MEMBER_PERMISSIONS = str(
    discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        read_message_history=True,
        embed_links=True,
        attach_files=True,
        use_application_commands=True,
    ).value
)


class Routes:
    """discord.py's route templates, so tests need not spell them out."""

    USERS_ME = "GET /users/@me"
    APPLICATION_INFO = "GET /oauth2/applications/@me"
    GATEWAY_BOT = "GET /gateway/bot"
    SYNC_GLOBAL = "PUT /applications/{application_id}/commands"
    SYNC_GUILD = "PUT /applications/{application_id}/guilds/{guild_id}/commands"
    CALLBACK = "POST /interactions/{webhook_id}/{webhook_token}/callback"
    GET_ORIGINAL = "GET /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    EDIT_ORIGINAL = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    DELETE_ORIGINAL = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
    EDIT_FOLLOWUP = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    DELETE_FOLLOWUP = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    SEND_MESSAGE = "POST /channels/{channel_id}/messages"
    EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
    DELETE_MESSAGE = "DELETE /channels/{channel_id}/messages/{message_id}"
    TYPING = "POST /channels/{channel_id}/typing"
    START_THREAD = "POST /channels/{channel_id}/messages/{message_id}/threads"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class _Snowflakes:
    """Makes ids that look like Discord's (time-ordered), so `created_at` is sensible."""

    def __init__(self) -> None:
        self._counter = 0

    def next(self) -> int:
        self._counter = (self._counter + 1) & 0xFFF
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | self._counter


# --------------------------------------------------------------------------- world model


@dataclass(frozen=True)
class FakeUser:
    """A Discord user; `bot=True` for the application's own bot user."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def to_payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(frozen=True)
class FakeRole:
    """A guild role; `permissions` is Discord's decimal permission string."""

    id: int
    name: str
    permissions: str = "0"
    position: int = 0

    def to_payload(self) -> JSONDict:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": self.permissions,
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass(frozen=True)
class FakeChannel:
    """A guild channel. Types: 0 text, 2 voice, 4 category, 11 public thread (with parent_id)."""

    id: int
    name: str
    type: int = 0
    parent_id: int | None = None
    position: int = 0
    topic: str | None = None

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def to_payload(self, guild_id: int, owner_id: int) -> JSONDict:
        data: JSONDict = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "guild_id": str(guild_id),
            "parent_id": None if self.parent_id is None else str(self.parent_id),
            "flags": 0,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        if self.is_thread:
            data.update(
                owner_id=str(owner_id),
                message_count=0,
                member_count=1,
                total_message_sent=0,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
            )
        else:
            data.update(position=self.position, permission_overwrites=[], nsfw=False)
            if self.type == 0:
                data["topic"] = self.topic
            if self.type == 2:
                data.update(bitrate=64000, user_limit=0)
        return data


@dataclass
class FakeGuild:
    """A guild the bot is in. The @everyone role (id == guild id) is added if missing.

    Which shard sees the guild follows Discord: ``(id >> 22) % shard_count``.
    """

    id: int
    name: str
    channels: list[FakeChannel] = field(default_factory=list)
    roles: list[FakeRole] = field(default_factory=list)
    members: list[FakeUser] = field(default_factory=list)
    owner_id: int | None = None

    def __post_init__(self) -> None:
        if not any(r.id == self.id for r in self.roles):
            self.roles.insert(0, FakeRole(self.id, "@everyone", DEFAULT_MEMBER_PERMISSIONS))

    def shard_id(self, shard_count: int) -> int:
        return (self.id >> 22) % max(shard_count, 1)

    def channel(self, channel_id: int) -> FakeChannel | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    def member_payload(self, user: FakeUser, roles: Sequence[int] = ()) -> JSONDict:
        return {
            "user": user.to_payload(),
            "roles": [str(r) for r in roles],
            "joined_at": _now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
        }

    def to_payload(self, bot_user: FakeUser) -> JSONDict:
        """GUILD_CREATE payload (full guild, `unavailable: false`, as after READY)."""
        members = [self.member_payload(bot_user)]
        members += [self.member_payload(m) for m in self.members if m.id != bot_user.id]
        owner = self.owner_id or (self.members[0].id if self.members else bot_user.id)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(owner),
            "unavailable": False,
            "member_count": len(members),
            "large": False,
            "features": [],
            "preferred_locale": "en-US",
            "roles": [r.to_payload() for r in self.roles],
            "channels": [c.to_payload(self.id, owner) for c in self.channels if not c.is_thread],
            "threads": [c.to_payload(self.id, owner) for c in self.channels if c.is_thread],
            "members": members,
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "joined_at": _now_iso(),
        }


def default_guild(guild_id: int = (1 << 22) * 1000 + 1, name: str = "Fake Guild") -> FakeGuild:
    """A guild with #general, a #general thread, a #help channel, a Mod role and one human."""
    base = guild_id
    return FakeGuild(
        id=guild_id,
        name=name,
        channels=[
            FakeChannel(base + 10, "general", 0, position=0),
            FakeChannel(base + 11, "help", 0, position=1),
            FakeChannel(base + 12, "a-thread", 11, parent_id=base + 10),
        ],
        roles=[FakeRole(base + 20, "Mod", str(discord.Permissions(manage_messages=True).value), 1)],
        members=[FakeUser(base + 30, "tester", "Tester")],
    )


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One REST request as the fake saw it. `route` is discord.py's path template."""

    method: str
    path: str
    route: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    time: float
    files: list[tuple[str, int]] = field(default_factory=list)
    status: int | None = None
    finished: float | None = None  # time.monotonic() when the response was ready

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


@dataclass
class InteractionCallback:
    """An interaction response (POST .../callback): type 4, 5, 6, 7, 8 or 9 and its data."""

    type: int
    data: JSONDict
    time: float


@dataclass
class StoredMessage:
    """A message as it currently stands after every edit, plus its history.

    `revisions` holds a snapshot (`content`, `embeds`, `components`, `flags`) taken at
    creation and after each successful edit, so a test can see what users saw, in order.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: JSONDict
    content: str = ""
    embeds: list[JSONDict] = field(default_factory=list)
    components: list[JSONDict] = field(default_factory=list)
    attachments: list[JSONDict] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    webhook_id: int | None = None
    interaction_token: str | None = None
    created: str = field(default_factory=_now_iso)
    edited: str | None = None
    deleted: bool = False
    revisions: list[JSONDict] = field(default_factory=list)

    def snapshot(self) -> JSONDict:
        return {
            "content": self.content,
            "embeds": list(self.embeds),
            "components": list(self.components),
            "flags": self.flags,
        }

    def to_payload(self) -> JSONDict:
        data: JSONDict = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": self.created,
            "edited_timestamp": self.edited,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        return data


@dataclass
class Fault:
    """A planned failure: answer the next `times` matching requests with `status`."""

    match: Callable[[RecordedRequest], bool]
    status: int
    times: int
    retry_after: float
    global_: bool
    message: str | None
    code: int | None
    hits: int = 0


@dataclass
class _Delay:
    match: Callable[[RecordedRequest], bool]
    seconds: float
    times: int | None


@dataclass
class FakeStats:
    """Counters a test or the benchmark can assert on."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0  # 429s the fake's own buckets answered
    faults: int = 0  # responses forced by fail_next
    gateway_connections: int = 0
    identifies: int = 0
    resumes: int = 0
    resume_rejected: int = 0


@dataclass
class _Bucket:
    limit: int
    window: float
    used: int = 0
    reset_at: float = 0.0


@dataclass
class GatewaySession:
    """One IDENTIFYed session: its shard, sequence, socket (None between connections)
    and the events sent, kept so a RESUME can replay what the client missed."""

    session_id: str
    shard: tuple[int, int] | None
    intents: int
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    resumable: bool = True
    history: deque[JSONDict] = field(default_factory=lambda: deque(maxlen=1000))

    @property
    def live(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def covers(self, guild_id: int | None) -> bool:
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return ((guild_id or 0) >> 22) % count == shard_id


class FakeInteraction:
    """Handle on an injected interaction: its id/token and what the bot did with it."""

    def __init__(self, fake: FakeDiscord, payload: JSONDict) -> None:
        self.fake = fake
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.created = time.monotonic()
        self.callbacks: list[InteractionCallback] = []
        self.original_id: int | None = None
        self.followup_ids: list[int] = []
        self.expired = False

    @property
    def response(self) -> InteractionCallback | None:
        """The first (and only accepted) callback, if the bot has answered."""
        return self.callbacks[0] if self.callbacks else None

    @property
    def original(self) -> StoredMessage | None:
        return None if self.original_id is None else self.fake.messages.get(self.original_id)

    @property
    def followups(self) -> list[StoredMessage]:
        return [self.fake.messages[i] for i in self.followup_ids]

    @property
    def modal(self) -> JSONDict | None:
        """The modal the bot opened (callback type 9), as Discord received it."""
        return next((c.data for c in self.callbacks if c.type == 9), None)

    async def wait_response(self, timeout: float = 5.0) -> InteractionCallback:  # noqa: ASYNC109 - tests read better with timeout=
        return await self.fake.wait_for(lambda: self.response, timeout=timeout)

    async def wait_original(
        self,
        predicate: Callable[[StoredMessage], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with timeout=
    ) -> StoredMessage:
        """Wait until the original response exists and, if given, satisfies `predicate`."""

        def check() -> StoredMessage | None:
            msg = self.original
            if msg is None or (predicate is not None and not predicate(msg)):
                return None
            return msg

        return await self.fake.wait_for(check, timeout=timeout)

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[StoredMessage]:  # noqa: ASYNC109 - tests read better with timeout=
        return await self.fake.wait_for(
            lambda: self.followups if len(self.followup_ids) >= count else None, timeout=timeout
        )


# --------------------------------------------------------------------------- the fake


class _HTTPError(Exception):
    """Raised by a handler to answer with Discord's error JSON."""

    def __init__(self, status: int, message: str, code: int, errors: JSONDict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors


def _json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response whose Content-Type is exactly `application/json`.

    discord.py compares the header with `==`; aiohttp's `json_response` appends a
    charset, which would make discord.py treat every body as text.
    """
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def _error_body(status: int, route: str, message: str | None, code: int | None) -> JSONDict:
    defaults: dict[int, tuple[str, int]] = {
        400: ("400: Bad Request", 0),
        401: ("401: Unauthorized", 0),
        403: ("Missing Permissions", 50013),
        404: ("Unknown Webhook", 10015)
        if "/webhooks/" in route or "/interactions/" in route
        else ("Unknown Message", 10008),
        500: ("500: Internal Server Error", 0),
        502: ("502: Bad Gateway", 0),
        503: ("503: Service Unavailable", 0),
    }
    default_message, default_code = defaults.get(status, (f"{status}: Error", 0))
    return {
        "message": message or default_message,
        "code": default_code if code is None else code,
    }


def _route_matcher(
    route: str | Callable[[RecordedRequest], bool],
) -> Callable[[RecordedRequest], bool]:
    """Accept "METHOD /template", "/template" or a predicate on the recorded request."""
    if callable(route):
        return route
    method, _, template = route.partition(" ") if " " in route else ("", "", route)
    template = template.removeprefix(API_PREFIX)

    def match(req: RecordedRequest) -> bool:
        return req.route == template and (not method or req.method == method.upper())

    return match


def _length_errors(payload: Mapping[str, Any]) -> JSONDict:
    """Discord's message limits, so over-long LLM output fails here as it would in production."""
    errors: JSONDict = {}

    def too_long(limit: int) -> JSONDict:
        return {
            "_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}
            ]
        }

    content = payload.get("content")
    if isinstance(content, str) and len(content) > 2000:
        errors["content"] = too_long(2000)
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors["embeds"] = too_long(10)
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in (("title", 256), ("description", 4096)):
            value = embed.get(key) or ""
            total += len(value)
            if len(value) > limit:
                errors.setdefault("embeds", {}).setdefault(str(index), {})[key] = too_long(limit)
    if total > 6000 and "embeds" not in errors:
        errors["embeds"] = {
            "_errors": [
                {
                    "code": "MAX_EMBED_SIZE_EXCEEDED",
                    "message": "Embed size exceeds maximum size of 6000",
                }
            ]
        }
    return errors


_RECORD_KEY = web.RequestKey("fake_discord_record", RecordedRequest)


class FakeDiscord:
    """Discord's REST API and gateway for one application, served by aiohttp on 127.0.0.1.

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
        application_id: int = 1_100_000_000_000_000_001,
        bot_name: str = "llamacord",
        token: str | None = None,
        enforce_buckets: bool = False,
        bucket_limit: int = 5,
        bucket_window: float = 5.0,
        callback_deadline: float | None = 3.0,
        heartbeat_interval_ms: int = 41_250,
    ) -> None:
        """`token=None` accepts any token; `callback_deadline` is Discord's 3 s to answer."""
        self.application_id = application_id
        self.bot_user = FakeUser(application_id, bot_name, bot_name, bot=True)
        self.guilds: list[FakeGuild] = list(guilds) if guilds is not None else [default_guild()]
        self.shard_count = shard_count
        self.token = token
        self.enforce_buckets = enforce_buckets
        self.bucket_limit = bucket_limit
        self.bucket_window = bucket_window
        self.callback_deadline = callback_deadline
        self.heartbeat_interval_ms = heartbeat_interval_ms

        self.requests: list[RecordedRequest] = []
        self.messages: dict[int, StoredMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands: dict[int | None, list[JSONDict]] = {}
        self.gateway_received: list[JSONDict] = []
        self.gateway_paths: list[str] = []
        self.stats = FakeStats()

        self._ids = _Snowflakes()
        self._command_ids: dict[tuple[int | None, str], int] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self._faults: list[Fault] = []
        self._delays: list[_Delay] = []
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._sessions: dict[str, GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._server_closed: set[web.WebSocketResponse] = set()
        self._dm_channels: set[int] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._catch_all: web.AbstractResource | None = None
        self._saved: tuple[str, yarl.URL] | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port (never on a public interface)."""
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Close every gateway socket, stop serving and undo `patch_discord`."""
        for ws in list(self._sockets):
            self._server_closed.add(ws)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"fake shutting down"), 2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.unpatch_discord()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` must be set to."""
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """Where a plain Client connects first (`DiscordWebSocket.DEFAULT_GATEWAY`)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """READY's resume URL: a separate path so tests can tell resumes apart."""
        return f"ws://127.0.0.1:{self.port}/gateway/resume"

    @property
    def bot_gateway_url(self) -> str:
        """The URL `GET /gateway/bot` hands to an AutoShardedClient."""
        return f"ws://127.0.0.1:{self.port}/gateway/sharded"

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
        """Build a client with test-friendly defaults and patch discord.py to use this fake.

        Defaults: `Intents.default()`, `command_prefix=when_mentioned` for `commands.Bot`,
        `guild_ready_timeout=0.05` (discord.py waits that long after the last
        GUILD_CREATE before `on_ready`) and no 5 s sleep before a non-initial IDENTIFY
        (discord.py's `before_identify_hook` default, there to respect Discord's
        identify rate limit, which the fake does not have).
        """
        self.patch_discord()
        kwargs.setdefault("intents", discord.Intents.default())
        kwargs.setdefault("guild_ready_timeout", 0.05)
        cls = cls or commands.Bot
        if issubclass(cls, commands.bot.BotBase):
            # when_mentioned: no prefix commands, so no message-content-intent warning.
            kwargs.setdefault("command_prefix", commands.when_mentioned)
        bot = cls(**kwargs)

        async def no_identify_wait(shard_id: int | None, *, initial: bool = False) -> None:
            return None

        setattr(bot, "before_identify_hook", no_identify_wait)  # noqa: B010
        return bot

    @contextlib.asynccontextmanager
    async def run_bot(
        self, bot: ClientT, *, token: str = "fake-token", ready_timeout: float = 10.0
    ) -> AsyncIterator[ClientT]:
        """Log in, connect, wait for `on_ready`; on exit close the bot and await its task."""
        self.patch_discord()
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

    # ------------------------------------------------------------------ queries

    def requests_for(self, route: str | Callable[[RecordedRequest], bool]) -> list[RecordedRequest]:
        """Recorded requests matching "METHOD /template", "/template" or a predicate."""
        match = _route_matcher(route)
        return [r for r in self.requests if match(r)]

    def interaction(self, token_or_id: str | int) -> FakeInteraction:
        if isinstance(token_or_id, int):
            return self.interactions[token_or_id]
        return self._by_token[token_or_id]

    def message(self, message_id: int | str) -> StoredMessage:
        return self.messages[int(message_id)]

    def original(self, token: str) -> StoredMessage | None:
        """The interaction's original response as it stands now (None if never sent)."""
        return self._by_token[token].original

    def edits(self, token: str, message_id: int | str = "@original") -> list[str]:
        """The content after each successful edit of that message, in order.

        Creation (e.g. the deferred "thinking" message) is not an edit; 429'd or failed
        attempts are not counted, since users never saw them.
        """
        itx = self._by_token[token]
        target = itx.original_id if message_id == "@original" else int(message_id)
        if target is None:
            return []
        return [rev["content"] for rev in self.messages[target].revisions[1:]]

    @property
    def sessions(self) -> list[GatewaySession]:
        """Every gateway session so far, oldest first."""
        return list(self._sessions.values())

    def channel_messages(self, channel_id: int) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    def guild(self, guild_id: int) -> FakeGuild:
        return next(g for g in self.guilds if g.id == guild_id)

    def find_channel(self, channel_id: int) -> tuple[FakeGuild, FakeChannel] | None:
        for guild in self.guilds:
            channel = guild.channel(channel_id)
            if channel is not None:
                return guild, channel
        return None

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 5.0) -> T:  # noqa: ASYNC109 - tests read better with timeout=
        """Wait until `predicate()` is truthy and return its value.

        Re-checked whenever the fake's state changes and at least every 50 ms (the
        predicate may look at the bot's state too).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        route: str | Callable[[RecordedRequest], bool],
        status: int = 500,
        *,
        times: int = 1,
        retry_after: float = 0.1,
        global_: bool = False,
        message: str | None = None,
        code: int | None = None,
    ) -> Fault:
        """Answer the next `times` matching requests with `status` and Discord's error body.

        A 429 carries `retry_after` in the body, `Retry-After`, `X-RateLimit-*`,
        `X-RateLimit-Scope` (`global` or `user`) and `Via: 1.1 google` — without `Via`
        discord.py treats a 429 as a Cloudflare ban and does not retry. Note discord.py
        retries 500/502/504 (after 1 s, 3 s, ...) but raises on 503 from `HTTPClient`.
        """
        fault = Fault(_route_matcher(route), status, times, retry_after, global_, message, code)
        self._faults.append(fault)
        return fault

    def delay(
        self,
        route: str | Callable[[RecordedRequest], bool],
        seconds: float,
        *,
        times: int | None = None,
    ) -> None:
        """Hold matching requests for `seconds` before handling them (None: every one)."""
        self._delays.append(_Delay(_route_matcher(route), seconds, times))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def expire_token(self, token: str) -> None:
        """Make an interaction token behave as after Discord's 15 minutes (401, 50027)."""
        self._by_token[token].expired = True

    # ------------------------------------------------------------------ HTTP plumbing

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/gateway/resume", self._gateway)
        r.add_get("/gateway/sharded", self._gateway)
        r.add_get(p + "/users/@me", self._users_me)
        r.add_get(p + "/oauth2/applications/@me", self._application_info)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway_bot)
        r.add_route("*", p + "/applications/{application_id}/commands", self._commands)
        r.add_route(
            "*", p + "/applications/{application_id}/guilds/{guild_id}/commands", self._commands
        )
        r.add_post(p + "/interactions/{webhook_id}/{webhook_token}/callback", self._callback)
        r.add_route(
            "*",
            p + "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
            self._webhook_message,
        )
        r.add_route(
            "*",
            p + "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
            self._webhook_message,
        )
        r.add_post(p + "/webhooks/{webhook_id}/{webhook_token}", self._followup)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        r.add_post(p + "/channels/{channel_id}/messages", self._channel_message)
        r.add_route("*", p + "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        r.add_post(p + "/channels/{channel_id}/messages/{message_id}/threads", self._start_thread)
        self._catch_all = r.add_route("*", "/{tail:.*}", self._unknown).resource

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Record, then apply delays, faults and buckets, then the handler."""
        if request.path.startswith("/gateway"):
            return await handler(request)
        record = await self._record(request)
        request[_RECORD_KEY] = record
        response = await self._respond(request, record)
        record.status = response.status
        record.finished = time.monotonic()
        self.stats.by_status[response.status] += 1
        self._notify()
        return response

    async def _respond(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        for d in list(self._delays):
            if d.match(record):
                if d.times is not None:
                    d.times -= 1
                    if d.times <= 0:
                        self._delays.remove(d)
                await asyncio.sleep(d.seconds)
        for fault in self._faults:
            if fault.times > 0 and fault.match(record):
                fault.times -= 1
                fault.hits += 1
                self.stats.faults += 1
                return self._fault_response(fault, record)
        bucket_headers: dict[str, str] = {}
        key = self._bucket_key(record)
        if key is not None:
            limited, bucket_headers = self._take_bucket(key)
            if limited is not None:
                return limited
        handler = request.match_info.handler
        try:
            response = await handler(request)
        except _HTTPError as exc:
            body = {"message": exc.message, "code": exc.code}
            if exc.errors:
                body["errors"] = exc.errors
            response = _json_response(body, exc.status)
        response.headers.update(bucket_headers)
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else ""
        if resource is self._catch_all:
            template = ""
        body: Any = None
        files: list[tuple[str, int]] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append((part.filename or "", len(data)))
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        record = RecordedRequest(
            method=request.method,
            path=request.path.removeprefix(API_PREFIX),
            route=template.removeprefix(API_PREFIX),
            params=dict(request.match_info),
            query=dict(request.query),
            json=body,
            headers=dict(request.headers),
            time=time.monotonic(),
            files=files,
        )
        self.requests.append(record)
        self.stats.requests += 1
        return record

    def _fault_response(self, fault: Fault, record: RecordedRequest) -> web.Response:
        if fault.status != 429:
            return _json_response(
                _error_body(fault.status, record.route, fault.message, fault.code), fault.status
            )
        body: JSONDict = {
            "message": fault.message or "You are being rate limited.",
            "retry_after": fault.retry_after,
            "global": fault.global_,
        }
        if fault.code is not None:
            body["code"] = fault.code
        headers = {
            "Retry-After": str(max(1, math.ceil(fault.retry_after))),
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
            "Via": "1.1 google",
        }
        if fault.global_:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(
                {
                    "X-RateLimit-Limit": "1",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
                }
            )
        return _json_response(body, 429, headers)

    def _bucket_key(self, record: RecordedRequest) -> tuple[str, str] | None:
        """Which of the fake's buckets a request falls in, if `enforce_buckets`."""
        if not self.enforce_buckets:
            return None
        if record.method == "PATCH" and record.route.startswith("/webhooks/"):
            return ("webhook-edit", record.params.get("webhook_token", ""))
        if record.route.startswith("/channels/{channel_id}/messages") and record.method in (
            "POST",
            "PATCH",
        ):
            return ("channel-message", record.params.get("channel_id", ""))
        return None

    def _take_bucket(self, key: tuple[str, str]) -> tuple[web.Response | None, dict[str, str]]:
        """Fixed-window counting, as Discord documents it, with Discord's headers."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        # 10 ms of grace: discord.py sleeps exactly Reset-After and asyncio may wake early.
        if bucket is None or now >= bucket.reset_at - 0.01:
            bucket = self._buckets[key] = _Bucket(
                self.bucket_limit, self.bucket_window, 0, now + self.bucket_window
            )
        reset_after = max(0.0, bucket.reset_at - now)
        bucket_hash = {"webhook-edit": "f4k3w3bh00k3d1t", "channel-message": "f4k3ch4nn3lm5g"}[
            key[0]
        ]

        def headers(remaining: int) -> dict[str, str]:
            return {
                "X-RateLimit-Limit": str(bucket.limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{math.ceil(reset_after * 1000) / 1000:.3f}",
                "X-RateLimit-Bucket": bucket_hash,
            }

        if bucket.used >= bucket.limit:
            self.stats.rate_limited += 1
            extra = headers(0)
            extra.update(
                {
                    "Retry-After": str(max(1, math.ceil(reset_after))),
                    "X-RateLimit-Scope": "user",
                    "Via": "1.1 google",
                }
            )
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            return _json_response(body, 429, extra), {}
        bucket.used += 1
        return None, headers(bucket.limit - bucket.used)

    def _check_auth(self, request: web.Request) -> None:
        if self.token is not None and request.headers.get("Authorization") != f"Bot {self.token}":
            raise _HTTPError(401, "401: Unauthorized", 0)

    # ------------------------------------------------------------------ REST handlers

    async def _unknown(self, request: web.Request) -> web.Response:
        raise _HTTPError(404, "404: Not Found", 0)

    async def _users_me(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        data = self.bot_user.to_payload()
        data.update(verified=True, mfa_enabled=False, flags=0)
        return _json_response(data)

    async def _application_info(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        owner = FakeUser(self.application_id + 1, "owner")
        return _json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner.to_payload(),
                "verify_key": "0" * 64,
                "flags": 0,
                "team": None,
                "bot": self.bot_user.to_payload(),
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return _json_response(
            {
                "url": self.bot_gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite (PUT) or list (GET) global or guild commands; ids stay stable per name."""
        self._check_auth(request)
        if int(request.match_info["application_id"]) != self.application_id:
            raise _HTTPError(403, "Missing Access", 50001)
        guild_id = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        if request.method == "GET":
            return _json_response(self.commands.get(guild_id, []))
        if request.method != "PUT":
            raise _HTTPError(405, "405: Method Not Allowed", 0)
        record = self._current(request)
        payload = record.json
        if not isinstance(payload, list):
            raise _HTTPError(400, "Invalid Form Body", 50035)
        echoed: list[JSONDict] = []
        for command in payload:
            key = (guild_id, f"{command.get('type', 1)}:{command['name']}")
            command_id = self._command_ids.setdefault(key, self._ids.next())
            data: JSONDict = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                **command,
                "id": str(command_id),
                "application_id": str(self.application_id),
                "version": str(self._ids.next()),
            }
            if guild_id is not None:
                data["guild_id"] = str(guild_id)
            echoed.append(data)
        self.commands[guild_id] = echoed
        return _json_response(echoed)

    def _current(self, request: web.Request) -> RecordedRequest:
        return request[_RECORD_KEY]

    def _interaction_for(self, request: web.Request, *, webhook: bool) -> FakeInteraction:
        """Resolve the interaction named by a callback or webhook path, as Discord would."""
        token = request.match_info["webhook_token"]
        itx = self._by_token.get(token)
        if webhook:
            if int(request.match_info["webhook_id"]) != self.application_id or itx is None:
                raise _HTTPError(404, "Unknown Webhook", 10015)
        elif itx is None or itx.id != int(request.match_info["webhook_id"]):
            raise _HTTPError(404, "Unknown interaction", 10062)
        if itx.expired:
            raise _HTTPError(401, "Invalid Webhook Token", 50027)
        return itx

    async def _callback(self, request: web.Request) -> web.Response:
        """Interaction response: record it, create/update the message it implies."""
        itx = self._interaction_for(request, webhook=False)
        record = self._current(request)
        body = record.json if isinstance(record.json, dict) else {}
        kind = int(body.get("type", 0))
        data: JSONDict = body.get("data") or {}
        if (
            self.callback_deadline is not None
            and time.monotonic() - itx.created > self.callback_deadline
        ):
            raise _HTTPError(404, "Unknown interaction", 10062)
        if itx.callbacks:
            raise _HTTPError(400, "Interaction has already been acknowledged.", 40060)
        if kind not in (1, 4, 5, 6, 7, 8, 9, 10, 12):
            raise _HTTPError(400, "Invalid Form Body", 50035)
        if kind in (6, 7) and itx.type not in (3, 5):
            raise _HTTPError(
                400, "Interaction response type is invalid for this interaction", 50035
            )
        if kind in (4, 7):
            errors = _length_errors(data)
            if errors:
                raise _HTTPError(400, "Invalid Form Body", 50035, errors)
        if kind == 4 and not self._has_body(data, record):
            raise _HTTPError(400, "Cannot send an empty message", 50006)

        itx.callbacks.append(InteractionCallback(kind, data, time.monotonic()))
        message: StoredMessage | None = None
        flags = int(data.get("flags") or 0)
        if kind in (4, 5):
            message = self._new_message(
                itx.payload["channel"]["id"],
                content=str(data.get("content") or "") if kind == 4 else "",
                data=data if kind == 4 else {},
                flags=(flags & FLAG_EPHEMERAL) | (FLAG_LOADING if kind == 5 else 0),
                files=record.files,
                itx=itx,
            )
            itx.original_id = message.id
        elif kind in (6, 7):
            target = itx.payload.get("message", {}).get("id")
            message = self.messages.get(int(target)) if target else None
            if message is not None:
                itx.original_id = message.id
                if kind == 7:
                    self._apply_edit(message, data, record.files)

        if "with_response" not in request.query:
            return web.Response(status=204)
        info: JSONDict = {"id": str(itx.id), "type": itx.type}
        if message is not None:
            info.update(
                response_message_id=str(message.id),
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(message.flags & FLAG_EPHEMERAL),
            )
        result: JSONDict = {"interaction": info}
        if kind in (4, 5, 7) and message is not None:
            result["resource"] = {"type": kind, "message": message.to_payload()}
        elif kind in (6, 9, 12):
            result["resource"] = {"type": kind}
        return _json_response(result)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        """GET/PATCH/DELETE of an interaction's original or follow-up message."""
        itx = self._interaction_for(request, webhook=True)
        raw_id = request.match_info.get("message_id", "@original")
        if raw_id == "@original":
            message = itx.original
        else:
            try:
                wanted = int(raw_id)
            except ValueError:
                raise _HTTPError(404, "Unknown Message", 10008) from None
            allowed = wanted in itx.followup_ids or wanted == itx.original_id
            message = self.messages.get(wanted) if allowed else None
        if message is None or message.deleted:
            raise _HTTPError(404, "Unknown Message", 10008)
        return self._message_verb(request, message)

    def _message_verb(self, request: web.Request, message: StoredMessage) -> web.Response:
        if request.method == "GET":
            return _json_response(message.to_payload())
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            record = self._current(request)
            data = record.json if isinstance(record.json, dict) else {}
            errors = _length_errors(data)
            if errors:
                raise _HTTPError(400, "Invalid Form Body", 50035, errors)
            self._apply_edit(message, data, record.files)
            return _json_response(message.to_payload())
        raise _HTTPError(405, "405: Method Not Allowed", 0)

    async def _followup(self, request: web.Request) -> web.Response:
        itx = self._interaction_for(request, webhook=True)
        record = self._current(request)
        data = record.json if isinstance(record.json, dict) else {}
        if not itx.callbacks:
            raise _HTTPError(404, "Unknown Webhook", 10015)
        errors = _length_errors(data)
        if errors:
            raise _HTTPError(400, "Invalid Form Body", 50035, errors)
        if not self._has_body(data, record):
            raise _HTTPError(400, "Cannot send an empty message", 50006)
        message = self._new_message(
            itx.payload["channel"]["id"],
            content=str(data.get("content") or ""),
            data=data,
            flags=int(data.get("flags") or 0) & FLAG_EPHEMERAL,
            files=record.files,
            itx=itx,
        )
        itx.followup_ids.append(message.id)
        if request.query.get("wait") in ("1", "true", "True"):
            return _json_response(message.to_payload())
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        if self.find_channel(channel_id) is None and channel_id not in self._dm_channels:
            raise _HTTPError(404, "Unknown Channel", 10003)
        return web.Response(status=204)

    async def _channel_message(self, request: web.Request) -> web.Response:
        """Messages sent outside interactions: POST creates, GET/PATCH/DELETE by id."""
        self._check_auth(request)
        channel_id = int(request.match_info["channel_id"])
        found = self.find_channel(channel_id)
        if found is None and channel_id not in self._dm_channels:
            raise _HTTPError(404, "Unknown Channel", 10003)
        record = self._current(request)
        if "message_id" in request.match_info:
            message = self.messages.get(int(request.match_info["message_id"]))
            if message is None or message.deleted or message.channel_id != channel_id:
                raise _HTTPError(404, "Unknown Message", 10008)
            return self._message_verb(request, message)
        data = record.json if isinstance(record.json, dict) else {}
        errors = _length_errors(data)
        if errors:
            raise _HTTPError(400, "Invalid Form Body", 50035, errors)
        if not self._has_body(data, record):
            raise _HTTPError(400, "Cannot send an empty message", 50006)
        message = self._new_message(
            str(channel_id),
            content=str(data.get("content") or ""),
            data=data,
            flags=0,
            files=record.files,
        )
        payload = message.to_payload()
        if message.guild_id is not None:
            await self.dispatch(
                "MESSAGE_CREATE", payload, guild_id=message.guild_id, intent=INTENT_GUILD_MESSAGES
            )
        return _json_response(payload)

    async def _start_thread(self, request: web.Request) -> web.Response:
        """Start a public thread from a message: the thread's id is the message's, as on Discord.

        The thread joins its guild's channels (so interactions and messages can be
        injected into it) and THREAD_CREATE is dispatched, as Discord does.
        """
        self._check_auth(request)
        channel_id = int(request.match_info["channel_id"])
        message_id = int(request.match_info["message_id"])
        found = self.find_channel(channel_id)
        message = self.messages.get(message_id)
        if found is None:
            raise _HTTPError(404, "Unknown Channel", 10003)
        guild, parent = found
        if message is None or message.deleted or message.channel_id != channel_id:
            raise _HTTPError(404, "Unknown Message", 10008)
        if message.flags & FLAG_EPHEMERAL:
            raise _HTTPError(400, "Cannot start a thread from an ephemeral message", 50035)
        if parent.is_thread:
            raise _HTTPError(400, "Cannot start a thread inside a thread", 50024)
        if guild.channel(message_id) is not None:
            raise _HTTPError(400, "A thread has already been created for this message", 160004)
        body = self._current(request).json
        data = body if isinstance(body, dict) else {}
        name = str(data.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise _HTTPError(400, "Invalid Form Body", 50035)
        thread = FakeChannel(message_id, name, 11, parent_id=channel_id)
        guild.channels.append(thread)
        owner = self.bot_user.id
        payload = thread.to_payload(guild.id, owner)
        await self.dispatch("THREAD_CREATE", {**payload, "newly_created": True}, guild_id=guild.id)
        return _json_response(payload)

    # ------------------------------------------------------------------ message store

    @staticmethod
    def _has_body(data: Mapping[str, Any], record: RecordedRequest) -> bool:
        return bool(
            data.get("content")
            or data.get("embeds")
            or data.get("components")
            or data.get("sticker_ids")
            or data.get("poll")
            or record.files
        )

    def _new_message(
        self,
        channel_id: str,
        *,
        content: str,
        data: Mapping[str, Any],
        flags: int,
        files: Sequence[tuple[str, int]],
        itx: FakeInteraction | None = None,
    ) -> StoredMessage:
        found = self.find_channel(int(channel_id))
        guild_id = (
            found[0].id
            if found
            else (int(itx.payload["guild_id"]) if itx and "guild_id" in itx.payload else None)
        )
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=int(channel_id),
            guild_id=guild_id,
            author=self.bot_user.to_payload(),
            content=content,
            embeds=list(data.get("embeds") or []),
            components=list(data.get("components") or []),
            flags=flags | (int(data.get("flags") or 0) & ~(FLAG_EPHEMERAL | FLAG_LOADING)),
            type=20 if itx is not None and itx.type == 2 else (19 if itx is not None else 0),
            webhook_id=self.application_id if itx is not None else None,
            interaction_token=itx.token if itx is not None else None,
        )
        message.attachments = self._attachments(files)
        message.revisions.append(message.snapshot())
        self.messages[message.id] = message
        return message

    def _attachments(self, files: Sequence[tuple[str, int]]) -> list[JSONDict]:
        return [
            {
                "id": str(self._ids.next()),
                "filename": name,
                "size": size,
                "url": f"{self.base_url}/attachments/{name}",
                "proxy_url": f"{self.base_url}/attachments/{name}",
            }
            for name, size in files
        ]

    def _apply_edit(
        self, message: StoredMessage, data: Mapping[str, Any], files: Sequence[tuple[str, int]]
    ) -> None:
        """PATCH semantics: present keys replace, `null` content clears; LOADING is dropped."""
        if "content" in data:
            message.content = str(data["content"] or "")
        if "embeds" in data:
            message.embeds = list(data["embeds"] or [])
        if "components" in data:
            message.components = list(data["components"] or [])
        if "flags" in data and data["flags"] is not None:
            keep = message.flags & FLAG_EPHEMERAL
            message.flags = keep | (int(data["flags"]) & ~(FLAG_EPHEMERAL | FLAG_LOADING))
        if "attachments" in data or files:
            kept = [
                a
                for a in message.attachments
                if any(str(k.get("id")) == a["id"] for k in data.get("attachments") or [])
            ]
            message.attachments = kept + self._attachments(files)
        message.flags &= ~FLAG_LOADING
        message.edited = _now_iso()
        message.revisions.append(message.snapshot())

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """One gateway connection: HELLO, then IDENTIFY or RESUME, heartbeats, member requests."""
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.gateway_paths.append(request.path)
        self.stats.gateway_connections += 1
        session: GatewaySession | None = None
        try:
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_received.append(frame)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    session = await self._identify(ws, data)
                elif op == 6:
                    session = await self._resume(ws, data)
                elif op == 8 and session is not None:
                    await self._request_members(session, data)
                self._notify()
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                # A client that closes with 1000/1001 ends its session (Discord drops it);
                # discord.py closes with 4000 when it means to RESUME.
                if ws not in self._server_closed and ws.close_code in (1000, 1001):
                    session.resumable = False
            self._server_closed.discard(ws)
            self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        if self.token is not None and data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        shard_data = data.get("shard")
        shard: tuple[int, int] | None = None
        if shard_data is not None:
            shard = (int(shard_data[0]), int(shard_data[1]))
            if not 0 <= shard[0] < shard[1]:
                await ws.close(code=4010, message=b"Invalid shard.")
                return None
        self.stats.identifies += 1
        session = GatewaySession(secrets.token_hex(16), shard, int(data.get("intents") or 0), ws=ws)
        self._sessions[session.session_id] = session
        guilds = [g for g in self.guilds if session.covers(g.id)]
        ready: JSONDict = {
            "v": 10,
            "user": {
                **self.bot_user.to_payload(),
                "verified": True,
                "mfa_enabled": False,
                "flags": 0,
            },
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        await self._send_dispatch(session, "READY", ready)
        for guild in guilds:
            await self._send_dispatch(session, "GUILD_CREATE", guild.to_payload(self.bot_user))
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: JSONDict) -> GatewaySession | None:
        session = self._sessions.get(str(data.get("session_id")))
        if (
            session is None
            or not session.resumable
            or (self.token is not None and data.get("token") != self.token)
        ):
            self.stats.resume_rejected += 1
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return None
        if session.ws is not None and session.ws is not ws and not session.ws.closed:
            await session.ws.close(code=4000)
        session.ws = ws
        self.stats.resumes += 1
        seen = int(data.get("seq") or 0)
        for frame in list(session.history):
            if frame["s"] > seen:
                await ws.send_str(json.dumps(frame))
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})
        return session

    async def _request_members(self, session: GatewaySession, data: JSONDict) -> None:
        guild_id = int(
            data["guild_id"] if not isinstance(data["guild_id"], list) else data["guild_id"][0]
        )
        guild = self.guild(guild_id)
        members = [guild.member_payload(self.bot_user)] + [
            guild.member_payload(m) for m in guild.members
        ]
        chunk: JSONDict = {
            "guild_id": str(guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _send_dispatch(self, session: GatewaySession, event: str, data: JSONDict) -> None:
        """Number the event, keep it for RESUME replays, send it if a socket is attached."""
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.history.append(frame)
        if session.live:
            assert session.ws is not None
            with contextlib.suppress(ConnectionResetError):
                await session.ws.send_str(json.dumps(frame))

    def _sessions_for(
        self, guild_id: int | None, *, shard_id: int | None = None
    ) -> list[GatewaySession]:
        """Newest resumable session per shard that covers the guild (or the given shard)."""
        chosen: dict[int, GatewaySession] = {}
        for session in self._sessions.values():
            if not session.resumable:
                continue
            sid = session.shard[0] if session.shard else 0
            if shard_id is not None and sid != shard_id:
                continue
            if guild_id is not None and not session.covers(guild_id):
                continue
            if sid not in chosen or session.live or not chosen[sid].live:
                chosen[sid] = session
        return list(chosen.values())

    async def dispatch(
        self, event: str, data: JSONDict, *, guild_id: int | None = None, intent: int | None = None
    ) -> int:
        """Send a DISPATCH to the session(s) that would receive it; returns how many did.

        If the session is between connections the event is kept and replayed on RESUME,
        as Discord does.
        """
        sessions = (
            self._sessions_for(guild_id)
            if guild_id is not None
            else self._sessions_for(None, shard_id=0)
        )
        sent = 0
        for session in sessions:
            if intent is not None and not session.intents & intent:
                continue
            await self._send_dispatch(session, event, data)
            sent += 1
        return sent

    async def wait_session(self, shard_id: int | None = None, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - tests read better with timeout=
        """Wait until a live gateway session exists (for the shard, if given)."""

        def live() -> bool:
            return any(
                s.live and (shard_id is None or (s.shard[0] if s.shard else 0) == shard_id)
                for s in self._sessions.values()
            )

        await self.wait_for(live, timeout=timeout)

    async def send_reconnect(self, shard_id: int | None = None) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs on READY's resume URL."""
        await self._send_op(7, None, shard_id)

    async def invalidate_session(
        self, resumable: bool = False, shard_id: int | None = None
    ) -> None:
        """Send op 9; with `resumable=False` the session is gone and the client re-IDENTIFYs."""
        for session in self._live_sessions(shard_id):
            if not resumable:
                session.resumable = False
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": 9, "d": resumable}))

    async def close_gateway(self, code: int = 4000, shard_id: int | None = None) -> None:
        """Close live gateway sockets with `code` (4007/4009 also end the session)."""
        for session in self._live_sessions(shard_id):
            if code in NON_RESUMABLE_CLOSE_CODES:
                session.resumable = False
            assert session.ws is not None
            self._server_closed.add(session.ws)
            await session.ws.close(code=code, message=b"fake close")

    def _live_sessions(self, shard_id: int | None) -> list[GatewaySession]:
        return [
            s
            for s in self._sessions.values()
            if s.live and (shard_id is None or (s.shard[0] if s.shard else 0) == shard_id)
        ]

    async def _send_op(self, op: int, data: Any, shard_id: int | None) -> None:
        for session in self._live_sessions(shard_id):
            assert session.ws is not None
            await session.ws.send_str(json.dumps({"op": op, "d": data}))

    # ------------------------------------------------------------------ injection

    def _interaction_base(
        self,
        kind: int,
        data: JSONDict,
        *,
        guild_id: int | None,
        channel_id: int | None,
        user: FakeUser | None,
        roles: Sequence[int],
        permissions: str,
        locale: str,
        dm: bool,
    ) -> JSONDict:
        interaction_id = self._ids.next()
        payload: JSONDict = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "token": f"itok{interaction_id}{secrets.token_hex(8)}",
            "version": 1,
            "locale": locale,
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "app_permissions": DEFAULT_MEMBER_PERMISSIONS,
        }
        if dm:
            author = user or FakeUser(self.application_id + 2, "dm-user")
            dm_channel_id = channel_id or author.id + 7
            self._dm_channels.add(dm_channel_id)
            payload.update(
                user=author.to_payload(),
                channel={
                    "id": str(dm_channel_id),
                    "type": 1,
                    "recipients": [author.to_payload()],
                    "flags": 0,
                },
                channel_id=str(dm_channel_id),
                context=1,
                authorizing_integration_owners={"1": str(author.id)},
            )
            return payload
        guild = self.guild(guild_id) if guild_id is not None else self.guilds[0]
        if channel_id is None:
            channel = next(c for c in guild.channels if c.type == 0)
        else:
            found = guild.channel(channel_id)
            if found is None:
                raise KeyError(f"channel {channel_id} is not in guild {guild.id}")
            channel = found
        author = user or (guild.members[0] if guild.members else FakeUser(guild.id + 99, "member"))
        owner = guild.owner_id or (guild.members[0].id if guild.members else self.bot_user.id)
        member = guild.member_payload(author, roles)
        member["permissions"] = permissions
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": "en-US", "features": []},
            guild_locale="en-US",
            channel=channel.to_payload(guild.id, owner),
            channel_id=str(channel.id),
            member=member,
            context=0,
            authorizing_integration_owners={"0": str(guild.id)},
        )
        return payload

    async def _inject(self, payload: JSONDict) -> FakeInteraction:
        itx = FakeInteraction(self, payload)
        self.interactions[itx.id] = itx
        self._by_token[itx.token] = itx
        guild_id = int(payload["guild_id"]) if "guild_id" in payload else None
        itx.created = time.monotonic()
        if not await self.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id):
            raise RuntimeError(
                "no gateway session to deliver the interaction to; is the bot connected?"
            )
        self._notify()
        return itx

    async def inject_interaction(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[JSONDict] | None = None,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
        resolved: JSONDict | None = None,
    ) -> FakeInteraction:
        """Send an INTERACTION_CREATE for a slash command, as a member would trigger it.

        `name` may name a subcommand as Discord shows it: "llama ask" or
        "llama admin reset" (group, then subcommand). `options` is a mapping whose
        value types pick the option type (str 3, int 4, bool 5, float 10) or the raw
        option list. The command id (and `guild_id` for guild commands) is taken from
        the last sync, so discord.py's CommandTree finds the command.
        """
        parts = name.split()
        if isinstance(options, Mapping):
            leaf: list[JSONDict] = [
                {"name": k, "type": _option_type(v), "value": v} for k, v in options.items()
            ]
        else:
            leaf = list(options or [])
        if len(parts) == 3:
            leaf = [
                {
                    "name": parts[1],
                    "type": 2,
                    "options": [{"name": parts[2], "type": 1, "options": leaf}],
                }
            ]
        elif len(parts) == 2:
            leaf = [{"name": parts[1], "type": 1, "options": leaf}]
        target_guild = None if dm else (guild_id if guild_id is not None else self.guilds[0].id)
        data: JSONDict = {"name": parts[0], "type": 1, "options": leaf}
        command = self._find_command(parts[0], target_guild)
        if command is not None:
            data["id"] = command["id"]
            if "guild_id" in command:
                data["guild_id"] = command["guild_id"]
        else:
            data["id"] = str(self._ids.next())
        if resolved is not None:
            data["resolved"] = resolved
        payload = self._interaction_base(
            2,
            data,
            guild_id=target_guild,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        return await self._inject(payload)

    def _find_command(self, name: str, guild_id: int | None) -> JSONDict | None:
        for scope in (guild_id, None) if guild_id is not None else (None,):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command
        return None

    async def inject_component(
        self,
        custom_id: str,
        *,
        message_id: int | None = None,
        component_type: int = 2,
        values: Sequence[str] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
    ) -> FakeInteraction:
        """A button press (type 2) or select (type 3, with `values`) on a stored message."""
        data: JSONDict = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = list(values)
        if message_id is not None:
            message = self.message(message_id)
            guild_id = guild_id if guild_id is not None else message.guild_id
            channel_id = channel_id if channel_id is not None else message.channel_id
        payload = self._interaction_base(
            3,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        if message_id is None:
            # A message carrying the pressed component, as Discord would send it.
            button = {"type": component_type, "custom_id": custom_id, "style": 2, "label": "…"}
            message = self._new_message(
                payload["channel"]["id"], content="",
                data={"components": [{"type": 1, "components": [button]}]}, flags=0, files=(),
            )
        payload["message"] = message.to_payload()
        return await self._inject(payload)

    async def inject_modal_submit(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        roles: Sequence[int] = (),
        permissions: str = DEFAULT_MEMBER_PERMISSIONS,
        locale: str = "en-US",
        dm: bool = False,
    ) -> FakeInteraction:
        """A modal submit (type 5): `values` maps each text input's custom_id to its text."""
        components = [
            {
                "type": 18,
                "id": index + 1,
                "component": {"type": 4, "id": index + 100, "custom_id": key, "value": value},
            }
            for index, (key, value) in enumerate(values.items())
        ]
        data: JSONDict = {"custom_id": custom_id, "components": components}
        payload = self._interaction_base(
            5,
            data,
            guild_id=guild_id,
            channel_id=channel_id,
            user=user,
            roles=roles,
            permissions=permissions,
            locale=locale,
            dm=dm,
        )
        return await self._inject(payload)

    async def inject_message(
        self,
        content: str,
        *,
        channel_id: int | None = None,
        user: FakeUser | None = None,
        mention_bot: bool = False,
        reply_to: int | None = None,
        ping: bool = True,
        dm: bool = False,
    ) -> StoredMessage:
        """A member posts a message (MESSAGE_CREATE), as Discord delivers it to the bot.

        `mention_bot` puts ``<@bot>`` in front of the text; `reply_to` makes it a
        reply to a stored message, which pings that message's author unless
        `ping=False`; `dm` posts in the user's DM channel with the bot. Like
        Discord, a guild message reaches a bot without the message-content intent
        with its content emptied unless the bot is mentioned (a reply that pings the
        bot counts); DMs always carry their content.
        """
        if dm:
            author = user or FakeUser(self.application_id + 2, "dm-user")
            dm_channel_id = channel_id or author.id + 7
            self._dm_channels.add(dm_channel_id)
            guild: FakeGuild | None = None
            target_channel = dm_channel_id
        else:
            if channel_id is None:
                guild = self.guilds[0]
                channel = next(c for c in guild.channels if c.type == 0)
            else:
                found = self.find_channel(channel_id)
                if found is None:
                    raise KeyError(f"unknown channel {channel_id}")
                guild, channel = found
            author = user or (
                guild.members[0] if guild.members else FakeUser(guild.id + 99, "member")
            )
            target_channel = channel.id
        if mention_bot:
            content = f"<@{self.bot_user.id}> {content}"
        message = StoredMessage(
            id=self._ids.next(),
            channel_id=target_channel,
            guild_id=guild.id if guild is not None else None,
            author=author.to_payload(),
            content=content,
        )
        message.revisions.append(message.snapshot())
        self.messages[message.id] = message
        payload = message.to_payload()
        mentions: list[JSONDict] = []
        if mention_bot:
            mentions.append(self.bot_user.to_payload())
        if reply_to is not None:
            referenced = self.message(reply_to)
            payload["type"] = 19
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(referenced.id),
                "channel_id": str(referenced.channel_id),
                **({"guild_id": str(guild.id)} if guild is not None else {}),
            }
            payload["referenced_message"] = referenced.to_payload()
            if ping and referenced.author.get("id") not in {m["id"] for m in mentions}:
                mentions.append(referenced.author)
        payload["mentions"] = mentions
        if guild is None:
            await self.dispatch("MESSAGE_CREATE", payload, intent=INTENT_DM_MESSAGES)
            return message
        payload["member"] = {k: v for k, v in guild.member_payload(author).items() if k != "user"}
        bot_mentioned = any(m["id"] == str(self.bot_user.id) for m in mentions)
        granted = any(
            s.intents & INTENT_MESSAGE_CONTENT for s in self._sessions.values() if s.live
        )
        if not bot_mentioned and not granted:
            payload.update(content="", embeds=[], attachments=[], components=[])
        await self.dispatch(
            "MESSAGE_CREATE", payload, guild_id=guild.id, intent=INTENT_GUILD_MESSAGES
        )
        return message


def _option_type(value: object) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
