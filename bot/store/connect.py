"""Opening the store: a ``postgresql://`` URL or a SQLite file (the one module that knows both)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bot.store.db import Database, SqliteDatabase, is_postgres_url, utcnow


async def open_database(
    target: Path | str,
    *,
    busy_timeout_ms: int = 5000,
    clock: Callable[[], datetime] = utcnow,
) -> Database:
    """Open (creating and migrating if needed) a SQLite file or a PostgreSQL URL."""
    if is_postgres_url(target):
        from bot.store.postgres import PostgresDatabase

        return await PostgresDatabase.connect(str(target), clock=clock)
    return await SqliteDatabase.open_file(
        Path(target), busy_timeout_ms=busy_timeout_ms, clock=clock
    )
