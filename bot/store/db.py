"""The store's database: one interface, two backends (SQLite embedded, PostgreSQL shared).

`Database.read` for lookups over committed data, `write` for one transaction no
other writer interleaves, even in another process; the work gets a `Tx`. SQL uses
``?`` placeholders and portable syntax; `bot.store.postgres` translates the rest.
Errors become `SettingsError` with a sentence a person can act on, after rollback.
SQLite: a writer connection under an `asyncio.Lock` in ``BEGIN IMMEDIATE``, and a
read-only reader that in WAL mode is never blocked by it.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.config import POSTGRES_SCHEMES
from bot.errors import SettingsError
from bot.store.migrations import LATEST_VERSION, migrate, schema_version, too_new_error

log = logging.getLogger(__name__)

T = TypeVar("T")

#: One stored row, as both backends return it.
Row = tuple[Any, ...]

def utcnow() -> datetime:
    return datetime.now(UTC)


def is_postgres_url(target: object) -> bool:
    """True when `target` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class Tx(abc.ABC):
    """One write transaction, as the work passed to `Database.write` sees it."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed (0 where that means nothing)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row a query returns."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row a query returns, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database(abc.ABC):
    """The store's connections and transactions; the store, ask log and transfer share one.

    `dialect` is ``"sqlite"`` or ``"postgresql"``; `where` names the database in
    messages (a file path, or a URL without its password); `path` is the SQLite
    file, None on PostgreSQL.
    """

    dialect: str
    where: str
    path: Path | None
    clock: Callable[[], datetime]

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def now_iso(self) -> str:
        """The clock's time as stored in rows: UTC, milliseconds."""
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    @abc.abstractmethod
    async def read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """Rows of one query over committed data."""

    @abc.abstractmethod
    async def read_with(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work`, several reads over committed data, without a write lock."""

    @abc.abstractmethod
    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one transaction that no other writer interleaves; roll back on failure."""


class SqliteTx(Tx):
    """A `Tx` over the SQLite writer connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.conn.execute(sql, params) as cur:
            return max(0, int(cur.rowcount or 0))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in await self.conn.execute_fetchall(sql, params)]


class SqliteDatabase(Database):
    """The embedded backend: one SQLite file, a writer and a read-only reader connection."""

    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Callable[[], datetime],
    ) -> None:
        """Use `open_database`; this only stores what it built."""
        self.path = path
        self.where = str(path)
        self.clock = clock
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open_file(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], datetime] = utcnow,
    ) -> SqliteDatabase:
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
            _create_private(path)
        except OSError as exc:
            raise SettingsError(
                f"Couldn't create the settings database {where}: {exc.strerror}."
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

    async def read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {exc}.") from None
        return [tuple(r) for r in rows]

    async def read_with(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` (reads only) on the read-only connection."""
        try:
            return await work(SqliteTx(self._reader))
        except sqlite3.Error as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {exc}.") from None

    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `work` in one ``BEGIN IMMEDIATE`` transaction; roll back on any failure."""
        async with self._write_lock:
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                result = await work(SqliteTx(conn))
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
        """Roll back what `write` began, if anything of it is still open.

        A task cancelled while awaiting its COMMIT (the pruner at shutdown, say) leaves
        the COMMIT running on aiosqlite's thread: by the time our ROLLBACK runs there
        may be no transaction left, which is the state we want, not a failure.
        """
        try:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):
                log.warning("settings rollback failed", exc_info=True)
        except sqlite3.Error:
            log.warning("settings rollback failed", exc_info=True)


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


def _create_private(path: Path) -> None:
    """Create the database file 0600 (owner only) if it does not exist yet.

    It holds every persona and recent prompts. SQLite creates the ``-wal`` and
    ``-shm`` files with the database file's permissions, so creating this one
    first, rather than letting SQLite create it under the umask (0644 under the
    usual 022), makes all three private. An existing file is left as it is:
    its owner chose its mode.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    """An autocommit connection: transactions are always explicit in this module."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA foreign_keys = ON")
        # Deleted rows (expired or erased prompts) are overwritten, not left in free pages.
        await conn.execute("PRAGMA secure_delete = ON")
    except BaseException:
        await conn.close()
        raise
    return conn
