"""The settings database: one SQLite file, two connections, explicit transactions.

Why two connections: writes go through a writer connection under an
`asyncio.Lock` inside ``BEGIN IMMEDIATE`` (so a check reads the same state it
writes over, even against another process); lookups use a read-only second
connection, which in WAL mode sees only committed data and is never blocked by
a writer. SQLite errors never escape raw: they become `SettingsError` with a
sentence a person can act on, after the transaction is rolled back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.errors import SettingsError
from bot.store.migrations import LATEST_VERSION, migrate, schema_version, too_new_error

log = logging.getLogger(__name__)

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """The connections and the write lock; the store, ask log and transfer share one."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Callable[[], datetime],
    ) -> None:
        """Use `open`; this only stores what `open` built."""
        self.path = path
        self.clock = clock
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()


    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], datetime] = utcnow,
    ) -> Database:
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

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def now_iso(self) -> str:
        """The clock's time as stored in rows: UTC, milliseconds."""
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    async def read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {exc}.") from None
        return [tuple(r) for r in rows]

    async def read_with(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `work` (reads only) on the read-only connection."""
        try:
            return await work(self._reader)
        except sqlite3.Error as exc:
            log.warning("settings read failed: %s", exc, exc_info=True)
            raise SettingsError(f"Couldn't read the settings: {exc}.") from None

    async def write(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
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
