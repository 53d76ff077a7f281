"""The conversation core without Discord: stored turns, chains, privacy, fitting.

A real SQLite file (the settings database, migrated) and the tiny model's real
tokenizer and chat template; no mocks.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.chat.history import (
    PrivateConversation,
    check_continuable,
    fit_history,
    history_of,
)
from bot.engine import Engine, GenerationRequest, Turn
from bot.errors import PromptTooLong
from bot.knobs import Knobs
from bot.store.store import SettingsStore
from bot.store.turns import TurnStore
from testing.stories import ADA, BEN, exchange


async def test_chains_branch_and_find_their_messages(store: SettingsStore) -> None:
    turns = TurnStore(store.db)
    q1, a1 = await turns.add_exchange(exchange(None, "q1", "a1", messages=(900, 901)))
    q2, a2 = await turns.add_exchange(exchange(a1.id, "q2", "a2"))
    _, side = await turns.add_exchange(exchange(a1.id, "side", "a-side", author=BEN))
    assert q1.conversation_id == q1.id == a2.conversation_id == side.conversation_id
    assert [t.text for t in await turns.chain(a2.id)] == ["q1", "a1", "q2", "a2"]
    assert [t.text for t in await turns.chain(side.id)] == ["q1", "a1", "side", "a-side"]
    found = await turns.by_message(901)
    assert found is not None and found.id == a1.id
    assert await turns.by_message(902) is None
    assert history_of(await turns.chain(side.id), names=True) == (
        Turn("user", "Ada: q1"), Turn("assistant", "a1"), Turn("user", "Ben: side"),
        Turn("assistant", "a-side"))
    assert q2.parent_id == a1.id and q2.author_name == "Ada"


async def test_heads_move_and_reset(store: SettingsStore) -> None:
    turns = TurnStore(store.db)
    assert await turns.head("dm:7") is None
    _, a1 = await turns.add_exchange(exchange(None, "q", "a", head="dm:7"))
    assert await turns.head("dm:7") == a1.id
    await turns.set_head("dm:7", None)
    assert await turns.head("dm:7") is None


async def test_private_turns_belong_to_their_asker(store: SettingsStore) -> None:
    turns = TurnStore(store.db)
    _, secret = await turns.add_exchange(exchange(None, "mine", "yours", private=True))
    chain = await turns.chain(secret.id)
    assert all(t.visible_to(ADA) and not t.visible_to(BEN) for t in chain)
    assert check_continuable(chain, ADA) is True  # continues, privately
    with pytest.raises(PrivateConversation):
        check_continuable(chain, BEN)
    _, public = await turns.add_exchange(exchange(None, "open", "answer"))
    assert check_continuable(await turns.chain(public.id), BEN) is False


async def test_prune_cuts_the_chain_at_the_retention(store: SettingsStore) -> None:
    db = store.db
    turns = TurnStore(db)
    now = datetime(2026, 1, 10, tzinfo=UTC)
    db.clock = lambda: now - timedelta(days=40)
    _, old = await turns.add_exchange(exchange(None, "old q", "old a", head="console:2"))
    db.clock = lambda: now
    _, new = await turns.add_exchange(exchange(old.id, "new q", "new a"))
    assert await turns.prune(0) == 0  # 0 keeps everything
    assert await turns.prune(30) == 2
    assert [t.text for t in await turns.chain(new.id)] == ["new q", "new a"]
    assert await turns.get(old.id) is None
    assert await turns.head("console:2") is None  # the head pointed at a pruned turn
    # A chain whose first question was pruned starts at the next question.
    question, answer = await turns.chain(new.id)
    assert history_of([answer, question, answer], names=False) == (
        Turn("user", "new q"), Turn("assistant", "new a"))


def _history(pairs: int, answer: str) -> tuple[Turn, ...]:
    out: list[Turn] = []
    for n in range(pairs):
        out += [Turn("user", f"question {n}"), Turn("assistant", f"{n} {answer}")]
    return tuple(out)


@pytest.mark.parametrize("pairs", [0, 1, 3, 8])
@pytest.mark.parametrize("max_new", [16, 64, 128])
async def test_fit_keeps_the_newest_turns_that_fit_and_no_fewer(
    tiny_engine: Engine, pairs: int, max_new: int
) -> None:
    context = tiny_engine.bundle.context_length
    request = GenerationRequest(prompt="the new question", knobs=Knobs(max_new_tokens=max_new),
                                system_prompt="Be brief.", history=_history(pairs, "word " * 8))
    fitted = fit_history(tiny_engine, request)
    kept = fitted.request.history
    assert fitted.dropped_turns == len(request.history) - len(kept)
    assert fitted.dropped_turns % 2 == 0
    assert kept == request.history[len(request.history) - len(kept):]  # the newest ones
    assert fitted.request.system_prompt == "Be brief." and fitted.request.prompt == request.prompt
    prepared = tiny_engine.prepare(fitted.request)
    if kept:
        assert len(prepared.tokens) + max_new <= context
    if fitted.dropped_turns:
        # Keeping one more exchange would not have fitted.
        one_more = replace(request, history=request.history[len(request.history) - len(kept) - 2:])
        with contextlib.suppress(PromptTooLong):  # far too long is "would not fit" too
            assert len(tiny_engine.prepare(one_more).tokens) + max_new > context


async def test_a_single_turn_too_long_is_still_refused_with_both_numbers(
    tiny_engine: Engine,
) -> None:
    request = GenerationRequest(prompt="long " * 400, history=_history(2, "x"))
    fitted = fit_history(tiny_engine, request)
    assert fitted.request.history == () and fitted.dropped_turns == 4
    with pytest.raises(PromptTooLong) as info:
        tiny_engine.submit(fitted.request)
    assert info.value.context_length == tiny_engine.bundle.context_length
    assert info.value.prompt_tokens > info.value.context_length
