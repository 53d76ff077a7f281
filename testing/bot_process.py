"""`python -m bot run` as systemd runs it, pointed at a fake Discord in the test's loop.

The bot runs as a separate process (as in production: signal handlers, `asyncio.run`,
exit status), reaches a `FakeDiscord` through `BOT_DISCORD_API_BASE` /
`BOT_DISCORD_GATEWAY_URL`, and reports to a datagram socket named by `NOTIFY_SOCKET`
(`NotifySocket`), as it would to systemd. `bot_process` starts it, waits for READY=1
and makes sure it is gone afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testing.fake_discord import FakeDiscord
from testing.processes import ROOT

FAKE_TOKEN = "MTAx.NOT-A-REAL-TOKEN.secret42"
GRACE_S = 1.0


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
