"""`python -m bench speakers --json`: how often the bot writes lines as the members.

Three members (Ada, Bob and Cy) talk with the bot in one thread, taking turns,
through the path every front-end takes (`Chat.prepare` → the turn's engine →
`Chat.record`), so each reply is stored and read back as history by the next
ask, as in a server. It runs twice: with the configured default persona, and
with a character card's persona. The knobs are the defaults, except a modest
`max_new_tokens` so the run stays short on a CPU; the sampler is seeded so two
runs of the same code decode the same replies.

`share_speaking_as_others` is the share of replies, as stored and shown, that
open with or contain a line in a member's name ("Bob: …", "**Bob:** …"):
the bot writing someone else's turn. `share_opening_with_a_label` is the share
that open with any speaker's label, the persona's own ("Marlo: …") included,
which members read as clutter. `share_empty` is printed beside them, so a
filter that emptied replies could not pass for a fix.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bot.chat.characters import card_from_json
from bot.chat.turns import TurnAsk
from bot.config import Settings
from bot.store.ask_log import AskLog
from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore

GUILD, CHANNEL, THREAD = 10, 20, 30
MEMBERS: Final = ((101, "Ada"), (102, "Bob"), (103, "Cy"))
QUESTIONS: Final = (
    "Hi! We're planning a board game night for Saturday. Any ideas?",
    "I like that. How many people can play it at once?",
    "Could we do something cooperative instead? I hate losing.",
    "What snacks go well with a long game?",
    "Ada, what time works for you? I can host.",
    "Which game is easiest to teach to newcomers?",
    "Should we have a backup game in case people get bored?",
    "Bob, do you still have that big table?",
    "What's a good game for exactly three players?",
    "How long does a typical round take?",
    "Can you write us a short invitation message?",
    "Thanks! Anything we forgot?",
)
CARD_NAME: Final = "Marlo"
#: A small V2 card, as members import them.
CARD: Final = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": CARD_NAME,
        "description": "Marlo is a cheerful game-shop owner who knows every tabletop game.",
        "personality": "warm, enthusiastic, practical",
        "scenario": "Marlo chats with regulars of the shop in the shop's Discord server.",
        "first_mes": "Welcome back to the shop, {{user}}! What are we playing tonight?",
        "mes_example": "<START>\n{{user}}: What's fun for four?\n{{char}}: Oh, try Azul!",
    },
}
NEW_TOKENS: Final = 96
SEED: Final = 1234


def opens_with_label(text: str, names: tuple[str, ...]) -> bool:
    """Whether the first line of `text` starts with one of `names` as a label."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return speaks_as(first, names)


def speaks_as(text: str, names: tuple[str, ...]) -> bool:
    """Whether `text` opens with, or holds, a line in one of `names` ("Bob:", "**Bob:**")."""
    for line in text.splitlines():
        bare = line.strip().lstrip("*_ ").lstrip()
        for name in names:
            if bare.startswith(name):
                rest = bare[len(name):].lstrip("*_ ")
                if rest.startswith(":"):
                    return True
    return False


async def _conversation(app: Any, persona: str | None, replies: int,
                        new_tokens: int) -> list[dict[str, Any]]:
    where = Location(GUILD, THREAD, parent_channel_id=CHANNEL)
    if persona is not None:
        await app.store.set_system_prompt(Scope.channel(THREAD, GUILD), persona, actor_id=1)
    names = tuple(name for _, name in MEMBERS)
    out: list[dict[str, Any]] = []
    for n in range(replies):
        author_id, author_name = MEMBERS[n % len(MEMBERS)]
        ask = TurnAsk(location=where, prompt=QUESTIONS[n % len(QUESTIONS)],
                      author_id=author_id, author_name=author_name, place=f"thread:{THREAD}",
                      shared=True, overrides={"max_new_tokens": new_tokens})
        turn = await app.chat.prepare(ask)
        result = await turn.engine.submit(turn.request, turn.prepared).result()
        await app.chat.record(turn, result)
        out.append({"asker": author_name, "text": result.text,
                    "speaks_as_others": speaks_as(result.text, names),
                    "opens_with_label": opens_with_label(
                        result.text, (*names, CARD_NAME, "Assistant")),
                    "empty": not result.text.strip()})
    return out


async def speakers_bench(app: Any, *, replies_per_case: int = 12,
                         new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    card = card_from_json(json.dumps(CARD).encode())
    cases = {"no_persona": None, "card_persona": card.persona}
    out: dict[str, Any] = {"members": [name for _, name in MEMBERS],
                           "max_new_tokens": new_tokens, "cases": {}}
    every: list[dict[str, Any]] = []
    for label, persona in cases.items():
        start = time.perf_counter()
        thread_app = await _fresh(app)
        try:
            rows = await _conversation(thread_app, persona, replies_per_case, new_tokens)
        finally:
            await thread_app.store.close()
        every += rows
        out["cases"][label] = {
            "replies": len(rows),
            "speaking_as_others": sum(r["speaks_as_others"] for r in rows),
            "opening_with_a_label": sum(r["opens_with_label"] for r in rows),
            "empty": sum(r["empty"] for r in rows),
            "seconds": round(time.perf_counter() - start, 1),
            "samples": [f"{r['asker']} → {r['text'][:160]}" for r in rows[:4]],
        }
    total = len(every)
    out["replies"] = total
    out["share_speaking_as_others"] = round(sum(r["speaks_as_others"] for r in every) / total, 3)
    out["share_opening_with_a_label"] = round(
        sum(r["opens_with_label"] for r in every) / total, 3)
    out["share_empty"] = round(sum(r["empty"] for r in every) / total, 3)
    return out


async def _fresh(app: Any) -> Any:
    """An App on the same engine with an empty database: each case is its own thread."""
    from bot.app import App

    tmp = Path(tempfile.mkdtemp(prefix="speakers-bench-"))
    store = await SettingsStore.open(tmp / "bench.sqlite3")
    return App(settings=app.settings, engine=app.engine, store=store, ask_log=AskLog(store.db))


async def run_speakers_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import App, load_engine, model_dir_for

    if settings.seed is None:
        settings = settings.model_copy(update={"seed": SEED})
    engine = await load_engine(settings, model_dir_for(settings))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = await SettingsStore.open(Path(tmp) / "bench.sqlite3")
            try:
                app = App(settings=settings, engine=engine, store=store, ask_log=AskLog(store.db))
                out: dict[str, Any] = {"model": engine.info.model_name, "seed": settings.seed}
                out.update(await speakers_bench(
                    app, new_tokens=min(getattr(args, "new_tokens", NEW_TOKENS), NEW_TOKENS)))
                return out
            finally:
                await store.close()
    finally:
        await engine.close()
