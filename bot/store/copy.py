"""`python -m bot db copy FROM TO`: the whole store from one backend to another.

A move between SQLite and PostgreSQL must lose nothing, so the copy is checked:
one transaction on the (empty) destination, then each table's row count and a
SHA-256 of its rows in primary-key order compared on both sides. On PostgreSQL
identity sequences are moved past the copied ids. Run it with the bots stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bot.errors import UserFacingError
from bot.store.connect import open_database
from bot.store.db import Database, Tx, is_postgres_url
from bot.store.member_limits import EPHEMERAL_TABLES
from bot.store.migrations_postgres import IDENTITY_TABLES

#: Tables in an order that satisfies their foreign keys; others follow by name.
TABLE_ORDER: Final = (
    "settings", "settings_history", "asks", "turns", "turn_messages",
    "conversation_heads", "swipe_choices", "personas",
)
#: Rows read and written per batch.
PAGE: Final = 2000
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def parse_target(text: str) -> Path | str:
    """``sqlite:PATH`` or a ``postgresql://`` URL, as `open_database` takes it."""
    if is_postgres_url(text):
        return text
    if text.startswith("sqlite:") and len(text) > len("sqlite:"):
        return Path(text.removeprefix("sqlite:"))
    raise UserFacingError(
        f"{text[:60]!r} is not a database: use sqlite:PATH or postgresql://user@host/db."
    )


@dataclass(frozen=True)
class TableSum:
    """What one table holds: its rows and a hash of their content."""

    rows: int
    sha256: str


@dataclass(frozen=True)
class CopyReport:
    source: dict[str, TableSum]
    destination: dict[str, TableSum]

    @property
    def identical(self) -> bool:
        return self.source == self.destination

    def lines(self) -> list[str]:
        out = []
        for table, there in self.source.items():
            here = self.destination.get(table)
            same = "ok" if here == there else "DIFFERENT"
            got = "missing" if here is None else f"{here.rows} rows {here.sha256[:16]}"
            out.append(f"{table}: {there.rows} rows {there.sha256[:16]} -> {got} {same}")
        return out


def _name(name: object) -> str:
    """A table or column name from the catalogue, checked before it is put in SQL."""
    text = str(name)
    if not text or not set(text) <= _NAME_CHARS:
        raise UserFacingError(f"Unexpected table or column name {text[:40]!r}; nothing copied.")
    return text


async def tables(db: Database) -> list[str]:
    """The store's tables (not the schema bookkeeping, nor live limits), in `TABLE_ORDER`."""
    if db.dialect == "sqlite":
        rows = await db.read(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            (),
        )
    else:
        rows = await db.read(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
            "AND table_name <> 'store_schema'",
            (),
        )
    names = {_name(r[0]) for r in rows} - set(EPHEMERAL_TABLES)
    return [t for t in TABLE_ORDER if t in names] + sorted(names - set(TABLE_ORDER))


async def columns(db: Database, table: str) -> tuple[list[str], list[str]]:
    """`table`'s columns in their order, and its primary-key columns in key order."""
    if db.dialect == "sqlite":
        rows = await db.read("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (table,))
        cols = [_name(r[0]) for r in rows]
        key = [_name(r[0]) for r in sorted((r for r in rows if r[1]), key=lambda r: int(r[1]))]
        return cols, key
    rows = await db.read(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position",
        (table,),
    )
    key_rows = await db.read(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey) WHERE i.indrelid = CAST(? AS regclass) "
        "AND i.indisprimary ORDER BY array_position(CAST(i.indkey AS int2[]), a.attnum)",
        (table,),
    )
    return [_name(r[0]) for r in rows], [_name(r[0]) for r in key_rows]


async def _pages(db: Database, table: str, cols: Sequence[str], key: Sequence[str]) -> Any:
    """`table`'s rows in primary-key order, `PAGE` at a time."""
    order = ", ".join(key) if key else ", ".join(cols)
    sql = f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order} LIMIT ? OFFSET ?"
    offset = 0
    while True:
        rows = await db.read(sql, (PAGE, offset))
        if not rows:
            return
        yield rows
        offset += len(rows)


async def summarise(db: Database) -> dict[str, TableSum]:
    """Each table's row count and content hash (the same on either backend)."""
    out: dict[str, TableSum] = {}
    for table in await tables(db):
        cols, key = await columns(db, table)
        digest = hashlib.sha256(json.dumps(cols).encode())
        count = 0
        async for rows in _pages(db, table, cols, key):
            for row in rows:
                digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
                digest.update(b"\n")
            count += len(rows)
        out[table] = TableSum(count, digest.hexdigest())
    return out


async def copy_database(source: Database, destination: Database) -> CopyReport:
    """Copy every row of `source` into the empty `destination`, then compare both."""
    src_tables = await tables(source)
    dst_tables = await tables(destination)
    if set(src_tables) != set(dst_tables):
        raise UserFacingError(
            "The two databases have different tables; start both with this version of the bot."
        )
    plans: list[tuple[str, list[str], list[str]]] = []
    for table in src_tables:
        cols, key = await columns(source, table)
        dst_cols, _ = await columns(destination, table)
        if sorted(cols) != sorted(dst_cols):
            raise UserFacingError(f"The table {table} differs between the two databases.")
        if await destination.read(f"SELECT 1 FROM {table} LIMIT 1", ()):
            raise UserFacingError(
                f"The destination {destination.where} is not empty ({table} has rows); "
                "copy into a new, empty database."
            )
        plans.append((table, cols, key))

    async def work(tx: Tx) -> None:
        for table, cols, key in plans:
            insert = (
                f"INSERT INTO {table} ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)})"
            )
            async for rows in _pages(source, table, cols, key):
                await tx.executemany(insert, rows)
        if destination.dialect == "postgresql":
            for table in IDENTITY_TABLES:
                if table in src_tables:
                    await tx.fetchall(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"COALESCE(MAX(id), 0) + 1, false) FROM {table}",
                    )

    await destination.write(work)
    return CopyReport(await summarise(source), await summarise(destination))


async def run_copy(source_text: str, destination_text: str) -> tuple[int, list[str]]:
    """The `db copy` command: exit status and the lines to print."""
    source_target = parse_target(source_text)
    destination_target = parse_target(destination_text)
    if isinstance(source_target, Path) and not source_target.is_file():
        raise UserFacingError(f"There is no SQLite database at {source_target} to copy from.")
    if source_target == destination_target:
        raise UserFacingError("FROM and TO are the same database.")
    async with await open_database(source_target) as source, \
            await open_database(destination_target) as destination:
        report = await copy_database(source, destination)
        lines = [f"copied {source.where} -> {destination.where}", *report.lines()]
    if report.identical:
        lines.append("identical: every table has the same rows and content hash")
        return 0, lines
    lines.append("DIFFERENT: the copy does not match its source (were the bots stopped?)")
    return 1, lines
