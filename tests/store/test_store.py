"""The settings store against real SQLite files: scopes, validation, migrations, failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.errors import InvalidKnobs, SettingsError
from bot.knobs import KNOB_NAMES, Knobs
from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.scopes import MAX_SYSTEM_PROMPT_CHARS, Location, Scope, ScopeKind
from bot.store.store import SettingsStore
from bot.store.transfer import export_guilds, export_shard, import_rows

# Snowflake-like ids: the shard of a guild is (id >> 22) % shard_count.
G1 = (1000 << 22) | 1  # shard 0 of 2
G2 = (1001 << 22) | 2  # shard 1 of 2
C1, C2, T1 = 111, 222, 333  # channels of G1; T1 is a thread under C1
C3 = 444  # channel of G2
U1, U2 = 9001, 9002
ADMIN = 42
DEFAULTS = Knobs.model_validate({})


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "settings.sqlite3"


@contextmanager
def raw_conn(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain autocommit connection for hand edits, the way an operator would make them."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


# --- scopes and inheritance ---------------------------------------------------


async def test_nothing_set_gives_defaults(store: SettingsStore) -> None:
    eff = await store.resolve(Location(G1, C1))
    assert eff.knobs == DEFAULTS
    assert eff.system_prompt is None
    assert set(eff.sources) == {*KNOB_NAMES, "system_prompt"}
    assert set(eff.sources.values()) == {"default"}


async def test_channel_overrides_server_and_reports_sources(store: SettingsStore) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 1.5, "top_k": 10}, actor_id=ADMIN)
    await store.set_knobs(Scope.channel(C1, G1), {"top_k": 20}, actor_id=ADMIN)
    await store.set_system_prompt(Scope.server(G1), "You are a pirate.", actor_id=ADMIN)

    here = await store.resolve(Location(G1, C1))
    assert (here.knobs.temperature, here.knobs.top_k) == (1.5, 20)
    assert here.system_prompt == "You are a pirate."
    assert here.sources["temperature"] == "server"
    assert here.sources["top_k"] == "channel"
    assert here.sources["system_prompt"] == "server"
    assert here.sources["top_p"] == "default"

    sibling = await store.resolve(Location(G1, C2))
    assert (sibling.knobs.temperature, sibling.knobs.top_k) == (1.5, 10)
    assert sibling.sources["top_k"] == "server"


async def test_thread_inherits_parent_channel_unless_it_sets_its_own(
    store: SettingsStore,
) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 1.5}, actor_id=ADMIN)
    await store.set_knobs(Scope.channel(C1, G1), {"top_k": 20, "top_p": 0.5}, actor_id=ADMIN)
    thread = Location(G1, T1, parent_channel_id=C1)
    assert thread.chain() == [Scope.server(G1), Scope.channel(C1, G1), Scope.channel(T1, G1)]

    eff = await store.resolve(thread)
    assert (eff.knobs.temperature, eff.knobs.top_k, eff.knobs.top_p) == (1.5, 20, 0.5)
    assert eff.sources["top_k"] == "channel"

    await store.set_knobs(thread.own_scope(), {"top_k": 3}, actor_id=ADMIN)
    await store.set_system_prompt(thread.own_scope(), "Thread persona", actor_id=ADMIN)
    eff = await store.resolve(thread)
    assert (eff.knobs.top_k, eff.knobs.top_p) == (3, 0.5)
    assert eff.sources["top_k"] == "thread"
    assert eff.sources["top_p"] == "channel"
    assert eff.system_prompt == "Thread persona"
    # The parent channel itself is not affected by its thread.
    assert (await store.resolve(Location(G1, C1))).knobs.top_k == 20


async def test_dm_scope_is_per_user(store: SettingsStore) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 2.0}, actor_id=ADMIN)
    await store.set_knobs(Scope.dm(U1), {"temperature": 0.3}, actor_id=U1)
    await store.set_system_prompt(Scope.dm(U1), "Be brief.", actor_id=U1)

    mine = await store.resolve(Location(None, 5555, user_id=U1))
    assert mine.knobs.temperature == 0.3
    assert mine.sources["temperature"] == "dm"
    assert mine.system_prompt == "Be brief."
    # Same user, another DM channel id: still their settings.
    assert (await store.resolve(Location(None, 6666, user_id=U1))).knobs.temperature == 0.3

    theirs = await store.resolve(Location(None, 5555, user_id=U2))
    assert theirs.knobs == DEFAULTS
    assert theirs.system_prompt is None
    # Server settings never reach DMs, DM settings never reach servers.
    assert (await store.resolve(Location(G1, C1, user_id=U1))).knobs.temperature == 2.0


async def test_other_servers_and_channels_are_isolated(store: SettingsStore) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 1.9}, actor_id=ADMIN)
    await store.set_knobs(Scope.channel(C1, G1), {"top_k": 7}, actor_id=ADMIN)
    other = await store.resolve(Location(G2, C3))
    assert other.knobs == DEFAULTS
    assert (await store.resolve(Location(G1, C2))).knobs.top_k == -1


async def test_channel_row_of_another_guild_never_applies(
    store: SettingsStore, tmp_path: Path
) -> None:
    """Even a row claiming the right channel id is ignored if its guild does not match."""
    await store.set_knobs(Scope.channel(C3, G2), {"top_k": 9}, actor_id=ADMIN)
    # A location (wrongly) claiming C3 is in G1 must not pick up G2's setting.
    assert (await store.resolve(Location(G1, C3))).knobs.top_k == -1
    assert (await store.resolve(Location(G2, C3))).knobs.top_k == 9


async def test_scope_overrides_lists_only_what_the_scope_sets(store: SettingsStore) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 1.1}, actor_id=ADMIN)
    await store.set_knobs(Scope.channel(C1, G1), {"stop": ["\nUser:"], "top_k": 4}, actor_id=ADMIN)
    await store.set_system_prompt(Scope.channel(C1, G1), "p", actor_id=ADMIN)
    assert await store.scope_overrides(Scope.channel(C1, G1)) == {
        "top_k": 4,
        "stop": ("\nUser:",),
        "system_prompt": "p",
    }
    assert await store.scope_overrides(Scope.server(G1)) == {"temperature": 1.1}
    assert await store.scope_overrides(Scope.dm(U1)) == {}


# --- reset ----------------------------------------------------------------------


async def test_reset_one_knob_then_all(store: SettingsStore) -> None:
    scope = Scope.channel(C1, G1)
    await store.set_knobs(Scope.server(G1), {"top_k": 10}, actor_id=ADMIN)
    await store.set_knobs(scope, {"top_k": 20, "temperature": 0.2, "top_p": 0.3}, actor_id=ADMIN)

    assert await store.reset_knobs(scope, ["top_k"], actor_id=ADMIN) == ["top_k"]
    eff = await store.resolve(Location(G1, C1))
    assert eff.knobs.top_k == 10
    assert eff.sources["top_k"] == "server"
    assert eff.knobs.temperature == 0.2

    # Names not set here are not reported as reset.
    assert await store.reset_knobs(scope, ["top_k", "stop"], actor_id=ADMIN) == []
    await store.set_system_prompt(scope, "keep me", actor_id=ADMIN)
    assert sorted(await store.reset_knobs(scope, None, actor_id=ADMIN)) == ["temperature", "top_p"]
    eff = await store.resolve(Location(G1, C1))
    assert eff.knobs == Knobs.model_validate({"top_k": 10})
    # Resetting every knob leaves the persona alone.
    assert eff.system_prompt == "keep me"


async def test_reset_unknown_knob_is_refused(store: SettingsStore) -> None:
    with pytest.raises(InvalidKnobs, match="temprature"):
        await store.reset_knobs(Scope.server(G1), ["temprature"], actor_id=ADMIN)


async def test_system_prompt_set_and_reset(store: SettingsStore) -> None:
    await store.set_system_prompt(Scope.server(G1), "Server persona", actor_id=ADMIN)
    await store.set_system_prompt(Scope.channel(C1, G1), "Channel persona", actor_id=ADMIN)
    assert (await store.resolve(Location(G1, C1))).system_prompt == "Channel persona"

    assert await store.reset_system_prompt(Scope.channel(C1, G1), actor_id=ADMIN) is True
    eff = await store.resolve(Location(G1, C1))
    assert (eff.system_prompt, eff.sources["system_prompt"]) == ("Server persona", "server")
    assert await store.reset_system_prompt(Scope.channel(C1, G1), actor_id=ADMIN) is False
    assert await store.reset_system_prompt(Scope.server(G1), actor_id=ADMIN) is True
    eff = await store.resolve(Location(G1, C1))
    assert (eff.system_prompt, eff.sources["system_prompt"]) == (None, "default")


async def test_system_prompt_text_is_stored_verbatim(store: SettingsStore) -> None:
    """Quotes, SQL and emoji are data: parameters only, nothing interpreted."""
    text = "Robert'); DROP TABLE settings;-- \"quoted\" 🦙\n\tsecond line"
    await store.set_system_prompt(Scope.server(G1), text, actor_id=ADMIN)
    assert (await store.resolve(Location(G1, C1))).system_prompt == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * (MAX_SYSTEM_PROMPT_CHARS + 1), "limit is 4000"),
        ("hello\x00world", "NUL"),
        ("bad \ud800 surrogate", "not valid Unicode"),
        ("   \n ", "empty"),
    ],
)
async def test_invalid_system_prompt_is_refused(
    store: SettingsStore, text: str, message: str
) -> None:
    with pytest.raises(InvalidKnobs, match=message):
        await store.set_system_prompt(Scope.server(G1), text, actor_id=ADMIN)
    assert await store.scope_overrides(Scope.server(G1)) == {}


async def test_system_prompt_at_the_limit_is_accepted(store: SettingsStore) -> None:
    text = "y" * MAX_SYSTEM_PROMPT_CHARS
    await store.set_system_prompt(Scope.server(G1), text, actor_id=ADMIN)
    assert (await store.resolve(Location(G1, C1))).system_prompt == text


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "knob"),
    [
        ({"temperature": 9.0}, "temperature"),
        ({"top_k": 51}, "top_k"),
        ({"top_p": True}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temprature": 1.0}, "temprature"),
    ],
)
async def test_invalid_values_are_refused_naming_the_knob(
    store: SettingsStore, values: dict[str, Any], knob: str
) -> None:
    with pytest.raises(InvalidKnobs, match=f"`{knob}`"):
        await store.set_knobs(Scope.channel(C1, G1), values, actor_id=ADMIN)


async def test_set_is_all_or_nothing(store: SettingsStore) -> None:
    with pytest.raises(InvalidKnobs, match="top_k"):
        await store.set_knobs(
            Scope.channel(C1, G1), {"temperature": 1.0, "top_k": 99}, actor_id=ADMIN
        )
    assert await store.scope_overrides(Scope.channel(C1, G1)) == {}
    assert await store.history(Scope.channel(C1, G1)) == []


async def test_min_above_inherited_max_is_refused(store: SettingsStore) -> None:
    await store.set_knobs(Scope.server(G1), {"max_new_tokens": 100}, actor_id=ADMIN)
    with pytest.raises(InvalidKnobs, match=r"min_new_tokens \(200\).*max_new_tokens \(100\)"):
        await store.set_knobs(Scope.channel(C1, G1), {"min_new_tokens": 200}, actor_id=ADMIN)
    # Setting both together at the channel is accepted, but the server's max is a
    # ceiling for its channels: both are held to 100 there.
    await store.set_knobs(
        Scope.channel(C1, G1), {"min_new_tokens": 200, "max_new_tokens": 300}, actor_id=ADMIN
    )
    eff = await store.resolve(Location(G1, C1))
    assert (eff.knobs.min_new_tokens, eff.knobs.max_new_tokens) == (100, 100)


async def test_server_max_below_a_channel_min_is_refused(store: SettingsStore) -> None:
    await store.set_knobs(Scope.channel(C1, G1), {"min_new_tokens": 100}, actor_id=ADMIN)
    with pytest.raises(InvalidKnobs, match=str(C1)):
        await store.set_knobs(Scope.server(G1), {"max_new_tokens": 50}, actor_id=ADMIN)
    assert await store.scope_overrides(Scope.server(G1)) == {}


async def test_conflict_left_by_a_reset_drops_the_minimum(
    store: SettingsStore, caplog: pytest.LogCaptureFixture
) -> None:
    """max_new_tokens is the cost cap: when scopes disagree, the minimum gives way."""
    scope = Scope.channel(C1, G1)
    # Above the default max_new_tokens (512).
    await store.set_knobs(scope, {"min_new_tokens": 600, "max_new_tokens": 700}, actor_id=ADMIN)
    assert await store.reset_knobs(scope, ["max_new_tokens"], actor_id=ADMIN) == [
        "max_new_tokens"
    ]
    with caplog.at_level(logging.WARNING, logger="bot.store.store"):
        eff = await store.resolve(Location(G1, C1))
    assert (eff.knobs.min_new_tokens, eff.knobs.max_new_tokens) == (-1, Knobs().max_new_tokens)
    assert eff.sources["min_new_tokens"] == "default"
    assert "min_new_tokens" in caplog.text


# --- rows edited by hand ------------------------------------------------------


@pytest.mark.sqlite_only
async def test_hand_edited_invalid_rows_are_logged_and_ignored(
    store: SettingsStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await store.set_knobs(Scope.server(G1), {"temperature": 1.3, "top_k": 5}, actor_id=ADMIN)
    await store.set_knobs(
        Scope.channel(C1, G1), {"temperature": 0.4, "top_k": 6, "top_p": 0.5}, actor_id=ADMIN
    )
    await store.set_system_prompt(Scope.channel(C1, G1), "ok", actor_id=ADMIN)
    with raw_conn(db_path(tmp_path)) as db:
        db.execute(
            "UPDATE settings SET value = '{not json' WHERE scope_id = ? AND key = 'temperature'",
            (C1,),
        )
        db.execute("UPDATE settings SET value = '99' WHERE scope_id = ? AND key = 'top_k'", (C1,))
        db.execute(
            "UPDATE settings SET value = 'NaN' WHERE scope_id = ? AND key = 'top_p'", (C1,)
        )
        db.execute(
            "UPDATE settings SET value = '12' WHERE scope_id = ? AND key = 'system_prompt'",
            (C1,),
        )
        db.execute(
            "INSERT INTO settings VALUES ('channel', ?, 'temprature', '1.0', ?, 1, '2024-01-01')",
            (C1, G1),
        )

    with caplog.at_level(logging.WARNING, logger="bot.store.store"):
        eff = await store.resolve(Location(G1, C1))
    # The broken channel rows fall through to the server's (valid) values.
    assert (eff.knobs.temperature, eff.knobs.top_k, eff.knobs.top_p) == (1.3, 5, 0.95)
    assert eff.sources["temperature"] == "server"
    assert eff.sources["top_p"] == "default"
    assert eff.system_prompt is None
    warned = {r.getMessage().split("=")[0] for r in caplog.records}
    assert {
        "ignoring invalid stored setting temperature",
        "ignoring invalid stored setting top_k",
        "ignoring invalid stored setting top_p",
        "ignoring invalid stored setting system_prompt",
        "ignoring invalid stored setting temprature",
    } <= warned

    # Logged once per bad row, not on every message.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot.store.store"):
        await store.resolve(Location(G1, C1))
    assert caplog.records == []
    # And overwriting a broken row through the store repairs it.
    await store.set_knobs(Scope.channel(C1, G1), {"temperature": 0.9}, actor_id=ADMIN)
    assert (await store.resolve(Location(G1, C1))).knobs.temperature == 0.9


# --- history ------------------------------------------------------------------


async def test_history_records_actor_values_and_utc_time(tmp_path: Path) -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    ticks = iter(range(100))

    def clock() -> datetime:
        return now + timedelta(minutes=next(ticks))

    store = await SettingsStore.open(db_path(tmp_path), clock=clock)
    try:
        scope = Scope.channel(C1, G1)
        await store.set_knobs(scope, {"temperature": 1.0}, actor_id=1)
        await store.set_knobs(scope, {"temperature": 1.0}, actor_id=2)  # unchanged: no entry
        await store.set_knobs(scope, {"temperature": 1.2}, actor_id=3)
        await store.set_system_prompt(scope, "hi", actor_id=4)
        await store.reset_knobs(scope, None, actor_id=5)

        entries = await store.history(scope)
        summary = [(e.key, e.old_value, e.new_value, e.actor_id) for e in entries]
        assert summary == [
            ("temperature", 1.2, None, 5),
            ("system_prompt", None, "hi", 4),
            ("temperature", 1.0, 1.2, 3),
            ("temperature", None, 1.0, 1),
        ]
        assert all(e.changed_at.utcoffset() == timedelta(0) for e in entries)
        assert entries[-1].changed_at == now
        assert len(await store.history(scope, limit=2)) == 2
        assert await store.history(Scope.server(G1)) == []
    finally:
        await store.close()


# --- migrations -------------------------------------------------------------------


def _user_version(path: Path) -> int:
    with raw_conn(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def test_new_database_is_created_at_latest_version_in_wal(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    store = await SettingsStore.open(path)
    await store.close()
    assert path.exists()
    assert _user_version(path) == LATEST_VERSION
    with raw_conn(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"settings", "settings_history"} <= tables


async def test_migrates_from_version_1_keeping_data(tmp_path: Path) -> None:
    assert len(MIGRATIONS) > 1
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    with raw_conn(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute(
            "INSERT INTO settings VALUES ('server', ?, 'temperature', '1.4', ?, 7, "
            "'2024-05-01T00:00:00.000+00:00')",
            (G1, G1),
        )
        db.execute("PRAGMA user_version = 1")

    store = await SettingsStore.open(path)
    try:
        assert _user_version(path) == LATEST_VERSION
        eff = await store.resolve(Location(G1, C1))
        assert eff.knobs.temperature == 1.4
        await store.set_knobs(Scope.server(G1), {"temperature": 1.5}, actor_id=ADMIN)
        [entry] = await store.history(Scope.server(G1))
        assert (entry.old_value, entry.new_value) == (1.4, 1.5)
    finally:
        await store.close()


async def test_reopening_an_up_to_date_database_keeps_everything(tmp_path: Path) -> None:
    store = await SettingsStore.open(db_path(tmp_path))
    await store.set_knobs(Scope.dm(U1), {"top_p": 0.1}, actor_id=U1)
    await store.close()
    store = await SettingsStore.open(db_path(tmp_path))
    try:
        assert (await store.resolve(Location(None, 1, user_id=U1))).knobs.top_p == 0.1
    finally:
        await store.close()


async def test_newer_schema_is_refused_and_file_left_unchanged(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    store = await SettingsStore.open(path)
    await store.set_knobs(Scope.server(G1), {"top_k": 3}, actor_id=ADMIN)
    await store.close()
    with raw_conn(path) as db:
        db.execute(f"PRAGMA user_version = {LATEST_VERSION + 7}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(SettingsError, match=rf"schema version {LATEST_VERSION + 7}.*not modified"):
        await SettingsStore.open(path)

    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert _user_version(path) == LATEST_VERSION + 7


async def test_a_file_that_is_not_a_database_gives_a_settings_error(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SettingsError, match="Couldn't open the settings database"):
        await SettingsStore.open(path)


# --- concurrency and failures ---------------------------------------------------


async def test_concurrent_writes_from_two_connections_are_both_kept(tmp_path: Path) -> None:
    a = await SettingsStore.open(db_path(tmp_path))
    b = await SettingsStore.open(db_path(tmp_path))
    try:
        scope = Scope.channel(C1, G1)
        for i in range(5):
            await asyncio.gather(
                a.set_knobs(scope, {"temperature": 0.5 + i / 10}, actor_id=1),
                b.set_knobs(scope, {"top_k": 10 + i}, actor_id=2),
                a.set_system_prompt(scope, f"round {i}", actor_id=1),
            )
        for s in (a, b):
            eff = await s.resolve(Location(G1, C1))
            assert (eff.knobs.temperature, eff.knobs.top_k) == (0.9, 14)
            assert eff.system_prompt == "round 4"
        assert len(await a.history(scope, limit=100)) == 15
    finally:
        await a.close()
        await b.close()


async def test_locked_database_gives_settings_error_and_store_recovers(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    store = await SettingsStore.open(path, busy_timeout_ms=50)
    try:
        await store.set_knobs(Scope.server(G1), {"top_k": 1}, actor_id=ADMIN)
        with raw_conn(path) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(SettingsError, match="busy; nothing was changed"):
                await store.set_knobs(Scope.server(G1), {"top_k": 2}, actor_id=ADMIN)
            with pytest.raises(SettingsError, match="busy"):
                await store.reset_knobs(Scope.server(G1), None, actor_id=ADMIN)
            # Lookups keep working while another connection holds the write lock.
            assert (await store.resolve(Location(G1, C1))).knobs.top_k == 1
            other.execute("ROLLBACK")
        await store.set_knobs(Scope.server(G1), {"top_k": 3}, actor_id=ADMIN)
        assert (await store.resolve(Location(G1, C1))).knobs.top_k == 3
    finally:
        await store.close()


async def test_disk_full_gives_settings_error_and_store_recovers(tmp_path: Path) -> None:
    store = await SettingsStore.open(db_path(tmp_path))
    try:
        await store.set_knobs(Scope.server(G1), {"top_k": 1}, actor_id=ADMIN)
        # Cap the file at its current size: the next page it needs is "disk full".
        # (The writer connection is private; the cap is per connection.)
        writer = store.db._writer
        pages = (await writer.execute_fetchall("PRAGMA page_count"))
        await writer.execute(f"PRAGMA max_page_count = {next(iter(pages))[0]}")
        big = "z" * MAX_SYSTEM_PROMPT_CHARS
        with pytest.raises(SettingsError, match="disk is full; nothing was changed"):
            for cid in range(50):
                await store.set_system_prompt(Scope.channel(cid, G1), big, actor_id=ADMIN)
        await writer.execute("PRAGMA max_page_count = 1073741823")
        await store.set_system_prompt(Scope.channel(C1, G1), big, actor_id=ADMIN)
        assert (await store.resolve(Location(G1, C1))).system_prompt == big
    finally:
        await store.close()


# --- export / import ------------------------------------------------------------


async def test_export_import_round_trip_by_shard(tmp_path: Path) -> None:
    assert (G1 >> 22) % 2 == 0 and (G2 >> 22) % 2 == 1
    old = await SettingsStore.open(tmp_path / "old.sqlite3")
    new = await SettingsStore.open(tmp_path / "new.sqlite3")
    try:
        await old.set_knobs(Scope.server(G1), {"temperature": 1.7}, actor_id=ADMIN)
        await old.set_knobs(Scope.channel(C1, G1), {"stop": ["\n###"], "top_k": 8}, actor_id=ADMIN)
        await old.set_system_prompt(Scope.channel(T1, G1), "thread", actor_id=ADMIN)
        await old.set_knobs(Scope.server(G2), {"temperature": 0.2}, actor_id=ADMIN)
        await old.set_knobs(Scope.dm(U1), {"top_p": 0.2}, actor_id=U1)

        dump = await export_shard(old, 0, 2)
        assert {row["guild_id"] for row in dump["settings"]} == {G1}
        assert await import_rows(new, dump) == 4

        for loc in (Location(G1, C1), Location(G1, T1, parent_channel_id=C1)):
            assert await new.resolve(loc) == await old.resolve(loc)
        assert (await new.resolve(Location(G2, C3))).knobs == DEFAULTS
        assert (await new.resolve(Location(None, 1, user_id=U1))).knobs == DEFAULTS
        moved = await new.history(Scope.channel(C1, G1))
        assert [(e.key, e.new_value, e.actor_id) for e in moved] == [
            ("top_k", 8, ADMIN),
            ("stop", ["\n###"], ADMIN),
        ]

        # Importing again replaces rather than duplicates (history included).
        assert await import_rows(new, dump) == 4
        assert len(await new.history(Scope.channel(C1, G1))) == 2

        # The other shard and an explicit guild list / predicate select the same way.
        assert {r["guild_id"] for r in (await export_shard(old, 1, 2))["settings"]} == {G2}
        assert (await export_guilds(old, [G2]))["settings"] == (
            await export_guilds(old, lambda g: g == G2)
        )["settings"]
    finally:
        await old.close()
        await new.close()


async def test_invalid_dump_changes_nothing(store: SettingsStore) -> None:
    good = {
        "scope_kind": "server", "scope_id": G1, "guild_id": G1, "key": "top_k",
        "value": 4, "updated_by": 1, "updated_at": "2024-01-01T00:00:00+00:00",
    }
    bad = {**good, "scope_kind": "channel", "scope_id": C1, "value": 500}
    dump = {"format": "llamacord-settings", "format_version": 1, "settings": [good, bad]}
    with pytest.raises(SettingsError, match=r"row 1.*top_k"):
        await import_rows(store, dump)
    assert await store.scope_overrides(Scope.server(G1)) == {}
    with pytest.raises(SettingsError, match="not a llamacord-settings dump"):
        await import_rows(store, {"settings": [good]})


# --- scope and location checks --------------------------------------------------


def test_scope_and_location_reject_impossible_shapes() -> None:
    assert Scope(ScopeKind.SERVER, G1) == Scope.server(G1)
    with pytest.raises(ValueError, match="guild_id"):
        Scope(ScopeKind.CHANNEL, C1)
    with pytest.raises(ValueError, match="DM"):
        Scope(ScopeKind.DM, U1, G1)
    with pytest.raises(ValueError):
        Scope(ScopeKind.SERVER, -1)
    with pytest.raises(ValueError, match="user_id"):
        Location(None, 5)
    with pytest.raises(ValueError, match="threads"):
        Location(None, 5, parent_channel_id=6, user_id=U1)
    assert Location(None, 5, user_id=U1).chain() == [Scope.dm(U1)]
    assert Location(G1, C1).chain() == [Scope.server(G1), Scope.channel(C1, G1)]


# --- a random walk against a model of the rules --------------------------------


async def test_random_operations_match_a_simple_model(store: SettingsStore) -> None:
    """Sets and resets at random scopes resolve exactly as the written rules say."""
    rng = random.Random(1234)
    scopes = [
        Scope.server(G1), Scope.channel(C1, G1), Scope.channel(T1, G1), Scope.channel(C2, G1),
        Scope.server(G2), Scope.channel(C3, G2), Scope.dm(U1), Scope.dm(U2),
    ]
    choices: dict[str, list[Any]] = {
        "temperature": [0.1, 0.7, 1.3, 5.0],
        "top_p": [0.0, 0.5, 1.0],
        "top_k": [-1, 0, 5, 50],
        "repetition_penalty": [0.0, 0.5, 2.0],
        "stop": [(), ("a",), ("\n", "User:")],
    }
    model: dict[Scope, dict[str, Any]] = {s: {} for s in scopes}
    for _ in range(150):
        scope = rng.choice(scopes)
        op = rng.random()
        if op < 0.6:
            values = {k: rng.choice(v) for k, v in rng.sample(sorted(choices.items()), 2)}
            await store.set_knobs(scope, values, actor_id=ADMIN)
            model[scope].update(values)
        elif op < 0.75:
            text = f"persona {rng.random()}"
            await store.set_system_prompt(scope, text, actor_id=ADMIN)
            model[scope]["system_prompt"] = text
        else:
            names = rng.sample(sorted(choices), 2)
            reset = await store.reset_knobs(scope, names, actor_id=ADMIN)
            assert sorted(reset) == sorted(n for n in names if n in model[scope])
            for n in names:
                model[scope].pop(n, None)

    locations = [
        Location(G1, C1), Location(G1, C2), Location(G1, T1, parent_channel_id=C1),
        Location(G1, 777), Location(G2, C3), Location(None, 1, user_id=U1),
        Location(None, 1, user_id=U2), Location(None, 1, user_id=12345),
    ]
    for loc in locations:
        expected: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for label, scope in loc.labelled_chain():
            for key, value in model.get(scope, {}).items():
                expected[key] = value
                sources[key] = label
        eff = await store.resolve(loc)
        assert eff.system_prompt == expected.pop("system_prompt", None)
        assert eff.knobs == Knobs.model_validate(expected)
        for key in eff.sources:
            assert eff.sources[key] == sources.get(key, "default")


async def test_a_write_cancelled_at_its_commit_logs_no_failed_rollback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task cancelled while its COMMIT runs (the pruner at shutdown) is not an error.

    The COMMIT goes on on aiosqlite's thread; the ROLLBACK that follows finds no
    transaction. That used to log "settings rollback failed" with a traceback, which
    a process refused its token printed on the way out.
    """
    store = await SettingsStore.open(tmp_path / "bot.sqlite3")
    db = store.db
    loop = asyncio.get_running_loop()
    try:
        for i in range(40):
            current: list[asyncio.Task[None]] = []

            async def work(
                conn: Any, i: int = i, current: list[asyncio.Task[None]] = current
            ) -> None:
                await conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                await conn.execute("INSERT INTO t VALUES (?)", (i,))
                loop.call_soon(current[0].cancel)  # lands on the COMMIT's await

            current.append(asyncio.ensure_future(db.write(work)))
            with caplog.at_level(logging.WARNING, logger="bot.store.db"), \
                    contextlib.suppress(asyncio.CancelledError):
                await current[0]
        assert "rollback failed" not in caplog.text
    finally:
        await store.close()
