"""Per-scope settings (system prompt and knobs) kept in SQLite.

Scopes, weakest to strongest: built-in defaults ← server ← channel. A thread
inherits from its parent channel unless it sets its own value (defaults ←
server ← parent channel ← thread); a direct-message conversation has a scope
per user (defaults ← dm). Every knob and the system prompt is stored as its
own row, so each can be set or reset independently at each scope, and a lookup
can say which scope each effective value came from.

Design choices, and why:

- One row per (scope_kind, scope_id, key) with a JSON value: adding a knob to
  `bot.knobs.Knobs` needs no migration, and a reset is a plain ``DELETE``.
- Two connections. Writes go through a writer connection under an
  `asyncio.Lock` inside ``BEGIN IMMEDIATE`` (so the cross-knob check reads the
  same state it writes over, even against another process). Lookups use a
  separate reader connection: in WAL mode a reader sees only committed data and
  is never blocked by a writer, so `resolve` neither waits behind a slow save
  nor sees half of one.
- No cache: `resolve` is one ``UNION ALL`` query over primary-key lookups and
  measures well under a millisecond (see ``bench/store_bench.py``); a cache
  would add an invalidation problem for no visible gain.
- Values are validated on the way in (raising `InvalidKnobs` with a message
  naming the knob) *and* on the way out: a row edited by hand into something
  invalid is logged once and ignored, so a bad row can never stop the bot from
  answering.
- SQLite errors never escape raw: they become `SettingsError` with a sentence
  a person can act on, after the transaction is rolled back so the store keeps
  working.
- No SQL is built from user text. The only formatted SQL is chosen from
  constants in this module (the number of scopes in a chain).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
from pydantic import ValidationError

from bot.errors import InvalidKnobs, SettingsError
from bot.knobs import KNOB_NAMES, Knobs, build_knobs, describe_validation_error, validate_knob
from bot.migrations import LATEST_VERSION, migrate, schema_version, too_new_error

log = logging.getLogger(__name__)

T = TypeVar("T")

SYSTEM_PROMPT_KEY: Final = "system_prompt"
"""The key the persona is stored and reported under (next to the knob names)."""

SETTING_KEYS: Final[tuple[str, ...]] = (*KNOB_NAMES, SYSTEM_PROMPT_KEY)

MAX_SYSTEM_PROMPT_CHARS: Final = 4000
"""Long enough for a detailed persona, short enough to leave room in the context window."""

EXPORT_FORMAT: Final = "llamacord-settings"
EXPORT_FORMAT_VERSION: Final = 1

_MAX_ID: Final = 2**63 - 1  # SQLite INTEGER; Discord snowflakes fit comfortably.
_WARNED_LIMIT: Final = 1024


class ScopeKind(StrEnum):
    """Where a setting is stored. Threads are channels; the label says "thread"."""

    SERVER = "server"
    CHANNEL = "channel"
    DM = "dm"


def _check_id(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
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
        _check_id("scope id", self.id)
        if kind is ScopeKind.SERVER:
            if self.guild_id is None:
                object.__setattr__(self, "guild_id", self.id)
            elif self.guild_id != self.id:
                raise ValueError("a server scope's guild_id must be its own id")
        elif kind is ScopeKind.CHANNEL:
            if self.guild_id is None:
                raise ValueError("a channel scope needs the guild_id it belongs to")
            _check_id("guild_id", self.guild_id)
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
        _check_id("channel_id", self.channel_id)
        if self.guild_id is None:
            if self.user_id is None:
                raise ValueError("a DM location needs the user_id")
            if self.parent_channel_id is not None:
                raise ValueError("threads only exist in servers")
            _check_id("user_id", self.user_id)
        else:
            _check_id("guild_id", self.guild_id)
            if self.parent_channel_id is not None:
                _check_id("parent_channel_id", self.parent_channel_id)

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

    `sources` maps every knob name and ``"system_prompt"`` to "default",
    "server", "channel", "thread" or "dm". `system_prompt` is None when no
    scope sets one; the front-end then uses its configured default.
    """

    knobs: Knobs
    system_prompt: str | None
    sources: dict[str, str]


@dataclass(frozen=True)
class Change:
    """One audited write: `new_value` None means the key was reset at that scope."""

    scope: Scope
    key: str
    old_value: Any
    new_value: Any
    actor_id: int
    changed_at: datetime


# --- validation ---------------------------------------------------------------


def validate_system_prompt(text: object) -> str:
    """Check a persona before it is stored; raise `InvalidKnobs` saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidKnobs("The system prompt must be text.")
    if not text.strip():
        raise InvalidKnobs("The system prompt is empty; reset it instead to use the default.")
    if len(text) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidKnobs(
            f"The system prompt is {len(text)} characters long; the limit is "
            f"{MAX_SYSTEM_PROMPT_CHARS}."
        )
    if "\x00" in text:
        raise InvalidKnobs("The system prompt cannot contain NUL characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKnobs(
            "The system prompt contains characters that are not valid Unicode."
        ) from None
    return text


def _validate_value(key: str, value: Any) -> Any:
    """Normalise one stored or submitted value (raises `InvalidKnobs`)."""
    if key == SYSTEM_PROMPT_KEY:
        return validate_system_prompt(value)
    return validate_knob(key, value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _decode(raw: object) -> Any:
    """JSON → Python, refusing NaN/Infinity (which `json` accepts by default)."""
    if not isinstance(raw, str):
        raise ValueError("value is not JSON text")
    return json.loads(raw, parse_constant=_reject_constant)


def _encode(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# --- SQL (constants only) -----------------------------------------------------

_CHAIN_TERM = (
    "SELECT {rank} AS rank, key, value FROM settings "
    "WHERE scope_kind = ? AND scope_id = ? AND guild_id IS ?"
)
# One statement per chain length (1: DM, 2: channel, 3: thread). Each branch is
# a primary-key range lookup; the guild check keeps a stray row from applying
# in another server.
_RESOLVE_SQL: Final[dict[int, str]] = {
    n: " UNION ALL ".join(_CHAIN_TERM.format(rank=i) for i in range(n)) for n in (1, 2, 3)
}

_UPSERT_SQL: Final = """
    INSERT INTO settings (scope_kind, scope_id, key, value, guild_id, updated_by, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (scope_kind, scope_id, key) DO UPDATE SET
        value = excluded.value, guild_id = excluded.guild_id,
        updated_by = excluded.updated_by, updated_at = excluded.updated_at
"""

_HISTORY_SQL: Final = """
    INSERT INTO settings_history
        (scope_kind, scope_id, guild_id, key, old_value, new_value, actor_id, changed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

_SETTINGS_COLUMNS: Final = "scope_kind, scope_id, guild_id, key, value, updated_by, updated_at"
_HISTORY_COLUMNS: Final = (
    "scope_kind, scope_id, guild_id, key, old_value, new_value, actor_id, changed_at"
)


def _save_error(exc: sqlite3.Error) -> SettingsError:
    """Turn a SQLite failure during a write into a sentence a person can act on."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        reason = "the database is busy"
    elif primary == sqlite3.SQLITE_FULL:
        reason = "the disk is full"
    elif primary == sqlite3.SQLITE_READONLY:
        reason = "the database is read-only"
    elif primary == sqlite3.SQLITE_IOERR:
        reason = "the disk reported an I/O error"
    else:
        reason = "the database reported an error"
    return SettingsError(f"Couldn't save the setting: {reason}; nothing was changed.")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- the store ----------------------------------------------------------------


class SettingsStore:
    """Settings per server, channel, thread and DM user, in one SQLite file.

    Build it once at start-up with `SettingsStore.open` and close it on
    shutdown. Only one process should write a given file (the bot's shard
    host); several connections in one process are safe.
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Callable[[], datetime],
    ) -> None:
        """Use `open`; this only stores what `open` built."""
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._write_lock = asyncio.Lock()
        self._warned: set[tuple[str, int, str, str]] = set()

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], datetime] = _utcnow,
    ) -> SettingsStore:
        """Open (creating if needed) and migrate the database at `path`.

        The schema version is checked before anything is written, so a file
        from a newer bot is refused with `SettingsError` and left untouched.
        ``synchronous=FULL``: writes are rare admin actions, and "saved" should
        survive a power cut, not only a crash of this process.
        """
        path = Path(path)
        where = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"Couldn't create the folder for the settings database {where}: {exc.strerror}."
            ) from None
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            writer = await _connect(path, busy_timeout_ms)
            found = await schema_version(writer)
            if found > LATEST_VERSION:
                raise too_new_error(found, where)
            async with writer.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                log.warning("settings database %s is not in WAL mode (%r)", where, row)
            await writer.execute("PRAGMA synchronous = FULL")
            await migrate(writer, where)
            reader = await _connect(path, busy_timeout_ms)
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise SettingsError(
                    f"Couldn't open the settings database {where}: {exc}."
                ) from exc
            raise
        return cls(path, writer, reader, clock)

    async def close(self) -> None:
        """Close both connections (their worker threads keep the process alive otherwise)."""
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> SettingsStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lookups ---------------------------------------------------------------

    async def resolve(self, loc: Location) -> Effective:
        """The settings in force at `loc`: one query, invalid rows logged and skipped.

        If scopes combine into ``min_new_tokens > max_new_tokens`` (a weaker
        scope changed after a stronger one was set, or a hand edit), the
        minimum is dropped rather than the maximum: the maximum is the cost
        cap an admin chose and must hold.
        """
        chain = loc.labelled_chain()
        params: list[Any] = []
        for _, scope in chain:
            params += (scope.kind.value, scope.id, scope.guild_id)
        rows = await self._read(_RESOLVE_SQL[len(chain)], params)
        # Apply weakest first so stronger scopes overwrite; UNION ALL order is
        # not guaranteed, so sort by rank.
        values: dict[str, Any] = {}
        sources: dict[str, str] = dict.fromkeys(SETTING_KEYS, "default")
        for rank, key, raw in sorted(rows, key=lambda r: int(r[0])):
            label, scope = chain[rank]
            value = self._checked(scope, key, raw)
            if value is not _INVALID:
                values[key] = value
                sources[key] = label
        prompt = values.pop(SYSTEM_PROMPT_KEY, None)
        try:
            knobs = Knobs.model_validate(values)
        except ValidationError as exc:
            log.warning(
                "settings at %s combine into invalid knobs (%s); ignoring min_new_tokens",
                loc, describe_validation_error(exc),
            )
            values.pop("min_new_tokens", None)
            sources["min_new_tokens"] = "default"
            knobs = Knobs.model_validate(values)
        return Effective(knobs=knobs, system_prompt=prompt, sources=sources)

    async def scope_overrides(self, scope: Scope) -> dict[str, Any]:
        """What `scope` itself sets (knobs and ``"system_prompt"``), ignoring invalid rows."""
        rows = await self._read(_SCOPE_ROWS, _scope_params(scope))
        out = self._valid(scope, rows)
        return {k: out[k] for k in SETTING_KEYS if k in out}

    async def history(self, scope: Scope, limit: int = 20) -> list[Change]:
        """The latest `limit` changes at `scope`, newest first (who, what, when)."""
        limit = max(1, min(int(limit), 1000))
        rows = await self._read(
            "SELECT key, old_value, new_value, actor_id, changed_at FROM settings_history "
            "WHERE scope_kind = ? AND scope_id = ? ORDER BY id DESC LIMIT ?",
            (scope.kind.value, scope.id, limit),
        )
        return [
            Change(
                scope=scope,
                key=key,
                old_value=_decode_loosely(old),
                new_value=_decode_loosely(new),
                actor_id=int(actor),
                changed_at=datetime.fromisoformat(at),
            )
            for key, old, new, actor, at in rows
        ]

    # -- writes ----------------------------------------------------------------

    async def set_knobs(self, scope: Scope, values: Mapping[str, Any], *, actor_id: int) -> None:
        """Set knobs at `scope`; all or nothing.

        Each value is validated on its own first (the message names the knob),
        then the combination in force at that scope (defaults ← server ←
        scope) is checked, so ``min_new_tokens`` can't end up above an
        inherited ``max_new_tokens``. For a server scope, channels of that
        server that set their own min/max are checked too.
        """
        _check_id("actor_id", actor_id)
        if not values:
            raise InvalidKnobs("Name at least one setting to change.")
        normalised = {name: validate_knob(name, value) for name, value in values.items()}

        async def work(conn: aiosqlite.Connection) -> None:
            await self._check_combination(conn, scope, normalised)
            await self._upsert(conn, scope, normalised, actor_id)

        await self._write(work)

    async def reset_knobs(
        self, scope: Scope, names: Sequence[str] | None, *, actor_id: int
    ) -> list[str]:
        """Stop overriding `names` (None = every knob) at `scope`; returns those that were set.

        A reset is never refused: it is the way back to a known state. If it
        leaves an inherited min above max, `resolve` drops the minimum.
        """
        _check_id("actor_id", actor_id)
        if names is None:
            keys = list(KNOB_NAMES)
        else:
            unknown = sorted(set(names) - set(KNOB_NAMES))
            if unknown:
                raise InvalidKnobs(
                    f"Unknown setting {', '.join(f'`{u}`' for u in unknown)}. "
                    f"Known: {', '.join(KNOB_NAMES)}."
                )
            keys = [k for k in KNOB_NAMES if k in set(names)]
        return await self._write(lambda conn: self._delete(conn, scope, keys, actor_id))

    async def set_system_prompt(self, scope: Scope, text: str, *, actor_id: int) -> None:
        """Set the persona at `scope` (validated: length, NUL, lone surrogates)."""
        _check_id("actor_id", actor_id)
        prompt = validate_system_prompt(text)
        await self._write(
            lambda conn: self._upsert(conn, scope, {SYSTEM_PROMPT_KEY: prompt}, actor_id)
        )

    async def reset_system_prompt(self, scope: Scope, *, actor_id: int) -> bool:
        """Stop overriding the persona at `scope`; True if it was set there."""
        _check_id("actor_id", actor_id)
        done = await self._write(
            lambda conn: self._delete(conn, scope, [SYSTEM_PROMPT_KEY], actor_id)
        )
        return bool(done)

    # -- export / import -------------------------------------------------------

    async def export_guilds(self, guilds: Iterable[int] | Callable[[int], bool]) -> dict[str, Any]:
        """A JSON-able dump of every row (settings and history) of the given guilds.

        `guilds` is a collection of guild ids or a predicate on the guild id.
        DM scopes belong to no guild and are never included.
        """
        if callable(guilds):
            predicate = guilds
            found = await self._read(
                "SELECT DISTINCT guild_id FROM settings WHERE guild_id IS NOT NULL", ()
            )
            ids = [int(g) for (g,) in found if predicate(int(g))]
        else:
            ids = [_check_id("guild_id", g) for g in guilds]
        where = "guild_id IN (SELECT value FROM json_each(?))"
        return await self._export(where, (json.dumps(ids),))

    async def export_shard(self, shard_id: int, shard_count: int) -> dict[str, Any]:
        """Dump the guilds Discord routes to `shard_id`: ``(guild_id >> 22) % shard_count``."""
        if shard_count < 1 or not 0 <= shard_id < shard_count:
            raise ValueError(f"shard {shard_id} of {shard_count} does not exist")
        where = "guild_id IS NOT NULL AND (guild_id >> 22) % ? = ?"
        return await self._export(where, (shard_count, shard_id))

    async def import_rows(self, data: Mapping[str, Any]) -> int:
        """Load a dump from `export_guilds`/`export_shard`; returns settings rows written.

        Every row is validated before anything is written and the whole import
        is one transaction, so a bad dump changes nothing. Existing rows for
        the same scope and key are replaced; history rows already present are
        not duplicated, so importing the same dump twice is harmless.
        """
        version = data.get("format_version")
        if data.get("format") != EXPORT_FORMAT or version != EXPORT_FORMAT_VERSION:
            raise SettingsError(
                f"That is not a {EXPORT_FORMAT} dump of version {EXPORT_FORMAT_VERSION}."
            )
        settings = [_import_setting(i, row) for i, row in enumerate(data.get("settings", []))]
        history = [_import_history(i, row) for i, row in enumerate(data.get("history", []))]

        async def work(conn: aiosqlite.Connection) -> int:
            await conn.executemany(
                f"INSERT OR REPLACE INTO settings ({_SETTINGS_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                settings,
            )
            await conn.executemany(
                f"INSERT INTO settings_history ({_HISTORY_COLUMNS}) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS ("
                " SELECT 1 FROM settings_history WHERE scope_kind = ?1 AND scope_id = ?2"
                " AND key = ?4 AND new_value IS ?6 AND actor_id = ?7 AND changed_at = ?8)",
                history,
            )
            return len(settings)

        return await self._write(work)

    # -- recent asks (for Regenerate) -------------------------------------------

    async def save_ask(self, ask_id: int, record: Mapping[str, Any], keep: int = 5000) -> None:
        """Remember an ask's prompt and settings; only the newest `keep` are kept."""
        payload = json.dumps(dict(record), ensure_ascii=False)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO asks (id, guild_id, channel_id, user_id, payload, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (ask_id, record.get("guild_id"), record.get("channel_id"),
                 int(record.get("user_id") or 0), payload,
                 self._clock().astimezone(UTC).isoformat(timespec="milliseconds")),
            )
            await conn.execute(
                "DELETE FROM asks WHERE id NOT IN (SELECT id FROM asks ORDER BY id DESC LIMIT ?)",
                (keep,),
            )

        await self._write(work)

    async def load_ask(self, ask_id: int) -> dict[str, Any] | None:
        rows = await self._read("SELECT payload FROM asks WHERE id = ?", (ask_id,))
        if not rows:
            return None
        try:
            data = json.loads(rows[0][0])
        except (TypeError, ValueError):
            log.warning("ignoring unreadable stored ask %d", ask_id)
            return None
        return data if isinstance(data, dict) else None

    # -- internals -------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {exc}.") from None
        return [tuple(r) for r in rows]

    async def _write(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `work` in one ``BEGIN IMMEDIATE`` transaction; roll back on any failure."""
        async with self._write_lock:
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                result = await work(conn)
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                log.warning("settings write failed: %s", exc, exc_info=True)
                raise _save_error(exc) from None
            except BaseException:
                await self._rollback()
                raise
            return result

    async def _rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("settings rollback failed", exc_info=True)

    def _checked(self, scope: Scope, key: str, raw: object) -> Any:
        """A stored value validated on the way out, or `_INVALID` (logged once per row)."""
        try:
            if key not in SETTING_KEYS:
                raise InvalidKnobs(f"unknown setting `{key}`")
            return _validate_value(key, _decode(raw))
        except (InvalidKnobs, ValueError) as exc:
            signature = (scope.kind.value, scope.id, key, str(raw))
            if signature not in self._warned:
                if len(self._warned) >= _WARNED_LIMIT:
                    self._warned.clear()
                self._warned.add(signature)
                log.warning(
                    "ignoring invalid stored setting %s=%.80r at %s %d: %s",
                    key, raw, scope.kind.value, scope.id, exc,
                )
            return _INVALID

    async def _rows(self, conn: aiosqlite.Connection, scope: Scope) -> dict[str, Any]:
        """Valid values set at `scope`, read through `conn` (inside a write transaction)."""
        rows = await conn.execute_fetchall(_SCOPE_ROWS, _scope_params(scope))
        return self._valid(scope, rows)

    def _valid(self, scope: Scope, rows: Iterable[Any]) -> dict[str, Any]:
        """The rows of one scope as key → value, dropping (and logging) invalid ones."""
        out: dict[str, Any] = {}
        for key, raw in rows:
            value = self._checked(scope, key, raw)
            if value is not _INVALID:
                out[key] = value
        return out

    async def _check_combination(
        self, conn: aiosqlite.Connection, scope: Scope, new: dict[str, Any]
    ) -> None:
        """Refuse values that would make the knobs in force at `scope` inconsistent."""
        chain = [scope]
        if scope.kind is ScopeKind.CHANNEL:
            assert scope.guild_id is not None
            chain.insert(0, Scope.server(scope.guild_id))
        merged: dict[str, Any] = {}
        inherited: set[str] = set()
        for s in chain:
            for key, value in (await self._rows(conn, s)).items():
                if key in KNOB_NAMES:
                    merged[key] = value
                    if s != scope:
                        inherited.add(key)
                    else:
                        inherited.discard(key)
        merged.update(new)
        inherited -= set(new)
        try:
            knobs = build_knobs(merged)
        except InvalidKnobs as exc:
            where = " (from the server settings)" if inherited else ""
            raise InvalidKnobs(
                f"{exc.message.removesuffix('.')}{where}. "
                "Change both together, or the other one first."
            ) from None
        if scope.kind is ScopeKind.SERVER and {"min_new_tokens", "max_new_tokens"} & set(new):
            await self._check_channels(conn, scope, knobs)

    async def _check_channels(
        self, conn: aiosqlite.Connection, server: Scope, knobs: Knobs
    ) -> None:
        """A server-wide min/max must not conflict with channels that set the other one."""
        rows = await conn.execute_fetchall(
            "SELECT scope_id, key, value FROM settings WHERE scope_kind = 'channel' "
            "AND guild_id = ? AND key IN ('min_new_tokens', 'max_new_tokens')",
            (server.id,),
        )
        per_channel: dict[int, dict[str, Any]] = {}
        for channel_id, key, raw in rows:
            value = self._checked(Scope.channel(int(channel_id), server.id), key, raw)
            if value is not _INVALID:
                per_channel.setdefault(int(channel_id), {})[key] = value
        bad = sorted(
            cid for cid, own in per_channel.items()
            if own.get("min_new_tokens", knobs.min_new_tokens)
            > own.get("max_new_tokens", knobs.max_new_tokens)
        )
        if bad:
            raise InvalidKnobs(
                f"That would put min_new_tokens above max_new_tokens in {len(bad)} channel(s) "
                f"that set their own value (channel ids: {', '.join(map(str, bad[:5]))}"
                f"{', …' if len(bad) > 5 else ''}). Change or reset those first."
            )

    async def _upsert(
        self, conn: aiosqlite.Connection, scope: Scope, values: dict[str, Any], actor_id: int
    ) -> None:
        """Write `values` at `scope` with one history row each (unchanged values skipped)."""
        now = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        placeholders = ", ".join("?" for _ in values)
        rows = await conn.execute_fetchall(
            "SELECT key, value FROM settings WHERE scope_kind = ? AND scope_id = ? "
            f"AND key IN ({placeholders})",
            (scope.kind.value, scope.id, *values),
        )
        existing: dict[str, str] = {str(k): str(v) for k, v in rows}
        for key, value in values.items():
            encoded = _encode(value)
            old = existing.get(key)
            if old == encoded:
                continue
            await conn.execute(
                _UPSERT_SQL,
                (scope.kind.value, scope.id, key, encoded, scope.guild_id, actor_id, now),
            )
            await conn.execute(
                _HISTORY_SQL,
                (scope.kind.value, scope.id, scope.guild_id, key, old, encoded, actor_id, now),
            )

    async def _delete(
        self, conn: aiosqlite.Connection, scope: Scope, keys: list[str], actor_id: int
    ) -> list[str]:
        """Delete `keys` at `scope`, auditing each; returns the keys that existed."""
        now = self._clock().astimezone(UTC).isoformat(timespec="milliseconds")
        placeholders = ", ".join("?" for _ in keys)
        rows = await conn.execute_fetchall(
            "SELECT key, value FROM settings WHERE scope_kind = ? AND scope_id = ? "
            f"AND key IN ({placeholders})",
            (scope.kind.value, scope.id, *keys),
        )
        existing: dict[str, str] = {str(k): str(v) for k, v in rows}
        done = [k for k in keys if k in existing]
        for key in done:
            await conn.execute(
                "DELETE FROM settings WHERE scope_kind = ? AND scope_id = ? AND key = ?",
                (scope.kind.value, scope.id, key),
            )
            await conn.execute(
                _HISTORY_SQL,
                (scope.kind.value, scope.id, scope.guild_id, key, existing[key], None,
                 actor_id, now),
            )
        return done

    async def _export(self, where: str, params: Sequence[Any]) -> dict[str, Any]:
        """Rows matching `where` (a constant from this module) as a JSON-able dict."""
        settings_rows = await self._read(
            f"SELECT {_SETTINGS_COLUMNS} FROM settings WHERE {where} "
            "ORDER BY guild_id, scope_kind DESC, scope_id, key",
            params,
        )
        history_rows = await self._read(
            f"SELECT {_HISTORY_COLUMNS} FROM settings_history WHERE {where} ORDER BY id",
            params,
        )
        settings: list[dict[str, Any]] = []
        for kind, sid, gid, key, raw, by, at in settings_rows:
            scope = Scope(ScopeKind(kind), int(sid), None if gid is None else int(gid))
            value = self._checked(scope, key, raw)
            if value is _INVALID:
                continue
            settings.append({
                "scope_kind": kind, "scope_id": sid, "guild_id": gid, "key": key,
                "value": list(value) if isinstance(value, tuple) else value,
                "updated_by": by, "updated_at": at,
            })
        history = [
            {
                "scope_kind": kind, "scope_id": sid, "guild_id": gid, "key": key,
                "old_value": old, "new_value": new, "actor_id": actor, "changed_at": at,
            }
            for kind, sid, gid, key, old, new, actor, at in history_rows
        ]
        return {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "schema_version": LATEST_VERSION,
            "exported_at": self._clock().astimezone(UTC).isoformat(timespec="milliseconds"),
            "settings": settings,
            "history": history,
        }


class _Invalid:
    """Marker for a stored value that failed validation (None is a valid JSON value)."""


_INVALID: Final = _Invalid()


_SCOPE_ROWS = (
    "SELECT key, value FROM settings WHERE scope_kind = ? AND scope_id = ? AND guild_id IS ?"
)


def _scope_params(scope: Scope) -> tuple[str, int, int | None]:
    return (scope.kind.value, scope.id, scope.guild_id)


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """An autocommit connection: transactions are always explicit in this module."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


def _decode_loosely(raw: str | None) -> Any:
    """History values for display: decoded JSON, or the raw text if a hand edit broke it."""
    if raw is None:
        return None
    try:
        return _decode(raw)
    except ValueError:
        return raw


def _import_setting(index: int, row: Any) -> tuple[Any, ...]:
    """One exported settings row, validated, as parameters for the insert."""
    try:
        scope = Scope(ScopeKind(row["scope_kind"]), row["scope_id"], row.get("guild_id"))
        key = row["key"]
        if key not in SETTING_KEYS:
            raise InvalidKnobs(f"unknown setting `{key}`")
        value = _validate_value(key, row["value"])
        by = _check_id("updated_by", row["updated_by"])
        at = datetime.fromisoformat(row["updated_at"]).isoformat(timespec="milliseconds")
    except (InvalidKnobs, ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = exc.message if isinstance(exc, InvalidKnobs) else repr(exc)
        raise SettingsError(f"Settings row {index} of the dump is invalid: {detail}") from None
    return (scope.kind.value, scope.id, scope.guild_id, key, _encode(value), by, at)


def _import_history(index: int, row: Any) -> tuple[Any, ...]:
    """One exported history row, type-checked (values are kept as recorded)."""
    try:
        scope = Scope(ScopeKind(row["scope_kind"]), row["scope_id"], row.get("guild_id"))
        key = str(row["key"])
        old, new = row["old_value"], row["new_value"]
        for v in (old, new):
            if v is not None and not isinstance(v, str):
                raise TypeError("old_value/new_value must be JSON text or null")
        actor = _check_id("actor_id", row["actor_id"])
        at = datetime.fromisoformat(row["changed_at"]).isoformat(timespec="milliseconds")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"History row {index} of the dump is invalid: {exc!r}") from None
    return (scope.kind.value, scope.id, scope.guild_id, key, old, new, actor, at)


__all__ = [
    "EXPORT_FORMAT",
    "MAX_SYSTEM_PROMPT_CHARS",
    "SYSTEM_PROMPT_KEY",
    "Change",
    "Effective",
    "Location",
    "Scope",
    "ScopeKind",
    "SettingsStore",
    "validate_system_prompt",
]
