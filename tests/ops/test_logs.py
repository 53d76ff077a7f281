"""Logs: the token never leaks, and journald gets a priority on every line.

The end-to-end test runs the real bot process through the things that make
libraries print what they hold (HTTP 500 and 429 retries, a refused edit with its
traceback, bad input, a missing permission, SIGTERM) at DEBUG level, then searches
everything that left the process for the token: its output, every request and
gateway frame the fake Discord received, the messages members would read, and the
database on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.logs import REDACT, register_secret, setup_logging, stderr_is_journal
from testing.bot_process import FAKE_TOKEN, GRACE_S, bot_process
from testing.discord_harness import is_final
from testing.fake_discord import FakeDiscord, RecordedRequest, Routes

PRIORITY_LINE = re.compile(r"^<[0-7]>")


def _is_final_edit(req: RecordedRequest) -> bool:
    """The edit that carries a reply's footer: failing it loses the reply (logged as an error)."""
    body = req.json if isinstance(req.json, dict) else {}
    return (req.method == "PATCH" and req.path.endswith("/messages/@original")
            and is_final(str(body.get("content", ""))))


def _what_the_fake_saw(fake: FakeDiscord) -> list[str]:
    """Everything the bot sent out, except where Discord must receive the token.

    The token is the REST `Authorization` header and the gateway IDENTIFY/RESUME
    `token` field by design; those two places are checked to hold it (so the scan is
    not vacuous) and left out of the scan.
    """
    seen: list[str] = []
    authorized = 0
    for req in fake.requests:
        headers = dict(req.headers)
        auth = headers.pop("Authorization", None)
        if auth is not None:
            assert auth == f"Bot {FAKE_TOKEN}"
            authorized += 1
        seen.append(json.dumps([req.method, req.path, req.query, headers, req.json, req.files],
                               default=str))
    assert authorized > 0
    identified = 0
    for frame in fake.gateway_received:
        frame = json.loads(json.dumps(frame))
        data = frame.get("d")
        if frame.get("op") in (2, 6) and isinstance(data, dict):
            identified += data.pop("token", None) == FAKE_TOKEN
        seen.append(json.dumps(frame))
    assert identified > 0
    for msg in fake.messages.values():
        seen.append(json.dumps([msg.to_payload(), msg.revisions]))
    for itx in fake.interactions.values():
        seen.extend(json.dumps([c.type, c.data]) for c in itx.callbacks)
    return seen


def _files_holding(folder: Path, pattern: str, secret: str) -> list[Path]:
    """Files (the database, its WAL) whose bytes contain `secret`."""
    return [p for p in folder.glob(pattern) if secret.encode() in p.read_bytes()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value from the bot's /metrics on 127.0.0.1."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


async def _scrape_until(port: int, expected: dict[str, float], timeout: float = 5.0) -> None:  # noqa: ASYNC109 - reads better in tests
    """Scrape (off the event loop, so the fake keeps serving) until `expected` holds.

    The bot counts an ask after Discord answers its last edit, a moment after the
    fake has recorded that edit, so a single scrape could run a little early.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(_scrape, port)
        seen = {key: got.get(key, 0.0) for key in expected}
        if seen == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics {seen} != {expected}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_troubled_run_never_shows_the_token_and_speaks_journald(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    async with FakeDiscord() as fake, bot_process(
        fake, tiny_model_dir, tmp_path, journal=True,
        env={"BOT_LOG_LEVEL": "DEBUG", "BOT_METRICS_PORT": str(port)},
    ) as bot:
        # discord.py retries a 500 after 1 s and waits out a 429: the reply still arrives.
        server_error = fake.fail_next(Routes.EDIT_ORIGINAL, 500)
        rate_limit = fake.fail_next(Routes.EDIT_ORIGINAL, 429, retry_after=0.1)
        ok = await fake.inject_interaction(
            "ask", {"prompt": "hello there", "min_new_tokens": 40, "max_new_tokens": 40})
        await ok.wait_original(lambda m: is_final(m.content), timeout=30)
        assert server_error.hits == 1 and rate_limit.hits == 1

        bad_knob = await fake.inject_interaction(
            "ask", {"prompt": "hi", "min_new_tokens": 50, "max_new_tokens": 10})
        resp = await bad_knob.wait_response()
        assert "cannot be above" in resp.data["content"] and resp.data["flags"] & 64

        refused = await fake.inject_interaction("knobs set", {"temperature": 1.5})
        resp = await refused.wait_response()
        assert "Manage Channels" in resp.data["content"] and resp.data["flags"] & 64

        # A final edit Discord refuses: the reply is lost and the bot logs a traceback.
        forbidden = fake.fail_next(_is_final_edit, 403)
        lost = await fake.inject_interaction(
            "ask", {"prompt": "again", "min_new_tokens": 20, "max_new_tokens": 20})
        await fake.wait_for(lambda: forbidden.hits or None, timeout=30)
        await fake.wait_for(lambda: "could not be delivered" in bot.output or None, timeout=5)
        assert lost.original is not None

        # BOT_METRICS_PORT wired the same troubles into /metrics.
        await _scrape_until(port, {
            'llamacord_asks_total{"outcome": "ok"}': 1,
            'llamacord_asks_total{"outcome": "refused"}': 1,
            "llamacord_discord_http_429_total{}": 1,
            'llamacord_errors_total{"kind": "discord"}': 1,  # the lost reply
            "llamacord_tokens_generated_total{}": 60,
        })

        code, _ = await bot.stop(timeout=GRACE_S + 10)
        assert code == 0, bot.output

    output = bot.output
    # The failures really were logged (or the scan below proves little).
    assert "rate limited" in output and "could not be delivered" in output
    assert "Traceback" in output and "Forbidden" in output
    assert "stopped cleanly" in output

    assert FAKE_TOKEN not in output
    for text in _what_the_fake_saw(fake):
        assert FAKE_TOKEN not in text, text[:300]
    assert not _files_holding(tmp_path, "bot.sqlite3*", FAKE_TOKEN)

    # journald: every line (traceback lines too) carries a syslog priority.
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert lines
    unprefixed = [ln for ln in lines if not PRIORITY_LINE.match(ln)]
    assert not unprefixed, unprefixed[:10]
    assert any(ln.startswith("<3>") for ln in lines)  # the lost reply, an error
    assert any(ln.startswith("<4>") and "rate limited" in ln for ln in lines)
    assert any(ln.startswith("<6>") for ln in lines)
    traceback_lines = [ln for ln in lines if "Traceback (most recent call last)" in ln]
    assert traceback_lines and all(ln.startswith("<3>") for ln in traceback_lines)
    # DEBUG is for the bot's own loggers: no SQL with members' prompts in the journal.
    assert "<7>DEBUG " in output and "hello there" not in output


# ----------------------------------------------------------------- in-process units


@pytest.fixture
def logging_state() -> Iterator[None]:
    """`setup_logging` rewires the root logger: put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    discord_level = logging.getLogger("discord").level
    aiosqlite_level = logging.getLogger("aiosqlite").level
    secrets = set(REDACT.secrets)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("discord").setLevel(discord_level)
        logging.getLogger("aiosqlite").setLevel(aiosqlite_level)
        REDACT.secrets.clear()
        REDACT.secrets.update(secrets)


def _raise_with(secret: str) -> None:
    raise discord.LoginFailure(f"bad credentials {secret}")


@pytest.mark.usefixtures("logging_state")
def test_the_token_is_masked_in_messages_arguments_and_tracebacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("DEBUG")
    register_secret(FAKE_TOKEN)
    log = logging.getLogger("bot.test")
    log.info("token is %s", FAKE_TOKEN)
    log.warning(f"inline {FAKE_TOKEN}")  # a library might do exactly this
    logging.getLogger("discord.http").info("header Bot %s", FAKE_TOKEN)
    try:
        _raise_with(FAKE_TOKEN)
    except discord.LoginFailure:
        log.exception("login failed")
    err = capsys.readouterr().err
    assert FAKE_TOKEN not in err
    assert err.count("***") == 4  # three messages and the exception's line in the traceback
    assert "login failed" in err and "LoginFailure" in err


@pytest.mark.usefixtures("logging_state")
def test_journal_format_only_when_stderr_is_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w") as journal:
        st = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(env, journal)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, journal)
        assert not stderr_is_journal({}, journal)
        assert not stderr_is_journal({"JOURNAL_STREAM": "nonsense"}, journal)

        monkeypatch.setattr(sys, "stderr", journal)
        monkeypatch.setenv("JOURNAL_STREAM", env["JOURNAL_STREAM"])
        setup_logging("INFO")
        log = logging.getLogger("bot.test")
        log.info("hello")
        log.warning("two\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        logging.getLogger().handlers[0].flush()
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0] == "<6>INFO bot.test: hello"
    assert lines[1:3] == ["<4>WARNING bot.test: two", "<4>lines"]
    assert lines[3] == "<3>ERROR bot.test: failed"
    assert len(lines) > 5 and all(ln.startswith("<3>") for ln in lines[3:])
    assert lines[-1] == "<3>ValueError: boom"


@pytest.mark.usefixtures("logging_state")
def test_quiet_logs_still_count_rate_limits_and_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BOT_LOG_LEVEL=ERROR hides discord.py's 429 warnings, not the metric built on them."""
    from bot.ops.metrics import LogCounter, Metrics

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("ERROR")
    metrics = Metrics(process_metrics=False)
    logging.getLogger().addHandler(LogCounter(metrics))
    http = logging.getLogger("discord.http")
    http.warning("We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
                 "PATCH", "https://discord.com/api/v10/x", 0.5)
    logging.getLogger("discord.webhook.async_").warning(
        "Webhook ID %s is rate limited. Retrying in %.2f seconds.", 1, 0.5)
    http.warning("Global rate limit has been hit. Retrying in %.2f seconds.", 0.5)  # same 429
    logging.getLogger("bot.engine").info("not an error")
    logging.getLogger("bot.engine").error("decoding failed")
    logging.getLogger("bot.discord.reply").error("reply could not be delivered")
    logging.getLogger("somewhere.else").critical("odd")
    text = metrics.render().decode()
    assert "llamacord_discord_http_429_total 2.0" in text
    assert 'llamacord_errors_total{kind="engine"} 1.0' in text
    assert 'llamacord_errors_total{kind="discord"} 1.0' in text
    assert 'llamacord_errors_total{kind="other"} 1.0' in text
    err = capsys.readouterr().err
    assert "rate limited" not in err and "not an error" not in err
    assert "decoding failed" in err
