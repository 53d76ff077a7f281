"""What admins and operators need: private files, bounded growth, strict
imports, one-line errors with exit codes, and a deterministic shutdown.

Real SQLite files, the real CLI in subprocesses, the real client against the fake
Discord. Times that matter (retention) come from an injected clock, never from
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.config import env_file_warning
from bot.errors import SettingsError, UserFacingError
from bot.limits import SettingsWriteLimiter
from bot.store.ask_log import AskLog, AskRecord
from bot.store.connect import open_database
from bot.store.db import Database
from bot.store.scopes import Scope
from bot.store.store import SettingsStore
from bot.store.transfer import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, prepare_import
from testing.discord_harness import running_bot
from testing.fake_discord import FakeDiscord, FakeUser
from testing.processes import ROOT, clean_env

GUILD = (1000 << 22) | 1


def bot_cli(*args: str, env: dict[str, str], stdin: str | bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], input=data, capture_output=True, env=env,
        cwd=ROOT, timeout=timeout, check=False,
    )


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


# ---------------------------------------------------------------------------------- private files


async def test_database_and_wal_are_created_private_under_a_normal_umask(tmp_path: Path) -> None:
    db_path = tmp_path / "data" / "bot.sqlite3"
    with umask(0o022):
        async with await SettingsStore.open(db_path) as store:
            await store.set_system_prompt(Scope.server(GUILD), "secret persona", actor_id=5)
            files = [db_path, db_path.with_name("bot.sqlite3-wal"),
                     db_path.with_name("bot.sqlite3-shm")]
            for f in files:
                assert f.exists(), f
                assert mode(f) == 0o600, (f, oct(mode(f)))


@pytest.mark.slow
async def test_settings_export_file_is_private(tmp_path: Path) -> None:
    db_path = tmp_path / "bot.sqlite3"
    async with await SettingsStore.open(db_path) as store:
        await store.set_knobs(Scope.server(GUILD), {"top_k": 3}, actor_id=5)
    dump = tmp_path / "dump.json"
    dump.write_text("old", encoding="utf-8")
    dump.chmod(0o644)
    with umask(0o022):
        out = bot_cli("--env-file", "/dev/null", "settings", "export", "--shard", "0",
                      "--shard-count", "1", "--file", str(dump),
                      env=clean_env(BOT_DATABASE_PATH=str(db_path)))
    assert out.returncode == 0, out.stderr
    assert mode(dump) == 0o600
    assert json.loads(dump.read_text(encoding="utf-8"))["settings"][0]["value"] == 3


@pytest.mark.slow
def test_a_readable_env_file_is_warned_about_at_start(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BOT_LOG_LEVEL=INFO\n", encoding="utf-8")
    env_file.chmod(0o644)
    warning = env_file_warning(env_file)
    assert warning is not None and "chmod 600" in warning and "0644" in warning
    # Printed at start (here by a command that then fails fast, without a model).
    out = bot_cli("--env-file", str(env_file), "ask", "", env=clean_env())
    assert b"chmod 600" in out.stderr
    env_file.chmod(0o600)
    assert env_file_warning(env_file) is None
    assert env_file_warning(tmp_path / "missing.env") is None


# -------------------------------------------------------------------------- settings write limits


async def test_write_limiter_refuses_a_flood_and_recovers() -> None:
    now = [100.0]
    limiter = SettingsWriteLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        await limiter.take(1)
    with pytest.raises(UserFacingError, match="too quickly; try again in 60 s"):
        await limiter.take(1)
    await limiter.take(2)  # another member is not affected
    now[0] += 60.0
    await limiter.take(1)


async def test_a_dm_user_cannot_flood_the_database(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(tiny_model_dir, tmp_path, settings_write_limit=3,
                           settings_write_window_s=3600) as h:
        flooder, other = FakeUser(881, "flooder"), FakeUser(882, "other")
        answers = []
        for i in range(5):
            itx = await h.fake.inject_interaction(
                "knobs set", {"temperature": 0.5 + i / 10}, dm=True, user=flooder)
            answers.append((await itx.wait_response()).data["content"])  # type: ignore[index]
        assert all(a.startswith("Set temperature") for a in answers[:3]), answers
        assert all("too quickly" in a for a in answers[3:]), answers
        assert (await h.app.store.scope_overrides(Scope.dm(881)))["temperature"] == 0.7
        assert len(await h.app.store.history(Scope.dm(881))) == 3
        ok = await h.fake.inject_interaction("knobs set", {"top_k": 5}, dm=True, user=other)
        assert "Set top_k" in (await ok.wait_response()).data["content"]  # type: ignore[index]


async def _history_rows(db: Database) -> list[tuple[Any, ...]]:
    return await db.read("SELECT scope_id, changed_at FROM settings_history ORDER BY id", ())


async def test_history_is_capped_per_scope_and_dropped_by_age(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 1, 1, tzinfo=UTC))
    path = tmp_path / "bot.sqlite3"
    async with await SettingsStore.open(path, clock=clock, history_per_scope=5,
                                        history_retention_days=30) as store:
        for i in range(20):
            await store.set_system_prompt(Scope.dm(7), f"persona {i}", actor_id=7)
        await store.set_knobs(Scope.dm(8), {"top_k": 3}, actor_id=8)
        rows = await _history_rows(store.db)
        assert [r[0] for r in rows].count(7) == 5 and [r[0] for r in rows].count(8) == 1
        assert [c.new_value for c in await store.history(Scope.dm(7))] == [
            f"persona {i}" for i in range(19, 14, -1)
        ]
    # Forty days later, a restarted bot's first write drops what is older than 30 days.
    clock.now += timedelta(days=40)
    async with await SettingsStore.open(path, clock=clock, history_per_scope=5,
                                        history_retention_days=30) as store:
        await store.set_knobs(Scope.dm(9), {"top_k": 4}, actor_id=9)
        rows = await _history_rows(store.db)
        assert [r[0] for r in rows] == [9]


async def test_asks_are_forgotten_in_time_and_private_ones_sooner(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 1, 1, tzinfo=UTC))
    db = await open_database(tmp_path / "bot.sqlite3", clock=clock)
    try:
        log = AskLog(db, retention_days=7)

        def record(private: bool) -> AskRecord:
            return AskRecord(prompt="my secret question", knobs={}, system_prompt=None,
                             guild_id=GUILD, channel_id=GUILD + 10, user_id=5, private=private)

        await log.save(1, record(private=True))
        await log.save(2, record(private=False))
        loaded = await log.load(1)
        assert loaded is not None and loaded.private and loaded.user_id == 5
        clock.now += timedelta(minutes=16)
        assert await log.load(1) is None  # a private prompt lives as long as its reply's token
        assert await log.load(2) is not None
        await log.save(3, record(private=False))
        ids = [r[0] for r in await db.read("SELECT id FROM asks ORDER BY id", ())]
        assert ids == [2, 3]  # and is deleted, not only hidden
        clock.now += timedelta(days=8)
        assert await log.load(2) is None
        assert await log.prune() == 2
        assert await db.read("SELECT id FROM asks", ()) == []
    finally:
        await db.close()


# ---------------------------------------------------------------------------------- settings dump


def dump_with(
    history: list[Any] | None = None, settings: list[Any] | None = None
) -> dict[str, Any]:
    return {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION,
            "settings": settings or [], "history": history or []}


def history_row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "scope_kind": "server", "scope_id": GUILD, "guild_id": GUILD, "key": "top_k",
        "old_value": None, "new_value": "5", "actor_id": 42,
        "changed_at": "2026-01-01T00:00:00.000+00:00",
    }
    row.update(kw)
    return row


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("row", "words"), [
    (history_row(key="k" * 100_000), "unknown setting"),
    (history_row(new_value="x" * 3_000_000), "characters long"),
    (history_row(new_value="not json"), "Expecting value"),
    (history_row(new_value='"text for a number knob"'), "top_k"),
    (history_row(actor_id=0), "actor_id must be a real user id"),
    (history_row(changed_at="2026-01-01T00:00:00"), "no time zone"),
    (history_row(key="system_prompt", new_value='"\\ud800"'), "not valid Unicode"),
    (history_row(key="system_prompt", new_value="\ud800"), "surrogate"),
    (history_row(new_value=nested(100_000)), "characters long"),
    (history_row(new_value=nested(10_000)), "nested too deeply"),
    ("not a row", "not a JSON object"),
    ({"scope_kind": "server"}, "'scope_id' is missing"),
])
def test_history_rows_are_validated_like_settings(row: Any, words: str) -> None:
    with pytest.raises(SettingsError) as info:
        prepare_import(dump_with(history=[row]))
    message = info.value.message
    assert message.startswith("History row 0 of the dump is invalid: ")
    assert words in message, message
    assert "\n" not in message and len(message) < 300


def test_settings_rows_need_a_real_actor_and_an_aware_time() -> None:
    good = {"scope_kind": "server", "scope_id": GUILD, "guild_id": GUILD, "key": "top_k",
            "value": 5, "updated_by": 3, "updated_at": "2026-01-01T00:00:00+02:00"}
    prepared = prepare_import(dump_with(settings=[good]))
    assert prepared.settings[0][-1] == "2025-12-31T22:00:00.000+00:00"
    for bad, words in [({"updated_by": 0}, "real user id"),
                       ({"updated_at": "2026-01-01T00:00:00"}, "no time zone")]:
        with pytest.raises(SettingsError, match=words):
            prepare_import(dump_with(settings=[{**good, **bad}]))


@pytest.mark.slow
def test_a_failed_import_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "new" / "bot.sqlite3"
    env = clean_env(BOT_DATABASE_PATH=str(db))
    cases: list[tuple[bytes, str]] = [
        (json.dumps(dump_with(history=[history_row(actor_id=0)])).encode(), "actor_id"),
        (nested(200_000).encode(), "nested too deeply"),
        (json.dumps(dump_with(history=[history_row(key="system_prompt",
                                                   new_value="\ud800")])).encode(), "surrogate"),
    ]
    for data, words in cases:
        out = bot_cli("--env-file", "/dev/null", "settings", "import", "--shard", "0",
                      "--shard-count", "1", env=env, stdin=data)
        err = out.stderr.decode()
        assert out.returncode == 1, err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
        assert not db.exists() and not db.parent.exists(), "a failed import created files"


# ---------------------------------------------------------------------------- command-line errors


@pytest.mark.slow
def test_cli_ask_errors_are_one_line_with_exit_codes(tiny_model_dir: Path) -> None:
    env = clean_env(BOT_MODEL_DIR=str(tiny_model_dir), BOT_DEVICE="cpu", BOT_CPU_THREADS="1")
    empty = bot_cli("--env-file", "/dev/null", "ask", "  ", env=env)
    assert empty.returncode == 1
    assert empty.stderr.decode() == "error: Ask something: the prompt was empty.\n"
    # The reader leaves after one byte: no traceback, the conventional SIGPIPE status.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", "ask", "Tell me a story",
         "--max-new-tokens", "400", "--min-new-tokens", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.slow
async def test_a_refused_token_is_one_line_and_never_printed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    wrong = "MTE.wrong-token.for-this-test-0123456789"
    async with FakeDiscord(token="the-right-token") as fake:
        env = clean_env(
            DISCORD_TOKEN=wrong, BOT_MODEL_DIR=str(tiny_model_dir), BOT_DEVICE="cpu",
            BOT_CPU_THREADS="1", BOT_DATABASE_PATH=str(tmp_path / "bot.sqlite3"),
            BOT_DISCORD_API_BASE=fake.api_base, BOT_DISCORD_GATEWAY_URL=fake.gateway_url,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", "/dev/null", "run",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = (out + err).decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text and wrong not in text, text
    assert text.strip().splitlines()[-1].startswith("error: Discord refused the token"), text


@pytest.mark.slow
def test_console_says_which_line_was_not_utf8_and_carries_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = clean_env(BOT_MODEL_DIR=str(tiny_model_dir), BOT_DEVICE="cpu", BOT_CPU_THREADS="1",
                  BOT_DATABASE_PATH=str(tmp_path / "bot.sqlite3"),
                  BOT_CONSOLE_HISTORY=str(tmp_path / "history"),
                  PYTHONIOENCODING="utf-8:strict", PYTHONUNBUFFERED="1")
    out = bot_cli("--env-file", "/dev/null", "console", env=env,
                  stdin=b"/knobs set top_k=3\n\xff\xfe/ask hi\n/knobs show\n")
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    assert "error: that line is not valid UTF-8; nothing was run." in text
    assert "Set top_k=3 for this channel." in text
    assert "you> /knobs show" in text and text.rstrip().endswith("bye")


# ------------------------------------------------------------------------- many processes at once


@pytest.mark.slow
def test_many_short_asks_in_subprocesses_never_end_abnormally(tiny_model_dir: Path) -> None:
    """Each run loads the engine, decodes a few tokens and exits; some readers leave early.

    Every process must end by returning from `main` (0, or 141 when its reader
    left), never by a signal: a negative return code is how subprocess reports
    SIGABRT (-6) or SIGSEGV (-11).
    """
    env = clean_env(BOT_MODEL_DIR=str(tiny_model_dir), BOT_DEVICE="cpu", BOT_CPU_THREADS="1",
                  BOT_INTER_THREADS="2")

    def one(i: int) -> tuple[int, int, str]:
        cmd = [sys.executable, "-m", "bot", "--env-file", "/dev/null", "ask", f"story {i}",
               "--max-new-tokens", str(2 + i % 7), "--seed", str(i)]
        if i % 4 == 3:
            proc = subprocess.Popen([*cmd, "--min-new-tokens", "200", "--max-new-tokens", "200"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    cwd=ROOT)
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.read(1)
            proc.stdout.close()
            err = proc.stderr.read().decode()
            return i, proc.wait(timeout=120), err
        done = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, timeout=120,
                              check=False)
        return i, done.returncode, done.stderr.decode()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(24)))
    for i, code, err in results:
        expected = 141 if i % 4 == 3 else 0
        assert code == expected, f"run {i} ended with {code}: {err[-2000:]}"
