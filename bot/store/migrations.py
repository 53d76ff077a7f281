"""Numbered, forward-only schema migrations for the settings database.

The SQLite version lives in the file (``PRAGMA user_version``), so it travels with
it; `bot.store.migrations_postgres` applies the same list to PostgreSQL. Migration
N (its position in `MIGRATIONS`) runs with its version bump in one ``BEGIN
IMMEDIATE`` transaction. Append only: never edit or reorder a released migration.
"""

from __future__ import annotations

import aiosqlite

from bot.errors import SettingsError
from bot.store.migration_models import MODEL_MIGRATION
from bot.store.migration_swipes import STATEMENTS as STATEMENTS_5

#: Migration 7's backfill: SQLite JSON functions over rows written before it. A
#: PostgreSQL database starts at the latest version, so it has no such rows.
ASK_PRIVATE_BACKFILL = (
    "UPDATE asks SET private = 1 "
    "WHERE json_valid(payload) AND json_extract(payload, '$.private') = 1"
)
ASK_PRIVATE_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE asks ADD COLUMN private INTEGER NOT NULL DEFAULT 0",
    ASK_PRIVATE_BACKFILL,
)

#: Statements that only a SQLite file needs (`bot.store.migrations_postgres` skips them).
SQLITE_ONLY: frozenset[str] = frozenset({ASK_PRIVATE_BACKFILL})

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one row per (scope, key). `value` is JSON so every knob type (numbers,
    # the stop list, the persona text) shares one column; `guild_id` is kept on
    # channel rows so a server can be exported with its channels and so a row
    # can never leak into another server's lookups.
    (
        """
        CREATE TABLE settings (
            scope_kind  TEXT    NOT NULL CHECK (scope_kind IN ('server', 'channel', 'dm')),
            scope_id    INTEGER NOT NULL,
            key         TEXT    NOT NULL,
            value       TEXT    NOT NULL,
            guild_id    INTEGER,
            updated_by  INTEGER NOT NULL,
            updated_at  TEXT    NOT NULL,
            PRIMARY KEY (scope_kind, scope_id, key)
        ) WITHOUT ROWID
        """,
    ),
    # 2: the audit trail (who changed what, when) and the index that export
    # by guild/shard needs.
    (
        """
        CREATE TABLE settings_history (
            id          INTEGER PRIMARY KEY,
            scope_kind  TEXT    NOT NULL,
            scope_id    INTEGER NOT NULL,
            guild_id    INTEGER,
            key         TEXT    NOT NULL,
            old_value   TEXT,
            new_value   TEXT,
            actor_id    INTEGER NOT NULL,
            changed_at  TEXT    NOT NULL
        )
        """,
        "CREATE INDEX settings_history_scope ON settings_history (scope_kind, scope_id, id)",
        "CREATE INDEX settings_history_guild ON settings_history (guild_id)",
        "CREATE INDEX settings_guild ON settings (guild_id)",
    ),
    # 3: recent asks, so a Regenerate button pressed after a restart still has
    # its prompt and settings. Pruned to the newest rows on insert.
    (
        """
        CREATE TABLE asks (
            id          INTEGER PRIMARY KEY,
            guild_id    INTEGER,
            channel_id  INTEGER,
            user_id     INTEGER NOT NULL,
            payload     TEXT    NOT NULL,
            created_at  TEXT    NOT NULL
        )
        """,
    ),
    # 4: conversations. One row per turn; `parent_id` links a turn to the one it
    # follows, so a conversation is a tree and a branch is a path from a leaf up
    # (pressing Reply on an earlier answer adds a second child). Deleting a turn
    # (retention) cuts the chain there instead of failing. `turn_messages` maps
    # every Discord message of a turn (the asker's, each page of an answer) to it,
    # so a reply to any of them finds its conversation; `conversation_heads` is
    # the current turn of a place that has one (a DM, a thread, the console).
    (
        """
        CREATE TABLE turns (
            id              INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL,
            parent_id       INTEGER REFERENCES turns (id) ON DELETE SET NULL,
            role            TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
            text            TEXT    NOT NULL,
            author_id       INTEGER NOT NULL,
            author_name     TEXT    NOT NULL,
            ask_id          INTEGER,
            guild_id        INTEGER,
            channel_id      INTEGER,
            private         INTEGER NOT NULL DEFAULT 0,
            created_at      TEXT    NOT NULL
        )
        """,
        "CREATE INDEX turns_ask ON turns (ask_id)",
        "CREATE INDEX turns_parent ON turns (parent_id)",
        "CREATE INDEX turns_created ON turns (created_at)",
        """
        CREATE TABLE turn_messages (
            message_id  INTEGER PRIMARY KEY,
            turn_id     INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE
        )
        """,
        "CREATE INDEX turn_messages_turn ON turn_messages (turn_id)",
        """
        CREATE TABLE conversation_heads (
            place       TEXT    PRIMARY KEY,
            turn_id     INTEGER REFERENCES turns (id) ON DELETE SET NULL,
            updated_at  TEXT    NOT NULL
        )
        """,
    ),
    # 5: swipes, Continue, stored reasoning, named personas; the
    # statements and their design notes live in `migration_swipes`.
    STATEMENTS_5,
    # 6: `turns.model`, the model that answered each turn
    # (bot/store/migration_models.py).
    MODEL_MIGRATION,
    # 7: whether an ask was private, as a column: reads and pruning test it
    # without JSON functions, so the same SQL runs on SQLite and PostgreSQL.
    ASK_PRIVATE_MIGRATION,
)

LATEST_VERSION = len(MIGRATIONS)


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The version recorded in the file (0 for a new, empty database)."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def too_new_error(found: int, where: str) -> SettingsError:
    """The refusal for a file written by a newer bot: touching it could corrupt it."""
    return SettingsError(
        f"The settings database {where} has schema version {found}, but this version of "
        f"the bot only knows up to {LATEST_VERSION}. Upgrade the bot or restore a backup; "
        "the file was not modified."
    )


async def migrate(conn: aiosqlite.Connection, where: str, target: int = LATEST_VERSION) -> int:
    """Bring `conn`'s database up to `target`, one transaction per migration.

    The connection must be in autocommit mode (``isolation_level=None``) so the
    explicit ``BEGIN IMMEDIATE`` here is the only transaction. The version is
    re-read inside the write lock so two processes opening a new file at once
    cannot both apply the same migration. Returns the final version.
    """
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(conn)
            if current > LATEST_VERSION:
                raise too_new_error(current, where)
            if current >= target:
                await conn.execute("ROLLBACK")
                return current
            for statement in MIGRATIONS[current]:
                await conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int from this module.
            await conn.execute(f"PRAGMA user_version = {int(current + 1)}")
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
