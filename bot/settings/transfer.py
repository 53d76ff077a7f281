"""Export and import of servers' settings, to move them between shard hosts.

A dump is JSON: every settings and history row of the chosen guilds. Import
validates every row before writing anything and is one transaction, so a bad
dump changes nothing. Formatted SQL here joins only this module's constants
(column lists and the guild filters below); every value is a parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import aiosqlite

from bot.errors import InvalidKnobs, SettingsError
from bot.settings.migrations import LATEST_VERSION
from bot.settings.scopes import (
    SETTING_KEYS,
    Scope,
    ScopeKind,
    check_id,
    encode_value,
    validate_value,
)
from bot.settings.store import INVALID, SettingsStore

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
    where = "guild_id IN (SELECT value FROM json_each(?))"
    return await _export(store, where, (json.dumps(ids),))

async def export_shard(store: SettingsStore, shard_id: int, shard_count: int) -> dict[str, Any]:
    """Dump the guilds Discord routes to `shard_id`: ``(guild_id >> 22) % shard_count``."""
    if shard_count < 1 or not 0 <= shard_id < shard_count:
        raise ValueError(f"shard {shard_id} of {shard_count} does not exist")
    where = "guild_id IS NOT NULL AND (guild_id >> 22) % ? = ?"
    return await _export(store, where, (shard_count, shard_id))

async def import_rows(store: SettingsStore, data: Mapping[str, Any]) -> int:
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
        value = store.checked(scope, key, raw)
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



def _import_setting(index: int, row: Any) -> tuple[Any, ...]:
    """One exported settings row, validated, as parameters for the insert."""
    try:
        scope = Scope(ScopeKind(row["scope_kind"]), row["scope_id"], row.get("guild_id"))
        key = row["key"]
        if key not in SETTING_KEYS:
            raise InvalidKnobs(f"unknown setting `{key}`")
        value = validate_value(key, row["value"])
        by = check_id("updated_by", row["updated_by"])
        at = datetime.fromisoformat(row["updated_at"]).isoformat(timespec="milliseconds")
    except (InvalidKnobs, ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = exc.message if isinstance(exc, InvalidKnobs) else repr(exc)
        raise SettingsError(f"Settings row {index} of the dump is invalid: {detail}") from None
    return (scope.kind.value, scope.id, scope.guild_id, key, encode_value(value), by, at)


def _import_history(index: int, row: Any) -> tuple[Any, ...]:
    """One exported history row, type-checked (values are kept as recorded)."""
    try:
        scope = Scope(ScopeKind(row["scope_kind"]), row["scope_id"], row.get("guild_id"))
        key = str(row["key"])
        old, new = row["old_value"], row["new_value"]
        for v in (old, new):
            if v is not None and not isinstance(v, str):
                raise TypeError("old_value/new_value must be JSON text or null")
        actor = check_id("actor_id", row["actor_id"])
        at = datetime.fromisoformat(row["changed_at"]).isoformat(timespec="milliseconds")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"History row {index} of the dump is invalid: {exc!r}") from None
    return (scope.kind.value, scope.id, scope.guild_id, key, old, new, actor, at)

