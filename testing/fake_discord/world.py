"""The world the fake Discord serves: guilds, channels, threads, members, messages, interactions.

Every other layer of the fake (records, HTTP, REST, gateway, injection) reads and
changes this one state, so a message the bot sends over REST is the same object a
test reads, a button press refers to, and a RESUME replays. Payload shapes follow
Discord's API v10 as discord.py 2.7 parses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord

JSONDict = dict[str, Any]
T = TypeVar("T")

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DM_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
#: The intents a bot must switch on in the Developer Portal before asking for them.
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
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


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class _Snowflakes:
    """Makes ids that look like Discord's (time-ordered), so `created_at` is sensible."""

    def __init__(self) -> None:
        self._counter = 0

    def next(self) -> int:
        self._counter = (self._counter + 1) & 0xFFF
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | self._counter


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
            "flags": 0,
            "primary_guild": None,
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
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "icon": None,
            "unicode_emoji": None,
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
                    "archive_timestamp": now_iso(),
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


#: The fields a guild always carries that the fake has no use for, as a new guild has them.
GUILD_DEFAULTS: JSONDict = {
    "description": None, "home_header": None, "splash": None, "discovery_splash": None,
    "banner": None, "application_id": None, "region": "deprecated", "afk_channel_id": None,
    "afk_timeout": 300, "system_channel_id": None, "system_channel_flags": 0,
    "widget_enabled": False, "widget_channel_id": None, "verification_level": 0,
    "default_message_notifications": 0, "mfa_level": 0, "explicit_content_filter": 0,
    "max_presences": None, "max_members": 25_000_000, "max_stage_video_channel_users": 50,
    "max_video_channel_users": 25, "vanity_url_code": None, "premium_tier": 0,
    "premium_subscription_count": 0, "rules_channel_id": None,
    "safety_alerts_channel_id": None, "public_updates_channel_id": None,
    "premium_progress_bar_enabled": False, "nsfw": False, "nsfw_level": 0,
    "incidents_data": None,
}


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
            "joined_at": now_iso(),
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
            **GUILD_DEFAULTS,
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
            "joined_at": now_iso(),
        }


def stored_components(components: Sequence[Any]) -> list[JSONDict]:
    """Components as Discord stores them: every one numbered (`id`), selects with their bounds."""
    counter = 0

    def walk(items: Sequence[Any]) -> list[JSONDict]:
        nonlocal counter
        out: list[JSONDict] = []
        for item in items:
            if not isinstance(item, Mapping):
                continue
            copy = dict(item)
            counter += 1
            copy.setdefault("id", counter)
            if copy.get("type") in (3, 5, 6, 7, 8):
                copy.setdefault("min_values", 1)
                copy.setdefault("max_values", 1)
            if isinstance(copy.get("components"), list):
                copy["components"] = walk(copy["components"])
            out.append(copy)
        return out

    return walk(components)


def stored_embeds(embeds: Sequence[Any]) -> list[JSONDict]:
    """Embeds as Discord stores them: `type` "rich", every field's `inline` set."""
    out: list[JSONDict] = []
    for embed in embeds:
        if not isinstance(embed, Mapping):
            continue
        copy: JSONDict = {"type": "rich", **embed}
        if isinstance(copy.get("fields"), list):
            copy["fields"] = [{"inline": False, **f} for f in copy["fields"]]
        out.append(copy)
    return out


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
    created: str = field(default_factory=now_iso)
    edited: str | None = None
    deleted: bool = False
    revisions: list[JSONDict] = field(default_factory=list)
    reference: JSONDict | None = None  # the message this one replies to, if it exists

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
        if self.reference is not None:
            data["message_reference"] = self.reference
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        return data


class FakeInteraction:
    """Handle on an injected interaction: its id/token and what the bot did with it."""

    def __init__(self, fake: World, payload: JSONDict) -> None:
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


class World:
    """The application, its guilds and everything said in them, shared by every layer.

    Also the change signal: each layer calls `_notify` after changing anything, so
    `wait_for` re-checks a test's condition at once instead of polling slowly.
    """

    def __init__(
        self,
        *,
        guilds: Sequence[FakeGuild] | None,
        shard_count: int,
        application_id: int,
        bot_name: str,
        token: str | None,
        max_concurrency: int = 1,
    ) -> None:
        self.application_id = application_id
        self.bot_user = FakeUser(application_id, bot_name, bot_name, bot=True)
        self.guilds: list[FakeGuild] = list(guilds) if guilds is not None else [default_guild()]
        self.shard_count = shard_count
        self.max_concurrency = max_concurrency  # GET /gateway/bot's session_start_limit
        self.token = token
        self.messages: dict[int, StoredMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands: dict[int | None, list[JSONDict]] = {}
        self.port = 0
        self._ids = _Snowflakes()
        self._command_ids: dict[tuple[int | None, str], int] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self._dm_channels: set[int] = set()
        self._changed = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` must be set to."""
        return f"{self.base_url}{API_PREFIX}"

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

    # ------------------------------------------------------------------ message store

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
            embeds=stored_embeds(data.get("embeds") or []),
            components=stored_components(data.get("components") or []),
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
            message.embeds = stored_embeds(data["embeds"] or [])
        if "components" in data:
            message.components = stored_components(data["components"] or [])
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
        message.edited = now_iso()
        message.revisions.append(message.snapshot())
