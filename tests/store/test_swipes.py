"""Swipes and Continue on a real SQLite file, over the conversation tree (draft migration 5)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from bot.errors import UserFacingError
from bot.store.connect import open_database
from bot.store.db import Database
from bot.store.migration_swipes import STATEMENTS
from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.swipes import (
    MAX_ANSWER_CHARS,
    MAX_CONTINUATIONS,
    MAX_SWIPES,
    AnswerGone,
    PrivateAnswer,
    SwipeStore,
)
from bot.store.turns import TurnStore
from testing.stories import ADA, BEN, exchange


async def test_migration_5_gives_a_new_database_the_swipe_tables(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await open_database(path) as database:
        columns = {r[1] for r in await database.read("PRAGMA table_info(turns)", ())}
        assert {"reasoning", "finish", "continuations", "tokens"} <= columns
        tables = {r[0] for r in await database.read(
            "SELECT name FROM sqlite_master WHERE type = 'table'", ())}
        assert {"swipe_choices", "personas"} <= tables
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with await open_database(path) as again:
        rows = await again.read("PRAGMA user_version", ())
        assert rows[0][0] == LATEST_VERSION >= 5
    assert MIGRATIONS[4] == STATEMENTS and len(STATEMENTS) == 7


async def test_old_turn_rows_read_with_the_new_defaults(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    _, a1 = await turns.add_exchange(exchange(None, "q", "a"))
    answer = await swipes.answer(a1.id)
    assert answer is not None and answer.turn == a1
    assert (answer.reasoning, answer.finish, answer.continuations, answer.tokens) == (
        "", None, 0, 0)
    assert not answer.can_continue


async def test_regenerate_adds_versions_browsed_in_place(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    q1, a1 = await turns.add_exchange(exchange(None, "q1", "first", head="thread:9",
                                               messages=(500, 501)))
    one = await swipes.swipes(q1.id, user_id=BEN)
    assert one.label() == "1/1" and not one.has_previous and not one.has_next
    two = await swipes.add_swipe(q1.id, "second", user_id=ADA, ask_id=77, finish="stop",
                                 tokens=5)
    three = await swipes.add_swipe(q1.id, "third", user_id=BEN, ask_id=78, reasoning="hmm")
    assert two.label() == "2/2"
    assert [a.turn.text for a in three.answers] == ["first", "second", "third"]
    assert three.label() == "3/3" and three.current.reasoning == "hmm"
    new = three.current.turn
    assert (new.parent_id, new.conversation_id, new.role, new.author_id, new.ask_id) == (
        q1.id, q1.conversation_id, "assistant", ADA, 78)
    # The conversation continues from the version shown: messages and head follow it.
    assert await turns.head("thread:9") == new.id
    found = await turns.by_message(501)
    assert found is not None and found.id == new.id
    back = await swipes.step(new.id, -1, user_id=BEN)
    assert back.label() == "2/3" and back.current.turn.text == "second"
    assert await turns.head("thread:9") == back.current.turn.id
    found = await turns.by_message(500)
    assert found is not None and found.text == "second"
    chain = await turns.chain(back.current.turn.id)
    assert [t.text for t in chain] == ["q1", "second"]
    # Clamped at both ends; a later read sees the stored choice.
    assert (await swipes.show(q1.id, -5, user_id=ADA)).label() == "1/3"
    assert (await swipes.show(q1.id, 99, user_id=ADA)).label() == "3/3"
    assert (await swipes.swipes_of_answer(a1.id, user_id=ADA)).label() == "3/3"
    await swipes.show(q1.id, 0, user_id=ADA)
    assert (await swipes.swipes(q1.id, user_id=ADA)).current.turn.id == a1.id


async def test_versions_are_capped(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    q1, _ = await turns.add_exchange(exchange(None, "q", "a"))
    for n in range(MAX_SWIPES - 1):
        await swipes.add_swipe(q1.id, f"v{n}", user_id=ADA, ask_id=None)
    with pytest.raises(UserFacingError, match=f"{MAX_SWIPES} versions already"):
        await swipes.add_swipe(q1.id, "one too many", user_id=ADA, ask_id=None)
    assert len((await swipes.swipes(q1.id, user_id=ADA)).answers) == MAX_SWIPES


async def test_private_answers_are_their_owners_only(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    q1, a1 = await turns.add_exchange(exchange(None, "secret", "a", private=True))
    await swipes.record_finish(a1.id, finish="length", tokens=128)
    for attempt in (
        swipes.swipes(q1.id, user_id=BEN),
        swipes.step(a1.id, 1, user_id=BEN),
        swipes.add_swipe(q1.id, "x", user_id=BEN, ask_id=None),
        swipes.check_continue(a1.id, user_id=BEN),
        swipes.extend(a1.id, " more", user_id=BEN, tokens=3, finish="stop"),
    ):
        with pytest.raises(PrivateAnswer, match="private to the person who asked"):
            await attempt
    answer = await swipes.answer(a1.id)
    assert answer is not None and answer.turn.text == "a" and answer.continuations == 0
    assert (await swipes.check_continue(a1.id, user_id=ADA)).turn.id == a1.id


async def test_continue_extends_the_same_answer_within_its_caps(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    q1, a1 = await turns.add_exchange(exchange(None, "tell a story", "Once upon"))
    with pytest.raises(UserFacingError, match="stopped at its token limit"):
        await swipes.check_continue(a1.id, user_id=BEN)
    await swipes.record_finish(a1.id, finish="length", tokens=128, reasoning="plan")
    first = await swipes.answer(a1.id)
    assert first is not None and first.can_continue and first.reasoning == "plan"
    done = await swipes.extend(a1.id, " a time.", user_id=BEN, tokens=4, finish="stop",
                               reasoning=" more")
    assert (done.turn.text, done.tokens, done.continuations, done.finish, done.reasoning) == (
        "Once upon a time.", 132, 1, "stop", "plan more")
    assert not done.can_continue
    chain = await turns.chain(a1.id)
    assert [t.text for t in chain] == ["tell a story", "Once upon a time."]
    with pytest.raises(UserFacingError, match="this one finished"):
        await swipes.extend(a1.id, "!", user_id=ADA, tokens=1, finish="stop")
    assert q1.id == chain[0].id


async def test_continue_is_capped_in_count_and_length(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    _, a1 = await turns.add_exchange(exchange(None, "q", "x"))
    await swipes.record_finish(a1.id, finish="length", tokens=1)
    for _ in range(MAX_CONTINUATIONS):
        await swipes.extend(a1.id, "y", user_id=ADA, tokens=1, finish="length")
    with pytest.raises(UserFacingError, match=f"continued {MAX_CONTINUATIONS} times"):
        await swipes.check_continue(a1.id, user_id=ADA)
    _, a2 = await turns.add_exchange(exchange(None, "q", "z"))
    await swipes.record_finish(a2.id, finish="length", tokens=1)
    grown = await swipes.extend(a2.id, "w" * (MAX_ANSWER_CHARS * 2), user_id=ADA, tokens=9,
                                finish="length")
    assert len(grown.turn.text) == MAX_ANSWER_CHARS
    with pytest.raises(UserFacingError, match="as long as a reply can be"):
        await swipes.check_continue(a2.id, user_id=ADA)


async def test_two_continues_at_once_append_once(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    _, a1 = await turns.add_exchange(exchange(None, "q", "start"))
    await swipes.record_finish(a1.id, finish="length", tokens=1)
    results = await asyncio.gather(
        swipes.extend(a1.id, " one", user_id=ADA, tokens=1, finish="stop"),
        swipes.extend(a1.id, " two", user_id=ADA, tokens=1, finish="stop"),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, UserFacingError)]
    assert len(failures) == 1
    answer = await swipes.answer(a1.id)
    assert answer is not None and answer.turn.text in ("start one", "start two")
    assert answer.continuations == 1


async def test_pruned_versions_fall_back_and_gone_answers_say_so(db: Database) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    q1, a1 = await turns.add_exchange(exchange(None, "q", "a"))
    two = await swipes.add_swipe(q1.id, "b", user_id=ADA, ask_id=None)
    await swipes.show(q1.id, 0, user_id=ADA)
    await db.write(lambda conn: conn.execute("DELETE FROM turns WHERE id = ?", (a1.id,)))
    left = await swipes.swipes(q1.id, user_id=ADA)
    assert left.label() == "1/1" and left.current.turn.id == two.current.turn.id
    with pytest.raises(AnswerGone):
        await swipes.swipes_of_answer(a1.id, user_id=ADA)
    with pytest.raises(AnswerGone):
        await swipes.check_continue(123456, user_id=ADA)
    with pytest.raises(ValueError, match="unknown finish"):
        await swipes.record_finish(two.current.turn.id, finish="bogus", tokens=1)


async def test_greetings_open_a_conversation_as_versions_of_its_first_answer(
    db: Database
) -> None:
    turns, swipes = TurnStore(db), SwipeStore(db)
    opened = await swipes.add_opening(["Hello.", "Hi there.", "Welcome."], author_id=0,
                                      ask_id=900, guild_id=1, channel_id=2, private=False,
                                      message_ids=(600,), head="thread:5")
    # The root is the empty question nobody asked; the first greeting is shown.
    assert opened.question.opening and opened.question.parent_id is None
    assert [a.turn.text for a in opened.answers] == ["Hello.", "Hi there.", "Welcome."]
    assert opened.label() == "1/3" and opened.current.turn.author_id == 0
    assert {a.turn.conversation_id for a in opened.answers} == {opened.question.id}
    first = opened.current.turn
    assert await turns.head("thread:5") == first.id
    assert await turns.by_message(600) == first
    # Anyone browses a public greeting; the message, the place and the ask's answer
    # (what Reply continues) follow the version shown.
    second = await swipes.step(first.id, 1, user_id=BEN)
    assert second.label() == "2/3" and second.current.turn.text == "Hi there."
    assert await turns.head("thread:5") == second.current.turn.id
    assert await turns.by_message(600) == second.current.turn
    assert await turns.answer_for_ask(900) == second.current.turn
    # A follow-up continues from it: its chain starts with the opening.
    q, _ = await turns.add_exchange(exchange(second.current.turn.id, "Hi!", "Answer."))
    chain = await turns.chain(q.id)
    assert [t.text for t in chain[:2]] == ["", "Hi there."] and chain[0].opening
    with pytest.raises(ValueError, match="greeting needs text"):
        await swipes.add_opening(["  "], author_id=0, ask_id=None, guild_id=1, channel_id=2,
                                 private=False)


async def test_a_dm_greeting_is_its_members_private_conversation(db: Database) -> None:
    swipes = SwipeStore(db)
    opened = await swipes.add_opening(["Hello."], author_id=ADA, ask_id=None, guild_id=None,
                                      channel_id=7, private=True, head="dm:101")
    assert opened.current.turn.private and opened.current.turn.visible_to(ADA)
    with pytest.raises(PrivateAnswer):
        await swipes.swipes_of_answer(opened.current.turn.id, user_id=BEN)
