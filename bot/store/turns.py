"""Conversation turns in SQLite: what was said, by whom, where, and what it follows.

A conversation is a tree of turns: each turn names the turn it follows
(`parent_id`), so a reply chain is the path from a turn up to the root, and
pressing Reply on an earlier answer starts a branch (a second child) without
touching the first. Turns outlive a restart, which is what lets a Reply button
or a reply to an old answer continue where it left off.

Privacy lives here, not in the front-ends: a private turn is returned only to
its author (`visible_to`), and a chain that holds a private turn can only be
continued privately by that author. Retention is a number of days; `prune`
deletes older turns, and the foreign keys cut any chain at the deleted turn.
A private ask's turns in a server (`/ask private:true` and its follow-ups) are
kept no longer than its prompt in the asks table, `PRIVATE_TTL_S` (the life of
the ephemeral reply they belong to): never read past it, and deleted by every
write and every `prune`. DM turns are private to their user too, but they are
the user's own conversation and follow the retention in days.

Text is stored exactly as typed; it is always rendered as plain text for the
tokenizer by the engine, never interpreted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Final

from bot.store.ask_log import PRIVATE_TTL_S
from bot.store.db import Database, Tx

#: Longest chain walked up from a turn. Far more than any context window holds;
#: a bound so a corrupted parent loop can never spin.
MAX_CHAIN = 500

#: Turns of a private ask in a server whose time is up (one parameter: the cutoff).
_EXPIRED: Final = "private = 1 AND guild_id IS NOT NULL AND created_at < ?"
_EXPIRED_T: Final = "t.private = 1 AND t.guild_id IS NOT NULL AND t.created_at < ?"

_COLUMNS = (
    "id, conversation_id, parent_id, role, text, author_id, author_name, ask_id, "
    "guild_id, channel_id, private, created_at, model"
)


@dataclass(frozen=True)
class StoredTurn:
    """One turn as stored. `ask_id` is the interaction or message that asked for it.

    For a question `author_id`/`author_name` are the speaker; for an answer
    `author_id` is the person it answered (its owner when private) and the name
    is empty.
    """

    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    text: str
    author_id: int
    author_name: str
    ask_id: int | None
    guild_id: int | None
    channel_id: int | None
    private: bool
    created_at: str
    model: str | None = None
    """The model that answered (or was in force for a question); None before it was kept."""

    @classmethod
    def from_row(cls, row: Sequence[object]) -> StoredTurn:
        (id_, conv, parent, role, text, author, name, ask, guild, channel, private,
         created, model) = row
        return cls(
            id=int(id_),  # type: ignore[call-overload]
            conversation_id=int(conv),  # type: ignore[call-overload]
            parent_id=None if parent is None else int(parent),  # type: ignore[call-overload]
            role=str(role),
            text=str(text),
            author_id=int(author),  # type: ignore[call-overload]
            author_name=str(name),
            ask_id=None if ask is None else int(ask),  # type: ignore[call-overload]
            guild_id=None if guild is None else int(guild),  # type: ignore[call-overload]
            channel_id=None if channel is None else int(channel),  # type: ignore[call-overload]
            private=bool(private),
            created_at=str(created),
            model=None if model is None else str(model),
        )

    def visible_to(self, user_id: int) -> bool:
        """Public turns are everyone's; a private one only its author's."""
        return not self.private or self.author_id == user_id

    @property
    def opening(self) -> bool:
        """The empty question a character's greeting answers (`is_opening`)."""
        return is_opening(self)


def is_opening(turn: StoredTurn) -> bool:
    """Whether `turn` is the empty question before a greeting: nobody asked it.

    A conversation a character card's greeting starts has this user turn as its
    root and the greeting (with each alternate greeting as another version) as its
    answer, so the greeting is the conversation's first assistant turn and its
    versions are what ◀ ▶ browses. Every question people ask has text (an empty
    prompt is refused), so the empty text is what marks it. Its `author_id` is
    0 in a server (no member wrote it, so no member's erasure removes it) and
    the member in a DM, whose conversation it is.
    """
    return turn.role == "user" and turn.text == ""


@dataclass(frozen=True)
class NewExchange:
    """A finished exchange to store: the question, the answer, and where they sit."""

    parent_id: int | None
    question: str
    answer: str
    author_id: int
    author_name: str
    ask_id: int | None
    guild_id: int | None
    channel_id: int | None
    private: bool
    question_message_ids: tuple[int, ...] = ()
    answer_message_ids: tuple[int, ...] = ()
    head: str | None = None  # the place whose current turn becomes this answer
    model: str | None = None  # the model that answered (a follow-up keeps it)


class TurnStore:
    """Reads and writes turns through the shared settings `Database`."""

    def __init__(self, db: Database, *, private_ttl_s: float = PRIVATE_TTL_S) -> None:
        self.db = db
        self.private_ttl_s = private_ttl_s

    def private_cutoff(self) -> str:
        """The stored-time text before which a server's private turns are expired."""
        then = self.db.clock().astimezone(UTC) - timedelta(seconds=self.private_ttl_s)
        return then.isoformat(timespec="milliseconds")

    async def _one(self, sql: str, params: tuple[int | str, ...]) -> StoredTurn | None:
        """The first turn `sql` (a constant of this module) selects, if any.

        `sql` ends with the expiry test's placeholder; the cutoff is appended here.
        """
        rows = await self.db.read(sql, (*params, self.private_cutoff()))
        return StoredTurn.from_row(rows[0]) if rows else None

    async def get(self, turn_id: int) -> StoredTurn | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM turns WHERE id = ? AND NOT ({_EXPIRED})", (turn_id,)
        )

    async def answer_for_ask(self, ask_id: int) -> StoredTurn | None:
        """The answer an ask produced (a Reply or Regenerate button names its ask)."""
        return await self._for_ask(ask_id, "assistant")

    async def question_for_ask(self, ask_id: int) -> StoredTurn | None:
        return await self._for_ask(ask_id, "user")

    async def _for_ask(self, ask_id: int, role: str) -> StoredTurn | None:
        # One ask may store several versions at once (a card's greetings): the one
        # shown is its answer, else the newest.
        return await self._one(
            f"SELECT {_COLUMNS} FROM turns t WHERE ask_id = ? AND role = ? "
            f"AND NOT ({_EXPIRED}) ORDER BY EXISTS (SELECT 1 FROM swipe_choices c "
            "WHERE c.answer_id = t.id) DESC, id DESC LIMIT 1",
            (ask_id, role),
        )

    async def by_message(self, message_id: int) -> StoredTurn | None:
        """The turn a Discord message belongs to (a page of an answer, a question)."""
        return await self._one(
            f"SELECT {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))} "
            "FROM turn_messages m JOIN turns t ON t.id = m.turn_id WHERE m.message_id = ? "
            f"AND NOT ({_EXPIRED_T})",
            (message_id,),
        )

    async def chain(self, turn_id: int | None) -> list[StoredTurn]:
        """The turns from the root down to `turn_id` (inclusive), oldest first."""
        if turn_id is None:
            return []
        rows = await self.db.read(
            "WITH RECURSIVE up(id, depth) AS ("
            " SELECT CAST(? AS BIGINT), 0"
            " UNION ALL"
            " SELECT t.parent_id, up.depth + 1 FROM turns t JOIN up ON t.id = up.id"
            " WHERE t.parent_id IS NOT NULL AND up.depth < ?"
            f") SELECT {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))}, up.depth "
            f"FROM up JOIN turns t ON t.id = up.id WHERE NOT ({_EXPIRED_T}) "
            "ORDER BY up.depth DESC",
            (turn_id, MAX_CHAIN, self.private_cutoff()),
        )
        return [StoredTurn.from_row(r[:-1]) for r in rows]

    async def chain_at(self, place: str) -> tuple[int | None, list[StoredTurn]]:
        """A place's current turn and its chain, in one query (None, [] when it has none)."""
        rows = await self.db.read(
            "WITH RECURSIVE up(id, depth) AS ("
            " SELECT turn_id, 0 FROM conversation_heads WHERE place = ? AND turn_id IS NOT NULL"
            " UNION ALL"
            " SELECT t.parent_id, up.depth + 1 FROM turns t JOIN up ON t.id = up.id"
            " WHERE t.parent_id IS NOT NULL AND up.depth < ?"
            f") SELECT {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))}, up.depth "
            f"FROM up JOIN turns t ON t.id = up.id WHERE NOT ({_EXPIRED_T}) "
            "ORDER BY up.depth DESC",
            (place, MAX_CHAIN, self.private_cutoff()),
        )
        chain = [StoredTurn.from_row(r[:-1]) for r in rows]
        head = chain[-1].id if rows and int(rows[-1][-1]) == 0 else None
        return head, chain

    async def head(self, place: str) -> int | None:
        """The current turn of a place (a DM, a thread, the console), if any."""
        rows = await self.db.read(
            "SELECT turn_id FROM conversation_heads WHERE place = ?", (place,)
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def set_head(self, place: str, turn_id: int | None) -> None:
        """Make `turn_id` the place's current turn; None starts afresh next time."""

        async def work(conn: Tx) -> None:
            await set_head_in(conn, place, turn_id, self.db.now_iso())

        await self.db.write(work)

    # --- a member sees and clears their conversation (/conversation) ---

    async def latest_answer(self, channel_id: int, user_id: int) -> StoredTurn | None:
        """The newest answer to `user_id` in `channel_id`: their conversation there."""
        return await self._one(
            f"SELECT {_COLUMNS} FROM turns WHERE role = 'assistant' AND channel_id = ? "
            f"AND author_id = ? AND NOT ({_EXPIRED}) ORDER BY id DESC LIMIT 1",
            (channel_id, user_id),
        )

    async def forget_own(self, conversation_id: int, user_id: int) -> int:
        """Delete `user_id`'s turns of one conversation (their questions and the answers
        to them) and the prompts kept for Regenerate; returns how many turns went."""

        async def work(conn: Tx) -> int:
            await conn.execute(
                "DELETE FROM asks WHERE id IN (SELECT ask_id FROM turns WHERE "
                "conversation_id = ? AND author_id = ? AND ask_id IS NOT NULL)",
                (conversation_id, user_id),
            )
            return await conn.execute(
                "DELETE FROM turns WHERE conversation_id = ? AND author_id = ?",
                (conversation_id, user_id),
            )

        return await self.db.write(work)

    async def add_exchange(self, ex: NewExchange) -> tuple[StoredTurn, StoredTurn]:
        """Store a question and its answer in one transaction; returns both turns."""
        now = self.db.now_iso()
        expired = self.private_cutoff()
        return await self.db.write(lambda conn: self.exchange_in(conn, ex, now, expired))

    async def exchange_in(
        self, conn: Tx, ex: NewExchange, now: str, expired: str, *,
        finish: str | None = None, tokens: int = 0, reasoning: str = "",
    ) -> tuple[StoredTurn, StoredTurn]:
        """`add_exchange` inside the caller's transaction; the answer may carry why it
        stopped, its tokens and its reasoning. The turns returned are built from what was
        written (nothing is read back)."""
        await conn.execute(f"DELETE FROM turns WHERE {_EXPIRED}", (expired,))
        conversation: int | None = None
        if ex.parent_id is not None:
            row = await conn.fetchone(
                "SELECT conversation_id FROM turns WHERE id = ?", (ex.parent_id,)
            )
            conversation = int(row[0]) if row else None
        parent = ex.parent_id if conversation is not None else None
        stored: list[StoredTurn] = []
        for role, text, name, messages, extra in (
            ("user", ex.question, ex.author_name, ex.question_message_ids, (None, 0, "")),
            ("assistant", ex.answer, "", ex.answer_message_ids,
             (finish, max(0, tokens), reasoning)),
        ):
            inserted = await conn.fetchone(
                "INSERT INTO turns (conversation_id, parent_id, role, text, author_id, "
                "author_name, ask_id, guild_id, channel_id, private, created_at, model, "
                "finish, tokens, reasoning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (conversation or 0, parent, role, text, ex.author_id, name, ex.ask_id,
                 ex.guild_id, ex.channel_id, int(ex.private), now, ex.model, *extra),
            )
            assert inserted is not None
            turn_id = int(inserted[0])
            if conversation is None:
                conversation = turn_id
                await conn.execute(
                    "UPDATE turns SET conversation_id = ? WHERE id = ?", (conversation, turn_id)
                )
            for message_id in messages:
                await conn.execute(MAP_MESSAGE_SQL, (message_id, turn_id))
            stored.append(StoredTurn(
                id=turn_id, conversation_id=conversation, parent_id=parent, role=role,
                text=text, author_id=ex.author_id, author_name=name, ask_id=ex.ask_id,
                guild_id=ex.guild_id, channel_id=ex.channel_id, private=ex.private,
                created_at=now, model=ex.model,
            ))
            parent = turn_id
        if ex.head is not None:
            await set_head_in(conn, ex.head, stored[1].id, now)
        return stored[0], stored[1]

    async def prune(self, retention_days: int) -> int:
        """Delete turns older than `retention_days` (0: no limit in days) and private
        turns past `private_ttl_s`; returns how many.

        Children of a deleted turn keep living: their `parent_id` becomes NULL,
        so their conversation simply starts later.
        """
        expired = self.private_cutoff()
        cutoff = (self.db.clock() - timedelta(days=retention_days)).astimezone(UTC)
        cutoff_iso = cutoff.isoformat(timespec="milliseconds")

        async def work(conn: Tx) -> int:
            removed = await conn.execute(f"DELETE FROM turns WHERE {_EXPIRED}", (expired,))
            if retention_days > 0:
                removed += await conn.execute(
                    "DELETE FROM turns WHERE created_at < ?", (cutoff_iso,)
                )
            return removed

        return await self.db.write(work)


MAP_MESSAGE_SQL = (
    "INSERT INTO turn_messages (message_id, turn_id) VALUES (?, ?) "
    "ON CONFLICT (message_id) DO UPDATE SET turn_id = excluded.turn_id"
)


async def set_head_in(conn: Tx, place: str, turn_id: int | None, now: str) -> None:
    """Make `turn_id` the current turn of `place`, inside the caller's transaction."""
    await conn.execute(
        "INSERT INTO conversation_heads (place, turn_id, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (place) DO UPDATE SET turn_id = excluded.turn_id, "
        "updated_at = excluded.updated_at",
        (place, turn_id, now),
    )
