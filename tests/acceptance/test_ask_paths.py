"""One ask path: the slash command and the message paths behave alike (acknowledgement,
slot release, undelivered replies, buttons), and a turn's prompt is encoded once.

The Discord stories run the real discord.py client against the fake Discord; the
core ones a real tiny CTranslate2 model and a real SQLite file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.chat.history import PrivateConversation
from bot.chat.turns import TurnAsk
from bot.engine import (
    FinishReason,
    GenerationResult,
    Turn,
)
from bot.errors import UserFacingError
from bot.store.scopes import Location
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import RecordedRequest, Routes, StoredMessage
from testing.stories import buttons, watch_prepares

LOCATION = Location(guild_id=10, channel_id=20, user_id=30)


def answered(text: str) -> GenerationResult:
    """A finished reply saying `text`, as the engine would report it."""
    return GenerationResult(text=text, prompt_tokens=1, new_tokens=1, ttft_s=None,
                            decode_tok_s=None, total_s=0.0, finish_reason=FinishReason.END,
                            max_new_tokens=1)


async def mention_answer(h: Harness, text: str, **kw: Any) -> StoredMessage:
    """Mention the bot in #general and wait for its finished answer (by message)."""
    asked = await h.fake.inject_message(text, mention_bot=True, channel_id=h.general, **kw)

    def answer() -> StoredMessage | None:
        return next((m for m in h.fake.channel_messages(h.general)
                     if m.author.get("bot") and is_final(m.content)
                     and m.interaction_token is None and m.id > asked.id), None)

    return await h.fake.wait_for(answer, timeout=30)


def is_message_footer_edit(r: RecordedRequest) -> bool:
    return r.key == Routes.EDIT_MESSAGE and "· done" in str((r.json or {}).get("content"))


async def test_the_next_ask_right_after_a_mention_replys_footer_is_accepted(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The message path frees the member's slot before its final edit, as /ask does.

    It used to free it only after: with the footer on screen, the member's next
    /ask was refused as "already in progress" for as long as the edit took.
    """
    async with running_bot(smol_model_dir, tmp_path, scripted="all done here") as h:
        asker = h.guild.members[0]
        h.fake.delay(is_message_footer_edit, 1.0, times=1)
        await h.fake.inject_message("first", mention_bot=True, channel_id=h.general, user=asker)
        await h.fake.wait_for(lambda: h.fake.requests_for(is_message_footer_edit) or None,
                              timeout=30)
        assert h.bot.runner.gate.active(asker.id) == 0
        again = await h.command("ask", {"prompt": "second"}, user=asker)
        await h.finished(again)
        assert again.original is not None and "all done here" in again.original.content


async def test_buttons_come_in_one_order_whichever_way_one_asks(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """Regenerate then Reply, under a /ask answer and a mention answer alike (the
    message path used to put Reply first)."""
    async with running_bot(smol_model_dir, tmp_path, scripted="An answer.") as h:
        itx = await h.ask("by command")
        assert itx.original is not None
        by_command = [c.split(":")[1] for c in buttons(itx.original)]
        by_mention = [c.split(":")[1] for c in buttons(await mention_answer(h, "by mention"))]
    # Inspect follows, in one order too.
    assert by_command == by_mention == ["regen", "reply", "inspect"]


async def test_an_idle_bot_says_no_next_in_line_to_a_mention_either(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="Hello there.") as h:
        answer = await mention_answer(h, "hi")
        shown = [rev["content"] for rev in h.fake.message(answer.id).revisions]
    assert shown[0] == "-# ⏳ reading…"
    assert not any("next in line" in s or "queued" in s for s in shown), shown
    assert "Hello there.\n-# " in shown[-1]


async def test_a_long_mention_reply_keeps_stop_on_its_live_page_only(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """A page that fills up loses Stop at once (the message path used to keep it there
    until the footer, so two pages offered Stop at the same time)."""
    text = "\n\n".join(f"paragraph {i} " + "lorem ipsum dolor sit amet " * 12 for i in range(9))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.001) as h:
        asked = await h.fake.inject_message("long", mention_bot=True, channel_id=h.general)

        def pages() -> list[StoredMessage] | None:
            mine = [m for m in h.fake.channel_messages(h.general)
                    if m.author.get("bot") and m.id > asked.id]
            return mine if mine and is_final(mine[-1].content) else None

        found = await h.fake.wait_for(pages, timeout=60)
        assert len(found) == 2
        first, last = (h.fake.message(m.id) for m in found)
        # Stop shows on the first page until the second one exists, then never again.
        stops = [any(c.startswith("llm:stop:") for c in _ids(rev["components"]))
                 for rev in first.revisions]
        assert stops[0] and not stops[-1]
        assert stops == sorted(stops, reverse=True), stops
        # A reply cut at its token limit also offers Continue; every finished reply with
        # text, Inspect.
        assert [c.split(":")[1] for c in buttons(last)] == [
            "regen", "reply", "cont", "inspect"]


def _ids(components: list[dict[str, Any]]) -> list[str]:
    return [c.get("custom_id", "") for row in components for c in row.get("components", [])]


async def test_a_mention_reply_discord_keeps_refusing_ends_with_a_clear_message(
    smol_model_dir: Path, tmp_path: Path, quick_retries: None
) -> None:
    """As for /ask: the reply does not sit at "writing…" without a word (the message
    path used to only log it)."""
    async with running_bot(smol_model_dir, tmp_path, scripted="t1 t2 t3 t4") as h:
        h.fake.fail_next(is_message_footer_edit, 502, times=10)
        asked = await h.fake.inject_message("go", mention_bot=True, channel_id=h.general)

        def note() -> StoredMessage | None:
            return next((m for m in h.fake.channel_messages(h.general)
                         if "Discord kept failing (502)" in m.content), None)

        said = await h.fake.wait_for(note, timeout=30)
        assert "ask again" in said.content
        sent = next(r.json for r in h.fake.requests_for(Routes.SEND_MESSAGE)
                    if "kept failing" in str((r.json or {}).get("content")))
        assert int(sent["message_reference"]["message_id"]) == asked.id  # a reply to it
        assert sent["allowed_mentions"]["parse"] == []
        await h.fake.wait_for(lambda: not h.bot.runner.active or None, timeout=10)
        h.fake.clear_faults()
        again = await h.ask("and now?")
        assert again.original is not None and "t1 t2" in again.original.content


# --- the core: one turn for every front-end, its prompt encoded once ------------------


@pytest.mark.parametrize("pairs", [0, 2, 12])
async def test_a_turn_is_encoded_once_and_submitted_as_prepared(
    app: App, monkeypatch: pytest.MonkeyPatch, pairs: int
) -> None:
    """No history, history that fits, history too long: the request that is submitted
    was rendered and encoded exactly once, and `Engine.submit` did not do it again."""
    parent = None
    for n in range(pairs):
        _, answer = await app.turns.add_exchange(_exchange(parent, f"question {n}",
                                                           "reply " * 12))
        parent = answer.id
    prepared = watch_prepares(app.engine, monkeypatch)
    turn = await app.chat.prepare(TurnAsk(location=LOCATION, prompt="the new one",
                                           author_id=30, author_name="Ada", parent_id=parent,
                                           explicit=True))
    gen = app.engine.submit(turn.request, turn.prepared)
    result = await gen.result()
    assert gen.prepared is turn.prepared
    assert prepared.count(turn.request) == 1, (len(prepared), turn.dropped_turns)
    lengths = [len(r.history) for r in prepared]
    assert len(lengths) == len(set(lengths)), lengths  # no candidate measured twice
    assert len(turn.request.history) == 2 * pairs - turn.dropped_turns
    if pairs == 12:
        assert turn.dropped_turns > 0  # the tiny model's 256 tokens can't hold them all
    assert result.new_tokens > 0


def _exchange(parent: int | None, question: str, answer: str) -> Any:
    from bot.store.turns import NewExchange

    return NewExchange(parent_id=parent, question=question, answer=answer, author_id=30,
                       author_name="Ada", ask_id=None, guild_id=10, channel_id=20,
                       private=False)


async def test_one_turn_keeps_a_places_conversation_for_every_front_end(app: App) -> None:
    """A place's current turn is what the next ask continues; a chosen turn (or a
    chosen fresh start) wins; a private ask in a shared place never becomes current."""
    place = "console:20"
    # 128 set explicitly: the default budget (512) leaves the
    # tiny model's 256-token window no room for history.
    base = TurnAsk(location=LOCATION, prompt="one", author_id=30, author_name="Ada",
                   place=place, shared=True, overrides={"max_new_tokens": 128})

    async def ask(turn_ask: TurnAsk) -> tuple[int | None, int, tuple[Turn, ...]]:
        turn = await app.chat.prepare(turn_ask)
        stored = await app.chat.record(turn, answered(f"answer to {turn_ask.prompt}"))
        assert stored is not None
        return turn.parent_id, stored.current.turn.id, turn.request.history

    _, first, history = await ask(base)
    assert history == () and await app.turns.head(place) == first
    parent, _, history = await ask(replace(base, prompt="two"))
    assert parent == first and [t.text for t in history] == ["one", "answer to one"]
    parent, fresh, history = await ask(replace(base, prompt="new", explicit=True))
    assert parent is None and history == () and await app.turns.head(place) == fresh
    await ask(replace(base, prompt="psst", private=True))
    assert await app.turns.head(place) == fresh  # the private answer did not become current
    _, after, history = await ask(replace(base, prompt="after"))
    assert [t.text for t in history] == ["new", "answer to new"]  # psst is not in it
    # A private turn is continued privately by its author, and by nobody else.
    _, mine, _ = await ask(replace(base, prompt="mine", private=True, parent_id=after,
                                   explicit=True))
    with pytest.raises(PrivateConversation):
        await app.chat.prepare(replace(base, prompt="let me see", author_id=31,
                                        author_name="Bob", parent_id=mine, explicit=True))
    with pytest.raises(UserFacingError, match="only be continued privately"):
        await app.chat.prepare(replace(base, prompt="publicly", parent_id=mine,
                                        explicit=True))
