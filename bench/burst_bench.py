"""Talking without @, measured: a burst answered together, and what a file adds to a prompt.

`python -m bench --burst --json`: the embedded model behind the real client and the
fake Discord, in a followed channel with message-content mode on. Each round one
member asks, and while that reply streams five messages arrive from two members;
the bench times, from the burst's last message, the burst's answer appearing (its
first message) and its first text, and checks the five were answered as one turn.
It also counts the prompt tokens that typical files add (`file_tokens`), with the
model's own tokenizer, through the same rendering an ask uses.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.chat.files import TextFile, with_files
from bot.config import Settings
from bot.store.scopes import FOLLOW_KEY, Scope
from testing.discord_harness import is_final, running_bot
from testing.fake_discord import INTENT_MESSAGE_CONTENT, FakeUser

ALICE = FakeUser((1 << 22) * 1000 + 55, "alice", "Alice")
BOB = FakeUser((1 << 22) * 1000 + 77, "bob", "Bob")
ROUNDS = 5
SAMPLE_FILES = {
    "notes.md": "# Meeting notes\n" + "".join(
        f"- Item {i}: the team agreed to review the budget and ship on Friday.\n"
        for i in range(40)),
    "app.log": "".join(
        f"2026-12-05T10:{i // 60:02d}:{i % 60:02d}Z INFO worker-{i % 4} handled request "
        f"{1000 + i} in {12 + i % 17} ms\n" for i in range(80)),
    "data.csv": "date,city,temperature_c,rain_mm\n" + "".join(
        f"2026-11-{1 + i % 28:02d},Lisbon,{14 + i % 6},{i % 3}\n" for i in range(100)),
}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3), "max": round(ordered[-1], 3),
            "n": len(ordered)}


async def run_burst_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bot.app import model_dir_for

    model_dir = model_dir_for(settings, lambda _s: None)
    appear: list[float] = []
    first_text: list[float] = []
    together = 0
    with tempfile.TemporaryDirectory() as tmp:
        async with running_bot(
            model_dir, Path(tmp), message_content=True,
            privileged_intents=INTENT_MESSAGE_CONTENT, cpu_threads=settings.cpu_threads,
        ) as h:
            h.guild.members.extend([ALICE, BOB])
            await h.app.store.set_knobs(Scope.server(h.guild.id),
                                        {"max_new_tokens": args.new_tokens}, actor_id=1)
            channel = h.help
            await h.app.store.set_mode(Scope.channel(channel, h.guild.id), FOLLOW_KEY, True,
                                       actor_id=1)

            def bot_messages() -> list[Any]:
                return [m for m in h.fake.channel_messages(channel) if m.author.get("bot")]

            for n in range(ROUNDS):
                before = len(bot_messages())
                asks = len(h.fake.requests)

                def answer_started(b: int = before) -> bool | None:
                    return len(bot_messages()) > b or None

                def second_answer(b: int = before) -> list[Any] | None:
                    return bot_messages()[b + 1:b + 2] or None

                def both_done(b: int = before) -> bool | None:
                    return sum(1 for m in bot_messages()[b:] if is_final(m.content)) >= 2 or None

                await h.fake.inject_message(f"Tell me about llamas, part {n}.",
                                            channel_id=channel, user=ALICE)
                await h.fake.wait_for(answer_started, timeout=120)
                for i, user in enumerate([BOB, ALICE, BOB, BOB, ALICE]):
                    await h.fake.inject_message(f"And question {i} of round {n}?",
                                                channel_id=channel, user=user)
                sent = time.monotonic()
                msg = (await h.fake.wait_for(second_answer, timeout=300))[0]
                appear.append(time.monotonic() - sent)

                def has_text(m: Any = msg) -> bool | None:
                    return (bool(m.content) and not m.content.startswith("-#")) or None

                await h.fake.wait_for(has_text, timeout=300)
                first_text.append(time.monotonic() - sent)
                await h.fake.wait_for(both_done, timeout=600)
                replies = [r for r in h.fake.requests[asks:]
                           if isinstance(r.json, dict) and r.json.get("message_reference")]
                together += len(replies) == 2
            engine = h.app.engine
            question = "What does it say?"
            file_tokens = {
                name: engine.count_tokens(with_files(question, [TextFile(name, text)]))
                - engine.count_tokens(question)
                for name, text in SAMPLE_FILES.items()
            }
            sizes = {name: len(text.encode()) for name, text in SAMPLE_FILES.items()}
    return {
        "bench": "burst",
        "model": h.app.engine.info.model_name,
        "rounds": ROUNDS,
        "burst_answered_as_one_turn": together,
        "last_message_to_answer_shown_s": _percentiles(appear),
        "last_message_to_first_text_s": _percentiles(first_text),
        "file_bytes": sizes,
        "file_tokens": file_tokens,
        "note": "times include the reply that was streaming when the burst arrived: the "
                "burst waits for it, by design",
    }
