"""Swipes and Continue over the conversation tree (migration 5).

Swipes: the versions of an answer are the assistant turns that follow one user
turn, oldest first; Regenerate adds one (`add_swipe`) instead of copying the
question, so "2/3" is simply the second child of three. The shown version is a
row in `swipe_choices` (none: the newest), and showing another one re-points
every Discord message and conversation head that named a version of this
answer, so a reply to the message, the Reply button and a thread's next turn
all continue from the version on screen.

Continue: a reply that stopped at its token budget is extended in place
(`extend`): the same assistant turn's text grows, `continuations` counts the
extra budgets (capped), `tokens` adds up. The privacy rule of conversations
holds: a private answer can be browsed, regenerated or continued by its owner
only, checked here so no front-end can forget it.

Not Discord-specific: the console's `/swipe` and `/continue` use the same calls
with its own place name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bot import wording
from bot.errors import UserFacingError
from bot.store.db import Database, Tx
from bot.store.turns import (  # one column list
    _COLUMNS,
    MAP_MESSAGE_SQL,
    StoredTurn,
    set_head_in,
)

MAX_SWIPES: Final = 20
MAX_CONTINUATIONS: Final = 8
#: Longest an answer may grow by Continue (Discord pages it; the model's window is
#: the real bound, this one stops a loop of Continues from filling the database).
MAX_ANSWER_CHARS: Final = 64_000
FINISH_REASONS: Final = frozenset({"stop", "length", "cancelled", "error"})


_TURN_WIDTH: Final = len(_COLUMNS.split(","))
_EXTRA = "reasoning, finish, continuations, tokens"


class PrivateAnswer(UserFacingError):
    """Someone else's private answer: not theirs to browse, regenerate or continue."""

    def __init__(self) -> None:
        super().__init__("This reply is private to the person who asked for it.")


class AnswerGone(UserFacingError):
    def __init__(self) -> None:
        super().__init__("I no longer have this reply (it may have expired). Ask again!")


@dataclass(frozen=True)
class Answer:
    """An assistant turn with what Continue and reasoning need beside its text."""

    turn: StoredTurn
    reasoning: str
    finish: str | None
    continuations: int
    tokens: int

    @property
    def can_continue(self) -> bool:
        """Stopped at its budget, with budgets left to give."""
        return self.finish == "length" and self.continuations < MAX_CONTINUATIONS


@dataclass(frozen=True)
class Swipes:
    """The versions of one answer and which one is shown."""

    question: StoredTurn
    answers: tuple[Answer, ...]
    shown: int

    @property
    def current(self) -> Answer:
        return self.answers[self.shown]

    def label(self) -> str:
        """``2/3``, for the ◀ 2/3 ▶ buttons."""
        return f"{self.shown + 1}/{len(self.answers)}"

    @property
    def has_previous(self) -> bool:
        return self.shown > 0

    @property
    def has_next(self) -> bool:
        return self.shown + 1 < len(self.answers)


def _answer(row: Sequence[object]) -> Answer:
    turn = StoredTurn.from_row(row[:_TURN_WIDTH])
    reasoning, finish, continuations, tokens = row[_TURN_WIDTH:_TURN_WIDTH + 4]
    return Answer(
        turn=turn,
        reasoning=str(reasoning or ""),
        finish=None if finish is None else str(finish),
        continuations=int(continuations or 0),  # type: ignore[call-overload]
        tokens=int(tokens or 0),  # type: ignore[call-overload]
    )


def _check_finish(finish: str | None) -> None:
    if finish is not None and finish not in FINISH_REASONS:
        raise ValueError(f"unknown finish reason {finish!r}")


class SwipeStore:
    """Versions of answers and their continuation, through the shared `Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- reads ---------------------------------------------------------------------

    async def answer(self, answer_id: int) -> Answer | None:
        return await self.db.read_with(lambda conn: _answer_in(conn, answer_id))

    async def swipes(self, question_id: int, *, user_id: int) -> Swipes:
        """The versions of the answer to `question_id`, as `user_id` may see them."""
        return await self.db.read_with(lambda conn: _swipes_in(conn, question_id, user_id))

    async def swipes_of_answer(self, answer_id: int, *, user_id: int) -> Swipes:
        """The versions an answer belongs to (what a ◀ ▶ button on its message names)."""
        found = await self.answer(answer_id)
        if found is None or found.turn.parent_id is None:
            raise AnswerGone()
        return await self.swipes(found.turn.parent_id, user_id=user_id)

    # --- writes --------------------------------------------------------------------

    async def add_swipe(
        self,
        question_id: int,
        text: str,
        *,
        user_id: int,
        ask_id: int | None,
        reasoning: str = "",
        finish: str | None = None,
        tokens: int = 0,
        message_ids: Sequence[int] = (),
    ) -> Swipes:
        """Store another version of the answer to `question_id` and show it.

        Refused past `MAX_SWIPES` versions (the message says so) and, for a
        private question, for anyone but its author.
        """
        now = self.db.now_iso()
        return await self.db.write(lambda conn: self.add_swipe_in(
            conn, question_id, text, now, user_id=user_id, ask_id=ask_id, reasoning=reasoning,
            finish=finish, tokens=tokens, message_ids=message_ids))

    async def add_swipe_in(
        self, conn: Tx, question_id: int, text: str, now: str, *,
        user_id: int, ask_id: int | None, reasoning: str = "", finish: str | None = None,
        tokens: int = 0, message_ids: Sequence[int] = (),
    ) -> Swipes:
        """`add_swipe` inside the caller's transaction; the versions returned include it."""
        _check_finish(finish)
        current = await _swipes_in(conn, question_id, user_id)
        if len(current.answers) >= MAX_SWIPES:
            raise UserFacingError(wording.versions_full(MAX_SWIPES))
        question = current.question
        inserted = await conn.fetchone(
            "INSERT INTO turns (conversation_id, parent_id, role, text, author_id, "
            "author_name, ask_id, guild_id, channel_id, private, created_at, reasoning, "
            "finish, tokens) VALUES (?, ?, 'assistant', ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (question.conversation_id, question.id, text, question.author_id, ask_id,
             question.guild_id, question.channel_id, int(question.private), now,
             reasoning, finish, max(0, tokens)),
        )
        assert inserted is not None
        new_id = int(inserted[0])
        for message_id in message_ids:
            await conn.execute(MAP_MESSAGE_SQL, (message_id, new_id))
        await _show(conn, question.id, new_id, [a.turn.id for a in current.answers], now)
        added = Answer(
            turn=StoredTurn(
                id=new_id, conversation_id=question.conversation_id, parent_id=question.id,
                role="assistant", text=text, author_id=question.author_id, author_name="",
                ask_id=ask_id, guild_id=question.guild_id, channel_id=question.channel_id,
                private=question.private, created_at=now,
            ),
            reasoning=reasoning, finish=finish, continuations=0, tokens=max(0, tokens),
        )
        answers = (*current.answers, added)
        return Swipes(question, answers, len(answers) - 1)

    async def add_opening(
        self, greetings: Sequence[str], *, author_id: int, ask_id: int | None,
        guild_id: int | None, channel_id: int | None, private: bool,
        message_ids: Sequence[int] = (), head: str | None = None,
    ) -> Swipes:
        """Start a conversation with a character's greetings: the empty question nobody
        asked (`bot.store.turns.is_opening`) and each greeting a version of its answer,
        the first one shown (on `message_ids`, and current at the place `head`)."""
        if not greetings or not all(g.strip() for g in greetings):
            raise ValueError("a greeting needs text")
        now = self.db.now_iso()

        async def work(conn: Tx) -> Swipes:
            async def insert(conversation: int, parent: int | None, role: str, text: str) -> int:
                inserted = await conn.fetchone(
                    "INSERT INTO turns (conversation_id, parent_id, role, text, author_id, "
                    "author_name, ask_id, guild_id, channel_id, private, created_at) "
                    "VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?) RETURNING id",
                    (conversation, parent, role, text, author_id, ask_id, guild_id,
                     channel_id, int(private), now),
                )
                assert inserted is not None
                return int(inserted[0])

            root = await insert(0, None, "user", "")
            await conn.execute("UPDATE turns SET conversation_id = ? WHERE id = ?", (root, root))
            versions = [await insert(root, root, "assistant", g) for g in greetings[:MAX_SWIPES]]
            first = versions[0]
            for message_id in message_ids:
                await conn.execute(MAP_MESSAGE_SQL, (message_id, first))
            await _show(conn, root, first, versions, now)
            if head is not None:
                await set_head_in(conn, head, first, now)
            return await _swipes_in(conn, root, author_id)

        return await self.db.write(work)

    async def show(self, question_id: int, index: int, *, user_id: int) -> Swipes:
        """Show version `index` (0-based, clamped to the versions there are)."""
        current = await self.swipes(question_id, user_id=user_id)
        index = max(0, min(index, len(current.answers) - 1))
        if index == current.shown:
            return current
        target = current.answers[index].turn.id
        siblings = [a.turn.id for a in current.answers]
        now = self.db.now_iso()
        await self.db.write(lambda conn: _show(conn, question_id, target, siblings, now))
        return await self.swipes(question_id, user_id=user_id)

    async def step(self, answer_id: int, delta: int, *, user_id: int) -> Swipes:
        """◀ (−1) or ▶ (+1) from the version `answer_id`'s message shows."""
        current = await self.swipes_of_answer(answer_id, user_id=user_id)
        return await self.show(current.question.id, current.shown + delta, user_id=user_id)

    async def record_finish(
        self, answer_id: int, *, finish: str | None, tokens: int, reasoning: str = ""
    ) -> None:
        """What `TurnStore.add_exchange` does not know yet: why it stopped, its tokens."""
        _check_finish(finish)

        async def work(conn: Tx) -> None:
            await conn.execute(
                "UPDATE turns SET finish = ?, tokens = ?, reasoning = ? "
                "WHERE id = ? AND role = 'assistant'",
                (finish, max(0, tokens), reasoning, answer_id),
            )

        await self.db.write(work)

    async def check_continue(self, answer_id: int, *, user_id: int) -> Answer:
        """The answer Continue would extend, or the reason it cannot be (before generating)."""
        return _continuable(await self.answer(answer_id), user_id)

    async def extend(
        self,
        answer_id: int,
        more: str,
        *,
        user_id: int,
        tokens: int,
        finish: str | None,
        reasoning: str = "",
    ) -> Answer:
        """Append one Continue's text to the same answer (checks re-run in the write)."""
        swipes = await self.db.write(lambda conn: self.extend_in(
            conn, answer_id, more, user_id=user_id, tokens=tokens, finish=finish,
            reasoning=reasoning))
        return next(a for a in swipes.answers if a.turn.id == answer_id)

    async def extend_in(
        self, conn: Tx, answer_id: int, more: str, *, user_id: int,
        tokens: int, finish: str | None, reasoning: str = "", message_ids: Sequence[int] = (),
    ) -> Swipes:
        """`extend` inside the caller's transaction (with the new pages' messages);
        returns the versions the extended answer belongs to."""
        _check_finish(finish)
        before = _continuable(await _answer_in(conn, answer_id), user_id)
        room = MAX_ANSWER_CHARS - len(before.turn.text)
        more = more[:max(0, room)]
        changed = await conn.execute(
            "UPDATE turns SET text = text || ?, reasoning = reasoning || ?, "
            "tokens = tokens + ?, continuations = continuations + 1, finish = ? "
            "WHERE id = ? AND continuations = ? AND finish = 'length'",
            (more, reasoning, max(0, tokens), finish, answer_id, before.continuations),
        )
        if not changed:
            raise UserFacingError("This reply was just continued; press Continue again.")
        for message_id in message_ids:
            await conn.execute(MAP_MESSAGE_SQL, (message_id, answer_id))
        if before.turn.parent_id is None:
            raise AnswerGone()
        return await _swipes_in(conn, before.turn.parent_id, user_id)


async def _answer_in(conn: Tx, answer_id: int) -> Answer | None:
    row = await conn.fetchone(
        f"SELECT {_COLUMNS}, {_EXTRA} FROM turns WHERE id = ? AND role = 'assistant'",
        (answer_id,),
    )
    return _answer(tuple(row)) if row is not None else None


async def _swipes_in(conn: Tx, question_id: int, user_id: int) -> Swipes:
    """`SwipeStore.swipes` on the caller's connection (inside its transaction)."""
    row = await conn.fetchone(
        f"SELECT {_COLUMNS} FROM turns WHERE id = ? AND role = 'user'", (question_id,)
    )
    if row is None:
        raise AnswerGone()
    question = StoredTurn.from_row(tuple(row))
    if not question.visible_to(user_id):
        raise PrivateAnswer()
    answers = tuple(_answer(tuple(r)) for r in await conn.fetchall(
        f"SELECT {_COLUMNS}, {_EXTRA} FROM turns "
        "WHERE parent_id = ? AND role = 'assistant' ORDER BY id", (question_id,)
    ))
    if not answers:
        raise AnswerGone()
    choice = await conn.fetchone(
        "SELECT answer_id FROM swipe_choices WHERE question_id = ?", (question_id,)
    )
    shown = len(answers) - 1
    if choice is not None:
        for i, a in enumerate(answers):
            if a.turn.id == int(choice[0]):
                shown = i
    return Swipes(question, answers, shown)


def _continuable(found: Answer | None, user_id: int) -> Answer:
    """The answer Continue would extend, or the reason it cannot be."""
    if found is None:
        raise AnswerGone()
    if not found.turn.visible_to(user_id):
        raise PrivateAnswer()
    if found.finish != "length":
        raise UserFacingError(
            "Continue is for a reply that stopped at its token limit; this one finished."
        )
    if found.continuations >= MAX_CONTINUATIONS:
        raise UserFacingError(
            f"This reply has been continued {MAX_CONTINUATIONS} times already; "
            "ask a follow-up instead."
        )
    if len(found.turn.text) >= MAX_ANSWER_CHARS:
        raise UserFacingError("This reply is as long as a reply can be; ask a follow-up.")
    return found


async def _show(conn: Tx, question_id: int, answer_id: int,
                siblings: Sequence[int], now: str) -> None:
    """Make `answer_id` the shown version: the choice, its messages and heads follow."""
    await conn.execute(
        "INSERT INTO swipe_choices (question_id, answer_id, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (question_id) DO UPDATE SET answer_id = excluded.answer_id, "
        "updated_at = excluded.updated_at",
        (question_id, answer_id, now),
    )
    others = [s for s in siblings if s != answer_id]
    if not others:
        return
    marks = ", ".join("?" for _ in others)
    await conn.execute(
        f"UPDATE turn_messages SET turn_id = ? WHERE turn_id IN ({marks})",
        (answer_id, *others),
    )
    await conn.execute(
        f"UPDATE conversation_heads SET turn_id = ?, updated_at = ? "
        f"WHERE turn_id IN ({marks})",
        (answer_id, now, *others),
    )
