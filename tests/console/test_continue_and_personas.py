"""Conversation features in the console: /continue, /swipe, /regen, /system import FILE,
save|load|list.

In-process with the embedded model's tokenizer and scripted output, against a
real SQLite file, so each step's stored state can be checked after it is typed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

from bot.console import Console
from bot.engine import Engine
from testing.apps import core_app
from testing.character_cards import card_json, card_png


async def test_console_continue_swipe_and_personas(
    smol_model_dir: Path, smol_scripted: Callable[..., Engine], tmp_path: Path
) -> None:
    counter = {"n": 0}

    def answer(tokens: list[str]) -> str:
        counter["n"] += 1
        return f"Version {counter['n']} " + " ".join(f"w{i}" for i in range(40))

    out = io.StringIO()
    card = tmp_path / "hook.png"
    card.write_bytes(card_png({"name": "Hook", "description": "A pirate captain.",
                               "first_mes": "Ahoy!"}))
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"{nope")
    big = tmp_path / "big.json"
    big.write_bytes(card_json({"name": "Big", "description": "Arr. " * 40_000}))

    async def say(line: str) -> str:
        out.seek(0)
        out.truncate()
        assert await console.handle(line)
        return out.getvalue()

    # The embedded model's tokenizer and template; the model itself is scripted.
    async with core_app(smol_model_dir, tmp_path, engine=smol_scripted(answer)) as app:
        console = Console(app, out=out)
        assert "Imported Hook" in await say(f"/system import {card} --greeting")
        assert "Ahoy!" in out.getvalue()
        assert "error:" in await say(f"/system import {broken}")
        assert "shortened" in await say(f"/system import {big}")
        listed = await say("/system list")
        assert listed.startswith("Saved personas: ") and "Big" in listed and "Hook" in listed
        loaded = await say("/system load hook --greeting")
        assert "Loaded 'Hook'" in loaded and "Ahoy!" in loaded  # its greeting, posted again
        plain = await say("/system load hook")
        assert "Loaded 'Hook'" in plain and "Ahoy!" not in plain
        assert "Saved the persona 'Pirate'" in await say("/system save Pirate")
        await say("/knobs set max_new_tokens=8")
        first = await say("Count for me")
        assert "cut at the limit" in first
        head = await app.turns.head(console.place)
        assert head is not None
        before = await app.swipes.answer(head)
        assert before is not None and before.finish == "length"
        more = await say("/continue")
        after = await app.swipes.answer(head)
        assert after is not None and after.continuations == 1
        assert after.turn.text.startswith(before.turn.text) and more.startswith(before.turn.text)
        # /regen makes version 2; /swipe browses, and the next ask continues the one shown.
        assert "version 2/2" in await say("/regen")
        shown = await say("/swipe prev")
        assert "[version 1/2]" in shown and "Version 1" in shown
        assert "[version 1/2]" in await say("/swipe prev")  # clamped at the first
        history = await say("/history")
        assert re.search(r"This conversation uses [\d,]+ of [\d,]+ tokens", history)
        assert "Version 1" in history and "Version 2" not in history
        assert "error:" in await say("/swipe sideways")
        await say("/knobs set max_new_tokens=200")
        await say("/new")
        assert "error: No answer yet" in await say("/continue")


async def test_console_greeting_is_the_first_answer_and_swipe_browses_alternates(
    smol_model_dir: Path, smol_scripted: Callable[..., Engine], tmp_path: Path
) -> None:
    prompts: list[str] = []

    def answer(tokens: list[str]) -> str:
        prompts.append("".join(tokens).replace("Ċ", "\n").replace("Ġ", " "))  # byte-level BPE
        return "Aye."

    out = io.StringIO()
    card = tmp_path / "hook.json"
    card.write_bytes(card_json({"name": "Hook", "description": "A pirate captain.",
                                "first_mes": "Ahoy, {{user}}!",
                                "alternate_greetings": ["Who goes there?"]}))

    async def say(line: str) -> str:
        out.seek(0)
        out.truncate()
        assert await console.handle(line)
        return out.getvalue()

    async with core_app(smol_model_dir, tmp_path, engine=smol_scripted(answer)) as app:
        console = Console(app, out=out)
        said = await say(f"/system import {card} --greeting")
        assert "Ahoy, you!" in said and "[version 1/2; /swipe prev|next" in said
        assert "Who goes there?" in await say("/swipe next")
        assert "error: A greeting has no question" in await say("/regen")
        await say("Ahoy yourself")
        # The greeting on screen is the assistant's turn before the question.
        assert "assistant\nWho goes there?<|im_end|>" in prompts[-1]
        assert "Ahoy, you!" not in prompts[-1]
        history = await say("/history")
        assert "Who goes there?" in history and "Ahoy yourself" in history
