"""What one ask costs the database, counted by SQLite itself.

Every statement either connection runs reaches its trace callback; a round
trip is one statement on the read connection, or one transaction (BEGIN …
COMMIT) on the write connection. An ask resolves its settings once, encodes
once, and stores the ask, the exchange and why it stopped in one transaction:
nothing is read back that is already in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bot.store.db import Database
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FakeUser


@dataclass
class Trace:
    """The statements each connection ran, in order, as (connection, sql)."""

    statements: list[tuple[str, str]] = field(default_factory=list)

    def round_trips(self) -> int:
        trips = 0
        in_transaction = False
        for conn, sql in self.statements:
            word = sql.split(None, 1)[0].upper() if sql.strip() else ""
            if conn == "reader":
                trips += 1
            elif word == "BEGIN":
                in_transaction = True
                trips += 1
            elif word in ("COMMIT", "ROLLBACK", "END"):
                in_transaction = False
            elif not in_transaction:
                trips += 1
        return trips

    def clear(self) -> None:
        self.statements.clear()


@contextlib.asynccontextmanager
async def traced(db: Database) -> AsyncIterator[Trace]:
    trace = Trace()
    connections = {"writer": db._writer, "reader": db._reader}
    for name, conn in connections.items():
        await conn.set_trace_callback(
            lambda sql, name=name: trace.statements.append((name, sql)))
    try:
        yield trace
    finally:
        for conn in connections.values():
            await conn.set_trace_callback(None)


async def settled(h: Harness) -> None:
    """The reply is finished and every ask has left the runner (its records written)."""
    await h.fake.wait_for(lambda: not h.bot.runner.active or None, timeout=30)


def report(label: str, trace: Trace) -> str:
    lines = [f"{label}: {trace.round_trips()} round trips, {len(trace.statements)} statements"]
    lines += [f"  {conn}: {sql.split(chr(10))[0][:110]}" for conn, sql in trace.statements]
    return "\n".join(lines)


async def test_an_ask_makes_at_most_three_round_trips(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="An answer.") as h:
        await h.ask("warm up")  # first-use work (caches, statements) is not an ask's cost
        await settled(h)
        async with traced(h.app.store.db) as trace:
            itx = await h.ask("What is a llama?")
            await settled(h)
        assert itx.original is not None and "An answer." in itx.original.content
        print(report("/ask in a channel", trace))
        assert trace.round_trips() <= 3, report("/ask in a channel", trace)
        # Every statement was a read of the settings or part of the one write.
        reads = [sql for conn, sql in trace.statements if conn == "reader"]
        assert len(reads) == 1 and "FROM settings" in reads[0], reads
        # What it stored is complete: the ask for Regenerate, the exchange, why it stopped.
        rows = await h.app.store.db.read(
            "SELECT role, text, finish, tokens FROM turns WHERE ask_id = ? ORDER BY id",
            (itx.id,))
        assert [(r[0], r[1]) for r in rows] == [("user", "What is a llama?"),
                                                ("assistant", "An answer.")]
        assert rows[1][2] == "stop" and rows[1][3] > 0
        assert await h.app.chat.asked(itx.id) is not None


async def test_a_dm_follow_up_reads_its_conversation_in_one_query(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    user = FakeUser(4242, "dmer", "Dee")
    dm_channel = user.id + 7

    async def answers(n: int) -> None:
        await h.fake.wait_for(lambda: len([
            m for m in h.fake.channel_messages(dm_channel)
            if m.author.get("bot") and is_final(m.content)]) >= n or None, timeout=30)
        await settled(h)

    async with running_bot(smol_model_dir, tmp_path, scripted="An answer.") as h:
        await h.fake.inject_message("hello there", dm=True, user=user)
        await answers(1)
        async with traced(h.app.store.db) as trace:
            await h.fake.inject_message("tell me more", dm=True, user=user)
            await answers(2)
        print(report("a DM continuing its conversation", trace))
        # The conversation (head and chain at once), the settings, the one write.
        assert trace.round_trips() <= 3, report("a DM continuing its conversation", trace)
        head = await h.app.chat.head(f"dm:{user.id}")
        chain = await h.app.turns.chain(head)
        assert [t.text for t in chain] == ["hello there", "An answer.", "tell me more",
                                           "An answer."]
