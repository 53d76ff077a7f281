"""The store tests run against both backends: a SQLite file and a PostgreSQL database.

Every test here that asks for `store`, `db` or `personas` (or `database_target`)
runs twice, ``[sqlite]`` and ``[postgresql]``; ``@pytest.mark.sqlite_only``
keeps a test that edits the file by hand to SQLite. The PostgreSQL server is
`testing.postgres`'s: one per test process, a fresh database per test; where
none can be had the ``[postgresql]`` runs are skipped saying why (failed on CI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.connect import open_database
from bot.store.db import Database
from bot.store.personas import PersonaStore
from bot.store.store import SettingsStore
from testing.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("backend", ("sqlite",) if only else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which store backend this run of the test uses."""
    return str(request.param)


@pytest.fixture
def database_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """What `open_database` takes: a new SQLite file's path, or a new PostgreSQL database's URL.

    The SQLite path is ``tmp_path/nested/settings.sqlite3`` (tests that read the
    file itself find it there).
    """
    if backend == "sqlite":
        return tmp_path / "nested" / "settings.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(database_target: Path | str) -> AsyncIterator[SettingsStore]:
    s = await SettingsStore.open(database_target)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def db(database_target: Path | str) -> AsyncIterator[Database]:
    database = await open_database(database_target)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def personas(db: Database) -> PersonaStore:
    return PersonaStore(db)
