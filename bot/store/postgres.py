"""The shared backend: the whole store on a PostgreSQL server, through asyncpg.

Several bot processes (shard hosts) share one database. The store's SQL is
written once with ``?`` placeholders; `to_postgres` is the one place it is
translated. Every `write` first takes a transaction-scoped advisory lock
(`WRITE_LOCK`), the equivalent of SQLite's ``BEGIN IMMEDIATE``, so no two writers
on any host interleave; reads go straight to the pool.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.errors import SettingsError
from bot.store.db import Database, Row, Tx, utcnow
from bot.store.migrations import LATEST_VERSION, too_new_error
from bot.store.migrations_postgres import migrate_postgres, postgres_schema_version

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The advisory-lock key every write transaction takes (any constant the bot owns).
WRITE_LOCK: Final = 0x6C6C_6D63_0001  # "llmc" 1
#: The key migrations take, so two hosts starting at once apply each one once.
MIGRATE_LOCK: Final = 0x6C6C_6D63_0002

# A single-quoted literal (kept as it is) or a placeholder, optionally numbered
# (``?3``) and optionally preceded by ``IS`` (SQLite's null-safe equality).
_TOKEN = re.compile(r"'(?:[^']|'')*'|(\bIS\s+)?\?(\d+)?", re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def to_postgres(sql: str) -> str:
    """`sql` with ``?``/``?N`` as ``$n`` and ``IS ?`` as ``IS NOT DISTINCT FROM $n``.

    Bare ``?`` are numbered left to right as SQLite does; ``?N`` keeps its
    number. Text inside single quotes is left alone.
    """
    counter = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal counter
        if m.group(0).startswith("'"):
            return m.group(0)
        if m.group(2) is not None:
            number = int(m.group(2))
            counter = max(counter, number)
        else:
            counter += 1
            number = counter
        prefix = "IS NOT DISTINCT FROM " if m.group(1) else ""
        return f"{prefix}${number}"

    return _TOKEN.sub(sub, sql)


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def rows_changed(status: str) -> int:
    """The row count in a command tag (``DELETE 3``, ``INSERT 0 1``); 0 for others."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresTx(Tx):
    """A `Tx` over one pooled connection inside its transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return rows_changed(await self.conn.execute(to_postgres(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.conn.executemany(to_postgres(sql), rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in await self.conn.fetch(to_postgres(sql), *params)]


class PostgresDatabase(Database):
    """The store on a PostgreSQL server: a connection pool, advisory-locked writes."""

    dialect = "postgresql"

    def __init__(self, url: str, pool: asyncpg.Pool, clock: Callable[[], datetime]) -> None:
        """Use `open_database` (or `connect`); this only stores what it built."""
        self.url = url
        self.where = redact(url)
        self.path = None
        self.clock = clock
        self.pool = pool

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresDatabase:
        """Connect to `url` and bring its schema up to date (refusing a newer one)."""
        where = redact(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, command_timeout=60
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SettingsError(
                f"Couldn't connect to the database {where}: {_reason(exc)}."
            ) from None
        try:
            async with pool.acquire() as conn:
                found = await postgres_schema_version(conn)
                if found > LATEST_VERSION:
                    raise too_new_error(found, where)
                await migrate_postgres(conn, where, MIGRATE_LOCK)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                raise SettingsError(
                    f"Couldn't open the database {where}: {_reason(exc)}."
                ) from None
            raise
        return cls(url, pool, clock)

    async def close(self) -> None:
        await self.pool.close()

    async def read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            rows = await self.pool.fetch(to_postgres(sql), *params)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {_reason(exc)}.") from None
        return [tuple(r) for r in rows]

    async def read_with(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        try:
            async with self.pool.acquire() as conn:
                return await work(PostgresTx(conn))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {_reason(exc)}.") from None

    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                return await work(PostgresTx(conn))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("settings write failed: %s", exc, exc_info=True)
            raise SettingsError(
                f"Couldn't save the setting: {_reason(exc)}; nothing was changed."
            ) from None


def _reason(exc: BaseException) -> str:
    """What went wrong, in words, without the URL (which may carry a password)."""
    refused = asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    if isinstance(exc, refused):
        return "the server refused the user name or password"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "that database does not exist on the server"
    if isinstance(exc, asyncpg.DiskFullError):
        return "the database server's disk is full"
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return "the database is read-only"
    if isinstance(exc, OSError | asyncpg.ConnectionDoesNotExistError):
        return "the database server cannot be reached"
    return "the database reported an error"
