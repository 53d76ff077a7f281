"""SIGTERM end to end: the real `python -m bot run` process against the fake Discord.

systemd stops the bot with SIGTERM and waits `TimeoutStopSec`; what members see in
that window is the behaviour under test. The bot runs as a separate process (as in
production: signal handlers, `asyncio.run`, exit status), pointed at a `FakeDiscord`
in this test's event loop through `BOT_DISCORD_API_BASE` / `BOT_DISCORD_GATEWAY_URL`,
and reports to a datagram socket named by `NOTIFY_SOCKET`, as it would to systemd
(`testing.bot_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from bot.store.ask_log import AskLog
from bot.store.connect import open_database
from testing.bot_process import GRACE_S, bot_process
from testing.discord_harness import is_final
from testing.fake_discord import FakeDiscord, FakeInteraction, StoredMessage

pytestmark = pytest.mark.slow  # every story here runs `python -m bot` in a process

#: Python start-up, closing the engine and the store: generous for a loaded CI box.
EXIT_SLACK_S = 8.0


def body_text(msg: StoredMessage, prompt: str) -> str:
    """What the model wrote so far: the content minus the quoted prompt and status line."""
    lines = msg.content.split("\n")
    return "\n".join(ln for ln in lines if not ln.startswith(("> ", "-# "))).strip()


async def test_sigterm_refuses_new_asks_interrupts_replies_and_exits_cleanly(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with FakeDiscord() as fake, bot_process(fake, smol_model_dir, tmp_path) as bot:
        # A reply far longer than the grace period (1,024 tokens at ~30 tok/s here).
        first: FakeInteraction = await fake.inject_interaction(
            "ask", {"prompt": "Tell me a long story about a lighthouse.",
                    "min_new_tokens": 1024, "max_new_tokens": 1024},
        )
        await first.wait_original(lambda m: len(body_text(m, "")) > 20, timeout=30)
        assert bot.notify.count("STOPPING") == 0

        start = time.monotonic()
        bot.proc.send_signal(signal.SIGTERM)
        await bot.notify.wait("STOPPING", timeout=5)
        # The bot refuses asks from the moment it handles the signal (before it
        # sends STOPPING=1) and keeps the gateway open through the grace period,
        # so this ask is always delivered and always refused: no race to accept.
        second = await fake.inject_interaction("ask", {"prompt": "are you there?"})
        refusal = await second.wait_response(timeout=3)
        assert refusal.type == 4  # answered at once, not deferred
        assert "restarting, try again in a moment" in refusal.data["content"]
        assert refusal.data["flags"] & 64  # ephemeral

        code = await asyncio.wait_for(bot.proc.wait(), GRACE_S + EXIT_SLACK_S)
        elapsed = time.monotonic() - start
        assert code == 0, bot.output
        assert elapsed < GRACE_S + EXIT_SLACK_S
        assert elapsed >= GRACE_S * 0.9  # the reply was given its grace period

        final = first.original
        assert final is not None
        assert "Interrupted" in final.content, final.content
        assert is_final(final.content) and " · stopped" in final.content
        assert "1024 tokens" not in final.content
        assert not final.components or "llm:stop:" not in str(final.components)
        assert bot.notify.count("READY") == 1 and bot.notify.count("STOPPING") == 1
        assert "stopped cleanly" in bot.output

    # The database was closed cleanly: no WAL left to replay, intact, the ask kept
    # (so Regenerate works after the restart).
    wal = bot.database_path.with_name(bot.database_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with contextlib.closing(sqlite3.connect(bot.database_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db = await open_database(bot.database_path)
    try:
        asks = AskLog(db)
        record = await asks.load(first.id)
        assert record is not None and record.prompt.startswith("Tell me a long story")
        assert await asks.load(second.id) is None  # refused asks leave nothing behind
    finally:
        await db.close()
