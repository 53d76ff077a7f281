"""Context usage: one wording for the footer, /settings and /history, from the real tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.chat.history import fit_history
from bot.chat.service import PROBE
from bot.chat.turns import TurnAsk
from bot.chat.usage import ContextUsage, usage_of
from bot.engine import Engine, GenerationRequest, Turn
from bot.knobs import Knobs
from bot.store.scopes import Location, Scope
from testing.apps import core_app
from testing.stories import ADA, exchange


def test_wording_with_thousands_separators() -> None:
    usage = ContextUsage(prompt_tokens=1234, context_length=2048, dropped_turns=3)
    assert usage.dropped_text() == "3 earlier turns left out · 2,048 tokens"
    assert usage.usage_text() == "uses 1,234 of 2,048 tokens (60 %)"
    assert ContextUsage(10, 131_072, 1).dropped_text() == "1 earlier turn left out · 131,072 tokens"
    assert ContextUsage(10, 2048).dropped_text() is None
    assert ContextUsage(1, 131_072).usage_text() == "uses 1 of 131,072 tokens (1 %)"
    assert ContextUsage(0, 2048).percent == 0
    assert ContextUsage(2047, 2048).percent == 100
    assert ContextUsage(5, 0).percent == 0


async def test_numbers_come_from_the_engine_and_the_real_tokenizer(tiny_engine: Engine) -> None:
    context = tiny_engine.info.context_length
    assert context == tiny_engine.bundle.context_length
    history: list[Turn] = []
    for n in range(40):
        history += [Turn("user", f"Ana: question {n} " + "word " * 20),
                    Turn("assistant", f"answer {n} " + "text " * 20)]
    request = GenerationRequest(prompt="Bob: the new question", knobs=Knobs(max_new_tokens=64),
                                system_prompt="Be brief.", history=tuple(history))
    fitted = fit_history(tiny_engine, request)
    assert fitted.dropped_turns > 0
    usage = usage_of(tiny_engine.prepare(fitted.request), context, fitted.dropped_turns)
    ids = tiny_engine.bundle.encode_chat(
        "Be brief.", "Bob: the new question",
        [(t.role, t.text) for t in fitted.request.history])
    assert usage.prompt_tokens == len(ids)
    assert usage.prompt_tokens + 64 <= context
    assert usage.reply_tokens == 64
    assert usage.dropped_text() == (
        f"{fitted.dropped_turns} earlier turns left out · {context:,} tokens")
    assert f"uses {len(ids):,} of {context:,} tokens" in usage.usage_text()
    assert usage == usage_of(tiny_engine.prepare(fitted.request), context, fitted.dropped_turns)


@pytest.mark.slow
def test_the_conversation_core_modules_import_no_front_end() -> None:
    """Like test_architecture's guard, for the modules the Discord and console wiring use."""
    modules = ("bot.chat.characters", "bot.model.reasoning", "bot.chat.speakers", "bot.chat.usage",
               "bot.store.swipes", "bot.store.personas", "bot.store.migration_swipes")
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(out.stdout))
    assert "bot" in loaded
    assert not loaded & {"discord", "cogs", "bench", "testing", "aiohttp", "ctranslate2"}


async def test_usage_here_is_the_conversations_own_or_none(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`/settings` shows a conversation's use of the window only where there is one."""
    async with core_app(tiny_model_dir, tmp_path, script="an answer") as app:
        ask = TurnAsk(location=Location(guild_id=1, channel_id=2, user_id=ADA), prompt=PROBE,
                      author_id=ADA, author_name="Ada", place="thread:9", shared=True)
        assert await app.chat.usage_here(replace(ask, place=None)) is None
        assert await app.chat.usage_here(ask) is None  # nothing said in that thread yet
        await app.store.set_knobs(Scope.server(1), {"max_new_tokens": 32}, actor_id=1)
        await app.turns.add_exchange(exchange(None, "a question " * 10, "an answer",
                                              head="thread:9"))
        usage = await app.chat.usage_here(ask)
        assert usage is not None and usage == await app.chat.usage(ask)
        alone = await app.chat.usage(replace(ask, place="thread:10"))  # the probe, no history
        assert usage.dropped_turns == 0 and usage.prompt_tokens > alone.prompt_tokens + 10
