"""Where settings live and what a lookup returns: scopes and locations.

Plain frozen dataclasses with no database behind them, so cogs, the console and
the ask path can name a scope or read an `Effective` without importing SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from bot.hosting.choice import MODEL_KEY as MODEL_KEY
from bot.knobs import KNOB_NAMES, Knobs

SYSTEM_PROMPT_KEY: Final = "system_prompt"
"""The key the persona is stored and reported under (next to the knob names)."""

REASONING_KEY: Final = "reasoning"
"""Whether replies are split into ``<think>`` reasoning and the answer (bool)."""

FOLLOW_KEY: Final = "follow"
"""Whether every member message in a channel or thread is a turn, no @ needed (bool)."""

AUTO_THREAD_KEY: Final = "auto_thread"
"""Whether a mention in a channel opens a thread of its own, which is then followed (bool)."""

ASIDE_MARKER_KEY: Final = "aside_marker"
"""What a message starts with to be left alone in a followed place (server-wide text)."""

DEFAULT_ASIDE_MARKER: Final = "//"

#: The keys of how a place is talked in (not sampling, not the persona).
MODE_KEYS: Final[tuple[str, ...]] = (FOLLOW_KEY, AUTO_THREAD_KEY, ASIDE_MARKER_KEY)

SETTING_KEYS: Final[tuple[str, ...]] = (
    *KNOB_NAMES, SYSTEM_PROMPT_KEY, MODEL_KEY, REASONING_KEY, *MODE_KEYS
)
# Value checks (in and out of the database) live in `bot.store.validation`.

MAX_SYSTEM_PROMPT_CHARS: Final = 4000
"""Long enough for a detailed persona, short enough to leave room in the context window."""

#: The largest id a column holds (SQLite INTEGER); Discord snowflakes fit comfortably.
MAX_ID: Final = 2**63 - 1


class ScopeKind(StrEnum):
    """Where a setting is stored. Threads are channels; the label says "thread"."""

    SERVER = "server"
    CHANNEL = "channel"
    DM = "dm"


def check_id(what: str, value: object) -> int:
    """A trusted id from a front-end or a dump: a non-negative 64-bit integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError(f"{what} must be a non-negative 64-bit integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Scope:
    """One place settings can be stored.

    Channel (and thread) scopes carry their guild so a row can only ever apply
    inside that guild and so a guild can be exported with its channels. For a
    server scope `guild_id` is its own id (filled in when omitted); a DM scope
    has none. Invalid combinations raise `ValueError`: scopes are built by
    front-ends from trusted ids, so a mistake here is a bug, not user error.
    """

    kind: ScopeKind
    id: int
    guild_id: int | None = None

    def __post_init__(self) -> None:
        kind = ScopeKind(self.kind)
        object.__setattr__(self, "kind", kind)
        check_id("scope id", self.id)
        if kind is ScopeKind.SERVER:
            if self.guild_id is None:
                object.__setattr__(self, "guild_id", self.id)
            elif self.guild_id != self.id:
                raise ValueError("a server scope's guild_id must be its own id")
        elif kind is ScopeKind.CHANNEL:
            if self.guild_id is None:
                raise ValueError("a channel scope needs the guild_id it belongs to")
            check_id("guild_id", self.guild_id)
        elif self.guild_id is not None:
            raise ValueError("a DM scope has no guild_id")

    @classmethod
    def server(cls, guild_id: int) -> Scope:
        return cls(ScopeKind.SERVER, guild_id, guild_id)

    @classmethod
    def channel(cls, channel_id: int, guild_id: int) -> Scope:
        return cls(ScopeKind.CHANNEL, channel_id, guild_id)

    @classmethod
    def dm(cls, user_id: int) -> Scope:
        return cls(ScopeKind.DM, user_id)


@dataclass(frozen=True)
class Location:
    """Where a request happens, built by front-ends from trusted ids, never from user text.

    `parent_channel_id` is set when `channel_id` is a thread; `user_id` is
    required for direct messages (``guild_id is None``), whose settings are
    per user rather than per DM channel.
    """

    guild_id: int | None
    channel_id: int
    parent_channel_id: int | None = None
    user_id: int | None = None

    def __post_init__(self) -> None:
        check_id("channel_id", self.channel_id)
        if self.guild_id is None:
            if self.user_id is None:
                raise ValueError("a DM location needs the user_id")
            if self.parent_channel_id is not None:
                raise ValueError("threads only exist in servers")
            check_id("user_id", self.user_id)
        else:
            check_id("guild_id", self.guild_id)
            if self.parent_channel_id is not None:
                check_id("parent_channel_id", self.parent_channel_id)

    def labelled_chain(self) -> list[tuple[str, Scope]]:
        """The scopes that apply, weakest → strongest, with the label `sources` reports."""
        if self.guild_id is None:
            assert self.user_id is not None  # checked in __post_init__
            return [("dm", Scope.dm(self.user_id))]
        chain: list[tuple[str, Scope]] = [("server", Scope.server(self.guild_id))]
        if self.parent_channel_id is not None and self.parent_channel_id != self.channel_id:
            chain.append(("channel", Scope.channel(self.parent_channel_id, self.guild_id)))
            chain.append(("thread", Scope.channel(self.channel_id, self.guild_id)))
        else:
            chain.append(("channel", Scope.channel(self.channel_id, self.guild_id)))
        return chain

    def chain(self) -> list[Scope]:
        """The scopes that apply, weakest → strongest."""
        return [scope for _, scope in self.labelled_chain()]

    def own_scope(self) -> Scope:
        """The strongest scope here: where "set it for this channel/thread/DM" writes."""
        return self.labelled_chain()[-1][1]


@dataclass(frozen=True)
class Effective:
    """The settings in force at a location and where each came from.

    `sources` maps every knob name and ``"system_prompt"`` to "default", "model"
    (the model's generation_config.json), "server", "channel", "thread", "dm" or
    "operator" (the operator's ceiling); "server" also marks a channel's value held
    to the server's ceiling. `system_prompt` None: no scope sets one. `model`: the
    name the strongest scope chose, with `sources["model"]` only when one did.
    """

    knobs: Knobs
    system_prompt: str | None
    sources: dict[str, str]
    model: str | None = None
    reasoning: bool = False  # split <think>…</think> from the answer
    follow: bool = False  # every member message here is a turn (message-content mode)
    auto_thread: bool = False  # a mention here opens a thread of its own
    aside_marker: str = DEFAULT_ASIDE_MARKER  # a message starting so is left alone


MODEL_SOURCE: Final = "model"
"""The source of a knob the model's own `generation_config.json` recommends."""


def with_model_defaults(effective: Effective, defaults: Mapping[str, Any]) -> Effective:
    """`effective` with the model's recommended knobs under every scope's settings.

    The layer sits between the built-in defaults and the server: a knob no scope
    sets takes the model's value, and its source becomes "model".
    """
    values = {
        name: value
        for name, value in defaults.items()
        if name in KNOB_NAMES and effective.sources.get(name, "default") == "default"
    }
    if not values:
        return effective
    try:
        knobs = effective.knobs.model_copy(update=values)
        knobs = Knobs.model_validate(knobs.model_dump())
    except ValueError:  # pydantic's ValidationError: a combination the knobs refuse
        return effective
    sources = {**effective.sources, **dict.fromkeys(values, MODEL_SOURCE)}
    return replace(effective, knobs=knobs, sources=sources)


@dataclass(frozen=True)
class Change:
    """One audited write: `new_value` None means the key was reset at that scope."""

    scope: Scope
    key: str
    old_value: Any
    new_value: Any
    actor_id: int
    changed_at: datetime
