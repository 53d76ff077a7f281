"""Privacy as promised: text is kept no longer than the README says.

A private ask in a server is kept 15 minutes in every table that holds its text
(its prompt in `asks`, its question and answer in `turns`, the message ids that
lead to them in `turn_messages`); DM conversations and public ones follow their
retention in days; `python -m bot forget` erases a user or a server. A real
SQLite file with an injected clock throughout; after a prune and a checkpoint the
secret is not even in the file's bytes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.cli import main
from bot.store.ask_log import AskLog, AskRecord
from bot.store.connect import open_database
from bot.store.db import Database
from bot.store.retention import forget, prune_expired
from bot.store.scopes import Scope
from bot.store.store import SettingsStore
from bot.store.turns import NewExchange, TurnStore

G, C, ADA, BOB = 100, 200, 300, 400
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def exchange(ask_id: int, question: str, *, private: bool, guild: int | None, author: int,
             message: int) -> NewExchange:
    return NewExchange(
        parent_id=None, question=question, answer=f"answer to {question}", author_id=author,
        author_name="", ask_id=ask_id, guild_id=guild, channel_id=C, private=private,
        question_message_ids=(message,), answer_message_ids=(message + 1,),
    )


async def texts(db: Database) -> dict[str, list[str]]:
    """Every stored text per table, read straight from SQLite."""
    return {
        "asks": [r[0] for r in await db.read("SELECT payload FROM asks ORDER BY id", ())],
        "turns": [r[0] for r in await db.read("SELECT text FROM turns ORDER BY id", ())],
        "turn_messages": [str(r[0]) for r in await db.read(
            "SELECT message_id FROM turn_messages ORDER BY message_id", ())],
    }


async def test_private_text_is_kept_no_longer_than_promised_in_any_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    clock = Clock()
    async with await open_database(path, clock=clock) as db:
        asks = AskLog(db, retention_days=7)
        turns = TurnStore(db)
        record = AskRecord(prompt="my secret plan", knobs={}, system_prompt=None,
                           guild_id=G, channel_id=C, user_id=ADA, private=True)
        await asks.save(1, record)
        _, secret = await turns.add_exchange(
            exchange(1, "my secret plan", private=True, guild=G, author=ADA, message=10))
        await asks.save(2, AskRecord(prompt="public question", knobs={}, system_prompt=None,
                                     guild_id=G, channel_id=C, user_id=BOB))
        await turns.add_exchange(
            exchange(2, "public question", private=False, guild=G, author=BOB, message=20))
        _, dm = await turns.add_exchange(
            exchange(3, "dm chat", private=True, guild=None, author=ADA, message=30))

        clock.now = START + timedelta(minutes=14)
        assert await turns.get(secret.id) is not None  # still within its 15 minutes
        assert await asks.load(1) is not None

        # Past 15 minutes: no read returns the private ask, before any prune...
        clock.now = START + timedelta(minutes=16)
        assert await asks.load(1) is None
        assert await turns.get(secret.id) is None
        assert await turns.answer_for_ask(1) is None and await turns.question_for_ask(1) is None
        assert await turns.by_message(10) is None and await turns.by_message(11) is None
        assert await turns.chain(secret.id) == []
        # ...and the prune deletes it from every table; public and DM text stay.
        assert await prune_expired(db, ask_retention_days=7, conversation_retention_days=30) == 3
        assert await texts(db) == {
            "asks": [(await db.read("SELECT payload FROM asks WHERE id = 2", ()))[0][0]],
            "turns": ["public question", "answer to public question", "dm chat",
                      "answer to dm chat"],
            "turn_messages": ["20", "21", "30", "31"],
        }
        assert (await turns.chain(dm.id))[0].text == "dm chat"

        # Public prompts for Regenerate go after 7 days, conversations after 30.
        clock.now = START + timedelta(days=8)
        await prune_expired(db, ask_retention_days=7, conversation_retention_days=30)
        assert (await texts(db))["asks"] == [] and len((await texts(db))["turns"]) == 4
        clock.now = START + timedelta(days=31)
        await prune_expired(db, ask_retention_days=7, conversation_retention_days=30)
        assert await texts(db) == {"asks": [], "turns": [], "turn_messages": []}
    # Closed (the last connection checkpoints the WAL into the file). secure_delete: the
    # deleted rows were overwritten, not left in free pages.
    stored = file_bytes(tmp_path, path.name)
    assert b"secret plan" not in stored and b"public question" not in stored


def file_bytes(folder: Path, prefix: str) -> bytes:
    """The database file and any WAL/shm beside it, as bytes."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(prefix))


async def test_a_private_ask_is_also_pruned_by_the_next_write(tmp_path: Path) -> None:
    """An expired private turn goes with the next exchange stored, prune loop or not."""
    clock = Clock()
    async with await open_database(tmp_path / "bot.sqlite3", clock=clock) as db:
        turns = TurnStore(db)
        await turns.add_exchange(exchange(1, "psst", private=True, guild=G, author=ADA, message=1))
        clock.now = START + timedelta(minutes=16)
        await turns.add_exchange(exchange(2, "hello", private=False, guild=G, author=BOB,
                                          message=5))
        assert (await texts(db))["turns"] == ["hello", "answer to hello"]


async def seed(path: Path) -> None:
    async with await SettingsStore.open(path) as store:
        db = store.db
        asks, turns = AskLog(db), TurnStore(db)
        for ask_id, (guild, user) in enumerate([(G, ADA), (G, BOB), (G + 1, ADA), (None, ADA)]):
            await asks.save(ask_id + 1, AskRecord(
                prompt=f"ask {ask_id}", knobs={}, system_prompt=None, guild_id=guild,
                channel_id=C, user_id=user))
            await turns.add_exchange(exchange(ask_id + 1, f"q{ask_id}", private=guild is None,
                                              guild=guild, author=user, message=10 * ask_id))
        await store.set_system_prompt(Scope.dm(ADA), "Ada's own persona", actor_id=ADA)
        await store.set_system_prompt(Scope.server(G), "A pirate", actor_id=ADA)
        await store.set_knobs(Scope.channel(C, G), {"temperature": 0.2}, actor_id=BOB)
        await store.set_system_prompt(Scope.server(G + 1), "A nun", actor_id=BOB)


async def cli(*argv: str) -> int:
    """`python -m bot …` in this process (it runs its own event loop, so on a thread)."""
    return await asyncio.to_thread(main, list(argv))


async def test_forget_erases_a_user_then_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bot.sqlite3"
    await seed(path)
    env = str(tmp_path / "none.env")
    assert await cli("--env-file", env, "forget", "--user", str(ADA), "--database", str(path)) == 0
    said = capsys.readouterr().out
    assert f"user {ADA}: deleted 3 asks, 6 conversation turns, 1 settings and 1 audit" in said
    async with await open_database(path) as db:
        assert await db.read("SELECT 1 FROM asks WHERE user_id = ?", (ADA,)) == []
        assert await db.read("SELECT 1 FROM turns WHERE author_id = ?", (ADA,)) == []
        assert [r[0] for r in await db.read("SELECT text FROM turns", ())] == ["q1", "answer to q1"]
        assert await db.read("SELECT 1 FROM settings WHERE scope_kind = 'dm'", ()) == []
        assert await db.read("SELECT 1 FROM settings_history WHERE scope_kind = 'dm'", ()) == []
        # What Ada set as a server's admin is that server's, and stays.
        assert len(await db.read("SELECT 1 FROM settings WHERE guild_id = ?", (G,))) == 2
        assert [r[0] for r in await db.read("SELECT turn_id FROM turn_messages", ())] != []

    assert await cli("--env-file", env, "forget", "--server", str(G), "--database", str(path)) == 0
    said = capsys.readouterr().out
    assert f"server {G}: deleted 1 asks, 2 conversation turns, 2 settings" in said
    async with await open_database(path) as db:
        for table in ("asks", "turns", "settings", "settings_history"):
            assert await db.read(f"SELECT 1 FROM {table} WHERE guild_id = ?", (G,)) == [], table
        assert await db.read("SELECT COUNT(*) FROM turn_messages", ()) == [(0,)]
        # The other server keeps its own.
        assert len(await db.read("SELECT 1 FROM settings WHERE guild_id = ?", (G + 1,))) == 1

    # A mistyped path is an error, not an empty database created on the spot.
    missing = tmp_path / "typo.sqlite3"
    assert await cli("--env-file", env, "forget", "--user", "1", "--database", str(missing)) == 1
    assert "no database at" in capsys.readouterr().err and not missing.exists()
    # Exactly one of the two, and ids must be ids.
    with pytest.raises(SystemExit):
        await cli("--env-file", env, "forget", "--database", str(path))
    with pytest.raises(ValueError, match="exactly one"):
        async with await open_database(path) as db:
            await forget(db, user_id=1, guild_id=2)


async def test_forget_erases_a_prompt_someone_else_asked_again(tmp_path: Path) -> None:
    """A Regenerate by Bob of Ada's ask logs her prompt under his id, naming her as
    its author: forgetting Ada takes it even when its answer was never stored."""
    async with await open_database(tmp_path / "bot.sqlite3") as db:
        log = AskLog(db)
        mine = AskRecord(prompt="Bob's own", knobs={}, system_prompt=None, guild_id=G,
                         channel_id=C, user_id=BOB)
        again = AskRecord(prompt="Ada's words", knobs={}, system_prompt=None, guild_id=G,
                          channel_id=C, user_id=BOB, prompt_author_id=ADA)
        await log.save(1, mine)
        await log.save(2, again)
        assert await log.load(2) == again
        assert (await forget(db, user_id=ADA)).asks == 1
        assert await log.load(2) is None and await log.load(1) == mine
