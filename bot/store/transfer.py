"""Export and import of servers' settings, to move them between shard hosts.

A dump is JSON: every settings and history row of the chosen guilds. Import
validates every row first (`prepare_import`, no database needed) and writes in one
transaction, so a bad dump changes nothing. Formatted SQL joins only this
module's constants; every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bot.errors import InvalidKnobs, SettingsError
from bot.store.db import Tx
from bot.store.migrations import LATEST_VERSION
from bot.store.scopes import SETTING_KEYS, Scope, ScopeKind, check_id
from bot.store.store import SettingsStore
from bot.store.validation import INVALID, decode_value, encode_value, validate_value

EXPORT_FORMAT: Final = "llamacord-settings"
EXPORT_FORMAT_VERSION: Final = 1

_SETTINGS_COLUMNS: Final = "scope_kind, scope_id, guild_id, key, value, updated_by, updated_at"
_HISTORY_COLUMNS: Final = (
    "scope_kind, scope_id, guild_id, key, old_value, new_value, actor_id, changed_at"
)



async def export_guilds(
store: SettingsStore, guilds: Iterable[int] | Callable[[int], bool]
) -> dict[str, Any]:
    """A JSON-able dump of every row (settings and history) of the given guilds.

    `guilds` is a collection of guild ids or a predicate on the guild id.
    DM scopes belong to no guild and are never included.
    """
    if callable(guilds):
        predicate = guilds
        found = await store.db.read(
            "SELECT DISTINCT guild_id FROM settings WHERE guild_id IS NOT NULL", ()
        )
        ids = [int(g) for (g,) in found if predicate(int(g))]
    else:
        ids = [check_id("guild_id", g) for g in guilds]
    if not ids:
        return await _export(store, "0 = 1", ())
    where = f"guild_id IN ({', '.join('?' for _ in ids)})"
    return await _export(store, where, ids)

async def export_shard(store: SettingsStore, shard_id: int, shard_count: int) -> dict[str, Any]:
    """Dump the guilds Discord routes to `shard_id`: ``(guild_id >> 22) % shard_count``."""
    if shard_count < 1 or not 0 <= shard_id < shard_count:
        raise ValueError(f"shard {shard_id} of {shard_count} does not exist")
    where = "guild_id IS NOT NULL AND (guild_id >> 22) % ? = ?"
    return await _export(store, where, (shard_count, shard_id))

@dataclass(frozen=True)
class PreparedImport:
    """A dump checked row by row: parameters ready for the insert statements."""

    settings: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]


def prepare_import(data: Mapping[str, Any]) -> PreparedImport:
    """Validate a whole dump without touching any database (raises `SettingsError`).

    Every failure is one sentence naming the row; nothing here can raise past
    `SettingsError` (lone surrogates, deep nesting and wrong types included).
    """
    if not isinstance(data, Mapping):
        raise SettingsError("That is not a settings dump (expected a JSON object).")
    version = data.get("format_version")
    if data.get("format") != EXPORT_FORMAT or version != EXPORT_FORMAT_VERSION:
        raise SettingsError(
            f"That is not a {EXPORT_FORMAT} dump of version {EXPORT_FORMAT_VERSION}."
        )
    rows, history = data.get("settings", []), data.get("history", [])
    if not isinstance(rows, list) or not isinstance(history, list):
        raise SettingsError("The dump's settings and history must be lists.")
    return PreparedImport(
        settings=[_import_setting(i, row) for i, row in enumerate(rows)],
        history=[_import_history(i, row) for i, row in enumerate(history)],
    )


async def import_rows(store: SettingsStore, data: Mapping[str, Any] | PreparedImport) -> int:
    """Load a dump from `export_guilds`/`export_shard`; returns settings rows written.

    Every row is validated before anything is written and the whole import
    is one transaction, so a bad dump changes nothing. Existing rows for
    the same scope and key are replaced; history rows already present are
    not duplicated, so importing the same dump twice is harmless.
    """
    prepared = data if isinstance(data, PreparedImport) else prepare_import(data)
    settings, history = prepared.settings, prepared.history

    async def work(conn: Tx) -> int:
        await conn.executemany(
            f"INSERT INTO settings ({_SETTINGS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (scope_kind, scope_id, key) DO UPDATE SET "
            "guild_id = excluded.guild_id, value = excluded.value, "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            settings,
        )
        await conn.executemany(
            f"INSERT INTO settings_history ({_HISTORY_COLUMNS}) "
            "SELECT CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), "
            "CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS TEXT) "
            "WHERE NOT EXISTS ("
            " SELECT 1 FROM settings_history WHERE scope_kind = ?1 AND scope_id = ?2"
            " AND key = ?4 AND new_value IS ?6 AND actor_id = ?7 AND changed_at = ?8)",
            history,
        )
        return len(settings)

    return await store.db.write(work)


async def _export(store: SettingsStore, where: str, params: Sequence[Any]) -> dict[str, Any]:
    """Rows matching `where` (a constant from this module) as a JSON-able dict."""
    settings_rows = await store.db.read(
        f"SELECT {_SETTINGS_COLUMNS} FROM settings WHERE {where} "
        "ORDER BY guild_id, scope_kind DESC, scope_id, key",
        params,
    )
    history_rows = await store.db.read(
        f"SELECT {_HISTORY_COLUMNS} FROM settings_history WHERE {where} ORDER BY id",
        params,
    )
    settings: list[dict[str, Any]] = []
    for kind, sid, gid, key, raw, by, at in settings_rows:
        scope = Scope(ScopeKind(kind), int(sid), None if gid is None else int(gid))
        value = store.values.checked(scope, key, raw)
        if value is INVALID:
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
        "exported_at": store.db.now_iso(),
        "settings": settings,
        "history": history,
    }



#: The longest JSON text a history value may have: a persona (4,000 characters),
#: each escaped, with room to spare; anything longer is not something we wrote.
MAX_HISTORY_VALUE_CHARS: Final = 32_768
_ROW_ERRORS = (InvalidKnobs, ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _row_error(what: str, index: int, exc: BaseException) -> SettingsError:
    if isinstance(exc, InvalidKnobs):
        detail = exc.message
    elif isinstance(exc, RecursionError):
        detail = "a value is nested too deeply"
    elif isinstance(exc, KeyError):
        detail = f"the field {exc.args[0]!r} is missing"
    else:
        detail = str(exc) or type(exc).__name__
    return SettingsError(f"{what} row {index} of the dump is invalid: {detail.rstrip('.')}.")


def _row(row: Any) -> Mapping[str, Any]:
    if not isinstance(row, Mapping):
        raise TypeError("it is not a JSON object")
    return row


def _scope(row: Mapping[str, Any]) -> Scope:
    return Scope(ScopeKind(row["scope_kind"]), row["scope_id"], row.get("guild_id"))


def _key(row: Mapping[str, Any]) -> str:
    key = row["key"]
    if not isinstance(key, str) or key not in SETTING_KEYS:
        shown = key[:40] if isinstance(key, str) else key
        raise InvalidKnobs(f"unknown setting {shown!r}")
    return key


def _actor(what: str, value: object) -> int:
    actor = check_id(what, value)
    if actor == 0:
        raise ValueError(f"{what} must be a real user id, not 0")
    return actor


def _timestamp(what: str, value: object) -> str:
    """An ISO time with its offset, as stored (UTC, milliseconds); naive times are refused."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{what} must be an ISO 8601 time")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"{what} has no time zone ({value!r}); expected e.g. +00:00")
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def _history_value(key: str, raw: object) -> str | None:
    """A recorded old/new value: null, or JSON text valid for its key, re-encoded."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise TypeError("old_value/new_value must be JSON text or null")
    if len(raw) > MAX_HISTORY_VALUE_CHARS:
        raise ValueError(f"a value is {len(raw):,} characters long")
    raw.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return encode_value(validate_value(key, decode_value(raw)))


def _import_setting(index: int, row: Any) -> tuple[Any, ...]:
    """One exported settings row, validated, as parameters for the insert."""
    try:
        row = _row(row)
        scope = _scope(row)
        key = _key(row)
        value = validate_value(key, row["value"])
        by = _actor("updated_by", row["updated_by"])
        at = _timestamp("updated_at", row["updated_at"])
        encoded = encode_value(value)
    except _ROW_ERRORS as exc:
        raise _row_error("Settings", index, exc) from None
    return (scope.kind.value, scope.id, scope.guild_id, key, encoded, by, at)


def _import_history(index: int, row: Any) -> tuple[Any, ...]:
    """One exported history row, validated like a settings row."""
    try:
        row = _row(row)
        scope = _scope(row)
        key = _key(row)
        old = _history_value(key, row["old_value"])
        new = _history_value(key, row["new_value"])
        actor = _actor("actor_id", row["actor_id"])
        at = _timestamp("changed_at", row["changed_at"])
    except _ROW_ERRORS as exc:
        raise _row_error("History", index, exc) from None
    return (scope.kind.value, scope.id, scope.guild_id, key, old, new, actor, at)
