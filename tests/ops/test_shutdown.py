"""SIGTERM end to end: the real `python -m bot run` process against the fake Discord.

systemd stops the bot with SIGTERM and waits `TimeoutStopSec`; what members see in
that window is the behaviour under test. The bot runs as a separate process (as in
production: signal handlers, `asyncio.run`, exit status), pointed at a `FakeDiscord`
in this test's event loop through `BOT_DISCORD_API_BASE` / `BOT_DISCORD_GATEWAY_URL`,
and reports to a datagram socket named by `NOTIFY_SOCKET`, as it would to systemd.

`BotProcess` is shared with tests/ops/test_logs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.store.ask_log import AskLog
from bot.store.db import Database
from testing.discord_harness import is_final
from testing.fake_discord import FakeDiscord, FakeInteraction, StoredMessage

ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "MTAx.NOT-A-REAL-TOKEN.secret42"
GRACE_S = 1.0
#: Python start-up, closing the engine and the store: generous for a loaded CI box.
EXIT_SLACK_S = 8.0


class NotifySocket:
    """What systemd's notification socket sees: one datagram per `sd_notify` call.

    An abstract-namespace name (`@...`), so the address fits in `sun_path` whatever
    pytest's tmp_path is, and nothing is left on disk.
    """

    def __init__(self) -> None:
        self.name = f"@llamacord-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def count(self, key: str) -> int:
        self._drain()
        return sum(1 for m in self.messages if key in m)

    async def wait(self, key: str, timeout: float = 60.0) -> dict[str, str]:  # noqa: ASYNC109 - reads better in tests
        """The first message holding `key` (e.g. READY), waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            for message in self.messages:
                if key in message:
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key}=... from the bot within {timeout} s: {self.messages}")
            await asyncio.sleep(0.02)


@dataclass
class BotProcess:
    """A running `python -m bot run` and what it has written so far."""

    proc: asyncio.subprocess.Process
    notify: NotifySocket
    output_path: Path
    database_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """stdout and stderr together, as journald would collect them."""
        return self.output_path.read_text(errors="replace")

    async def stop(self, timeout: float) -> tuple[int, float]:  # noqa: ASYNC109 - reads better in tests
        """SIGTERM, then wait: (exit status, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        return code, time.monotonic() - start


def bot_env(
    fake: FakeDiscord, model_dir: Path, tmp_path: Path, notify: NotifySocket,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The bot's environment: nothing inherited that could point it at a real service."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("BOT_", "WATCHDOG_")) and k not in (
            "DISCORD_TOKEN", "NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID",
        )
    }
    env.update({
        "DISCORD_TOKEN": FAKE_TOKEN,
        "BOT_DISCORD_API_BASE": fake.api_base,
        "BOT_DISCORD_GATEWAY_URL": fake.gateway_url,
        "BOT_MODEL_DIR": str(model_dir),
        "BOT_MODELS_ROOT": str(tmp_path / "models"),
        "BOT_DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
        "BOT_DEVICE": "cpu",
        "BOT_SHUTDOWN_GRACE_S": str(GRACE_S),
        "BOT_EDIT_INTERVAL_S": "0.2",
        "BOT_BATCH_WAIT_MS": "5",
        "NOTIFY_SOCKET": notify.name,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


@contextlib.asynccontextmanager
async def bot_process(
    fake: FakeDiscord, model_dir: Path, tmp_path: Path, *,
    env: Mapping[str, str] | None = None, journal: bool = False,
) -> AsyncIterator[BotProcess]:
    """Start the bot, wait for READY=1, and make sure the process is gone afterwards.

    With `journal=True`, `JOURNAL_STREAM` names the output file's device and inode,
    exactly as systemd names the journal stream it hands a service.
    """
    notify = NotifySocket()
    output_path = tmp_path / "bot-output.log"
    full_env = bot_env(fake, model_dir, tmp_path, notify, env)
    with output_path.open("wb") as out:
        if journal:
            st = os.fstat(out.fileno())
            full_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", "/dev/null", "run",
            cwd=ROOT, env=full_env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    bot = BotProcess(proc, notify, output_path, tmp_path / "bot.sqlite3", full_env)
    try:
        ready = asyncio.ensure_future(notify.wait("READY", timeout=90))
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            raise AssertionError(f"the bot exited before READY=1:\n{bot.output}")
        exited.cancel()
        ready.result()
        await fake.wait_for(lambda: fake.commands or None, timeout=10)
        yield bot
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


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
    db = await Database.open(bot.database_path)
    try:
        asks = AskLog(db)
        record = await asks.load(first.id)
        assert record is not None and record.prompt.startswith("Tell me a long story")
        assert await asks.load(second.id) is None  # refused asks leave nothing behind
    finally:
        await db.close()
