"""Which model answers: a scope's choice with its source, and a conversation's model.

The resolution runs over an `Effective` carrying the scope's `model` (as the store
resolves the `model` key); the conversation story runs on a real SQLite file with
the `turns.model` column of its migration.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from bot.errors import InvalidKnobs
from bot.hosting.choice import (
    MODEL_KEY,
    ModelChoice,
    check_choice,
    model_for_turn,
    model_in_effect,
    resolve_model,
    validate_model_name,
)
from bot.knobs import Knobs
from bot.store.connect import open_database
from bot.store.migration_models import MODEL_CHOICES_IN_GUILD_SQL, MODEL_MIGRATION
from bot.store.migrations import MIGRATIONS
from bot.store.scopes import SETTING_KEYS, Effective
from bot.store.turns import NewExchange, TurnStore

KNOWN = ("chat", "coder", "smollm2-135m-instruct")
DEFAULT = "chat"


def effective(model: str | None, source: str) -> Effective:
    sources = dict.fromkeys(SETTING_KEYS, "default")
    sources[MODEL_KEY] = source
    return Effective(knobs=Knobs(), system_prompt=None, sources=sources, model=model)


def test_the_model_in_effect_and_where_it_comes_from() -> None:
    none = model_in_effect(effective(None, "default"), known=KNOWN, default=DEFAULT)
    assert none == ModelChoice(name="chat", source="default")
    assert none.describe() == "`chat` (the default)"
    chosen = model_in_effect(effective("coder", "channel"), known=KNOWN, default=DEFAULT)
    assert (chosen.name, chosen.source, chosen.note) == ("coder", "channel", None)
    assert chosen.describe() == "`coder` (from the channel)"
    thread = resolve_model("Coder ", "thread", known=KNOWN, default=DEFAULT)
    assert (thread.name, thread.source) == ("coder", "thread")
    # A scope naming a model this host no longer serves keeps its row; the default answers.
    gone = model_in_effect(effective("llama-70b", "server"), known=KNOWN, default=DEFAULT)
    assert (gone.name, gone.source, gone.requested) == ("chat", "default", "llama-70b")
    assert gone.note and "`llama-70b`" in gone.note and "the server" in gone.note
    assert "no longer serves" in gone.describe()


def test_stored_names_are_checked_for_form_and_set_names_for_existence() -> None:
    assert validate_model_name(" Coder-7B.q4_k ") == "coder-7b.q4_k"
    for bad in (None, 3, "", "-lead", "sp ace", "<@123>", "x" * 65, "é"):
        with pytest.raises(InvalidKnobs):
            validate_model_name(bad)
    assert validate_model_name("removed-model") == "removed-model"  # form only
    assert check_choice("CODER", KNOWN) == "coder"
    with pytest.raises(InvalidKnobs, match="`chat`, `coder`, `smollm2-135m-instruct`"):
        check_choice("removed-model", KNOWN)


def test_a_turn_keeps_its_model_unless_the_choice_changed() -> None:
    chat = ModelChoice(name="chat", source="default")
    coder = ModelChoice(name="coder", source="channel")
    first = model_for_turn(None, chat, known=KNOWN)
    assert (first.name, first.note, first.switched_from) == ("chat", None, None)
    kept = model_for_turn("chat", chat, known=KNOWN)
    assert (kept.name, kept.note) == ("chat", None)
    switched = model_for_turn("chat", coder, known=KNOWN)
    assert (switched.name, switched.switched_from) == ("coder", "chat")
    assert switched.note == "switched to `coder` (the model set for this channel)"
    back = model_for_turn("coder", chat, known=KNOWN)
    assert back.note == "switched to `chat` (the default model)"
    removed = model_for_turn("llama-70b", chat, known=KNOWN)
    assert removed.name == "chat" and removed.note is not None
    assert "`llama-70b` is no longer served" in removed.note


async def test_a_conversation_story_on_the_turns_model_column(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "bot.sqlite3")
    try:
        turns = TurnStore(db)

        def exchange(parent: int | None, text: str, model: str | None = None) -> NewExchange:
            return NewExchange(parent_id=parent, question=text, answer="answer to " + text,
                               author_id=7, author_name="ann", ask_id=None, guild_id=1,
                               channel_id=2, private=False, model=model)

        # The migration is applied by opening the file; a turn stored without a model
        # (as every turn before it was) reads back NULL.
        assert MODEL_MIGRATION in MIGRATIONS
        _, legacy = await turns.add_exchange(exchange(None, "before the migration"))

        async def stored(turn_id: int) -> str | None:
            rows = await db.read("SELECT model FROM turns WHERE id = ?", (turn_id,))
            return None if rows[0][0] is None else str(rows[0][0])

        assert await stored(legacy.id) is None  # old turns: nothing to keep
        assert model_for_turn(await stored(legacy.id), ModelChoice("coder", "channel"),
                              known=KNOWN).note is None

        # Turn 1 under the default; turn 2 continues it; then the channel picks coder.
        choice = ModelChoice("chat", "default")
        _, a1 = await turns.add_exchange(
            exchange(None, "one", model_for_turn(None, choice, known=KNOWN).name))
        assert a1.model == "chat"
        t2 = model_for_turn(await stored(a1.id), choice, known=KNOWN)
        assert (t2.name, t2.note) == ("chat", None)
        _, a2 = await turns.add_exchange(exchange(a1.id, "two", t2.name))
        t3 = model_for_turn(await stored(a2.id), ModelChoice("coder", "channel"), known=KNOWN)
        assert t3.name == "coder" and t3.note and "switched to `coder`" in t3.note
        _, a3 = await turns.add_exchange(exchange(a2.id, "three", t3.name))
        assert [t.model for t in await turns.chain(a3.id)] == ["chat", "chat", "chat", "chat",
                                                              "coder", "coder"]
        t4 = model_for_turn(await stored(a3.id), ModelChoice("coder", "channel"), known=KNOWN)
        assert (t4.name, t4.note) == ("coder", None)  # said once, not at every turn
        assert [t.text for t in await turns.chain(a3.id)][-1] == "answer to three"

        # "In use where": the draft query over settings rows with key `model`.
        async def choose(conn: aiosqlite.Connection) -> None:
            for kind, scope_id, guild, value in (("server", 1, 1, '"chat"'),
                                                 ("channel", 2, 1, '"coder"'),
                                                 ("channel", 9, 5, '"coder"')):
                await conn.execute(
                    "INSERT INTO settings (scope_kind, scope_id, key, value, guild_id, "
                    "updated_by, updated_at) VALUES (?, ?, 'model', ?, ?, 7, 'now')",
                    (kind, scope_id, value, guild),
                )

        await db.write(choose)
        rows = await db.read(MODEL_CHOICES_IN_GUILD_SQL, (1,))
        assert rows == [('"chat"', "server", 1), ('"coder"', "channel", 2)]
    finally:
        await db.close()
