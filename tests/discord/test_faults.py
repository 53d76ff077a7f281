"""When Discord, the gateway, the model or the disk misbehaves mid-reply.

Each story ends the same way: the reply is complete, or it ends with a clear
message (and a log line), and the bot answers the next ask. Backoff sleeps
inside discord.py (1 s, 3 s, 5 s… on 5xx) are shortened so the stories take
seconds; the retry logic itself is discord.py's, unchanged.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import discord
import discord.http
import discord.webhook.async_
import pytest

from bot.engine import Engine
from bot.hosting.registry import Waiting
from bot.wording import GENERIC
from testing.backends import Exploding
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import RecordedRequest, Routes
from testing.stories import body, use_script

TEXT = " ".join(f"t{i}" for i in range(40))
# About 2,700 characters in about 550 tokens: the reply needs one follow-up message.
LONG = "the quick brown fox jumps over the lazy dog. " * 60 + "The end."
MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
MANAGE_GUILD = str(discord.Permissions(manage_guild=True, manage_channels=True).value)


async def still_serving(h: Harness) -> None:
    """The next ask (a short scripted one) is answered in full."""
    await h.fake.wait_session(timeout=15)
    use_script(h.app.engine, lambda _p: "still here", 0.002)
    after = await h.ask("and now?", timeout=30)
    assert body(after) == "still here" and "· done" in after.original.content  # type: ignore[union-attr]


def is_footer_edit(req: RecordedRequest) -> bool:
    content = (req.json or {}).get("content") if isinstance(req.json, dict) else None
    return req.method == "PATCH" and req.route == Routes.EDIT_ORIGINAL.split(" ", 1)[1] \
        and isinstance(content, str) and is_final(content)


@pytest.mark.parametrize("global_", [False, True], ids=["per-route", "global"])
async def test_repeated_429s_on_edits(
    smol_model_dir: Path, tmp_path: Path, global_: bool
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.01) as h:
        fault = h.fake.fail_next(Routes.EDIT_ORIGINAL, 429, times=4, retry_after=0.1,
                                 global_=global_)
        itx = await h.ask("go", timeout=30)
        assert fault.hits == 4
        assert itx.original is not None and TEXT in itx.original.content
        assert "· done" in itx.original.content
        # The footer edit itself can be 429'd too, and still lands.
        h.fake.fail_next(is_footer_edit, 429, times=2, retry_after=0.1, global_=global_)
        await still_serving(h)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_on_edits_and_followups_are_retried(
    smol_model_dir: Path, tmp_path: Path, status: int, quick_retries: None
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=LONG, script_delay=0.001) as h:
        edits = h.fake.fail_next(Routes.EDIT_ORIGINAL, status, times=3)
        follow = h.fake.fail_next(Routes.FOLLOWUP, status, times=2)
        itx = await h.ask("long please", max_new_tokens=1024, timeout=60)
        assert edits.hits == 3 and follow.hits == 2
        pages = [itx.original, *itx.followups]
        assert len(pages) == 2
        assert "The end." in pages[-1].content and is_final(pages[-1].content)  # type: ignore[union-attr]
        await still_serving(h)


async def test_final_edit_failing_for_good_ends_with_a_clear_message(
    smol_model_dir: Path, tmp_path: Path, quick_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.01) as h:
        fault = h.fake.fail_next(is_footer_edit, 503, times=5)  # discord.py tries 5 times
        itx = await h.command("ask", {"prompt": "go"})
        notes = await itx.wait_followups(1, timeout=30)
        assert fault.hits == 5
        assert "Discord kept failing (503)" in notes[0].content
        assert "ask again" in notes[0].content
        assert any("could not be delivered" in r.getMessage() for r in caplog.records)
        assert h.app.engine.active == 0 and not h.bot.runner.active
        await still_serving(h)


async def test_followups_failing_for_good_fall_back_to_the_channel(
    smol_model_dir: Path, tmp_path: Path, quick_retries: None
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=LONG, script_delay=0.001) as h:
        h.fake.fail_next(Routes.FOLLOWUP, 502, times=10)  # the page and the note both fail
        itx = await h.command("ask", {"prompt": "long please", "max_new_tokens": 1024})

        def note() -> Any:
            return next((m for m in h.fake.channel_messages(h.general)
                         if "Discord kept failing (502)" in m.content), None)

        await h.fake.wait_for(note, timeout=30)
        assert itx.original is not None and "quick brown fox" in itx.original.content
        h.fake.clear_faults()
        await still_serving(h)


@pytest.mark.parametrize("how", ["404", "ttl"])
async def test_dead_token_continues_long_reply_in_the_channel(
    smol_model_dir: Path, tmp_path: Path, how: str
) -> None:
    """404 Unknown Webhook mid-reply, or the token's age (15 min) reached: the channel takes over.

    The rest of the reply, follow-up pages included, goes out as channel messages.
    """
    async with running_bot(smol_model_dir, tmp_path, scripted=LONG, script_delay=0.004) as h:
        itx = await h.command("ask", {"prompt": "long please", "max_new_tokens": 1024})
        await itx.wait_original(lambda m: "lazy dog" in m.content, timeout=10)
        if how == "404":
            h.fake.fail_next(lambda r: itx.token in r.path, 404, times=1000)
        else:
            h.bot.runner.interaction_ttl_s = 0.0

        def final_in_channel() -> Any:
            return next((m for m in h.fake.channel_messages(h.general) if is_final(m.content)),
                        None)

        last = await h.fake.wait_for(final_in_channel, timeout=60)
        assert "The end." in last.content
        moved = [m for m in h.fake.channel_messages(h.general) if m.webhook_id is None]
        assert len(moved) >= 2  # the page in progress and the overflow page
        sends = h.fake.requests_for(Routes.SEND_MESSAGE)
        assert sends and all(r.json.get("allowed_mentions") == {"parse": []} for r in sends)
        h.fake.clear_faults()
        h.bot.runner.interaction_ttl_s = 15 * 60 - 30
        await still_serving(h)


@pytest.mark.parametrize(
    "event", ["close-4000", "close-4009", "invalidate-resumable", "invalidate-fresh"]
)
async def test_gateway_trouble_mid_reply(smol_model_dir: Path, tmp_path: Path, event: str) -> None:
    """Replies travel over REST, so a gateway hiccup must not touch them; the next ask
    arrives over the resumed (or new) session."""
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.01) as h:
        itx = await h.command("ask", {"prompt": "go"})
        await itx.wait_original(lambda m: "t3" in m.content, timeout=10)
        identifies = h.fake.stats.identifies
        if event == "close-4000":
            await h.fake.close_gateway(4000)
        elif event == "close-4009":
            await h.fake.close_gateway(4009)
        elif event == "invalidate-resumable":
            await h.fake.invalidate_session(resumable=True)
        else:
            await h.fake.invalidate_session(resumable=False)
        await h.finished(itx, timeout=30)
        assert body(itx) == TEXT
        await still_serving(h)
        if event in ("close-4009", "invalidate-fresh"):
            assert h.fake.stats.identifies > identifies  # a new session, not a resume


async def test_model_failing_in_one_batch_leaves_other_replies_running(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """A failure ends the batch it happened in (CTranslate2 fails a call as a whole);
    a reply preempted to give it a turn resumes and finishes."""
    long = " ".join(f"w{i}" for i in range(60))
    async with running_bot(smol_model_dir, tmp_path, scripted="-") as h:
        engine: Engine = h.app.engine
        engine.set_backend(Exploding(
            engine.bundle.tokenizer,
            lambda toks: "boom " * 40 if "EXPLODE" in "".join(toks) else long, 0.01,
        ))
        engine._timeslice_s = 0.3
        from testing.fake_discord import FakeUser

        other = FakeUser(777, "other", "Other")
        steady = await h.command("ask", {"prompt": "steady"})
        await steady.wait_original(lambda m: "w2" in m.content, timeout=10)
        bad = await h.command("ask", {"prompt": "EXPLODE", "temperature": 1.3}, user=other)
        await h.finished(bad, timeout=20)
        assert bad.original is not None and "model failed" in bad.original.content
        assert " · error" in bad.original.content
        await h.finished(steady, timeout=30)
        assert body(steady) == long
        await still_serving(h)


async def test_database_locked_while_saving_a_setting(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.005) as h:
        store = h.app.store
        await store.db._writer.execute("PRAGMA busy_timeout = 200")
        other = sqlite3.connect(store.path, timeout=0.1)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            itx = await h.command("knobs set", {"temperature": 1.5},
                                  permissions=MANAGE_CHANNELS)
            resp = await itx.wait_response()
            assert "the database is busy" in resp.data["content"]
            assert "nothing was changed" in resp.data["content"] and resp.data["flags"] & 64
            # Asks still work while the database is locked (remembering the prompt
            # for Regenerate is best effort).
            await still_serving(h)
        finally:
            other.rollback()
            other.close()
        itx = await h.command("knobs set", {"temperature": 1.5}, permissions=MANAGE_CHANNELS)
        assert "temperature" in (await itx.wait_response()).data["content"]


async def test_disk_full_while_saving_a_setting(smol_model_dir: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.005) as h:
        writer = h.app.store.db._writer
        pages = next(iter(await writer.execute_fetchall("PRAGMA page_count")))[0]
        await writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from here on
        with caplog.at_level(logging.WARNING):
            itx = await h.command("system set", {"text": "You are a pirate. " * 200,
                                                 "scope": "server"}, permissions=MANAGE_GUILD)
            resp = await itx.wait_response()
        assert "the disk is full" in resp.data["content"] and resp.data["flags"] & 64
        assert any("settings write failed" in r.getMessage() for r in caplog.records)
        shown = await h.command("system show")
        data = (await shown.wait_response()).data["embeds"][0]
        assert "pirate" not in data["description"]  # nothing half-saved
        await still_serving(h)
        await writer.execute("PRAGMA max_page_count = 1073741823")
        ok = await h.command("system set", {"text": "You are a pirate.", "scope": "server"},
                             permissions=MANAGE_GUILD)
        assert "set for this server" in (await ok.wait_response()).data["content"]


async def test_reply_ending_while_an_edit_waits_out_the_bucket_still_gets_its_footer(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The edit that empties the bucket holds discord.py's webhook lock until the reset.

    A reply that ends in that moment used to cancel the edit, which leaked the lock:
    the footer (and every later edit of the message) waited for ever.
    """
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.02,
                           enforce_buckets=True, bucket_window=3.0) as h:
        itx = await h.command("ask", {"prompt": "go"})
        await h.finished(itx, timeout=15)
        assert body(itx) == TEXT
        assert h.fake.stats.rate_limited == 0
        await h.fake.wait_for(lambda: not h.bot.runner.active or None, timeout=10)
        await still_serving(h)


async def test_a_failure_after_the_loading_page_leaves_an_apology_not_a_stale_page(
    smol_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ask whose model must load is acknowledged early with a "loading" page; a bug
    after that (not a refusal) ends the page with the apology, once, instead of
    leaving "Loading…" on screen and a second message under it."""
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT) as h:
        chat = h.app.chat

        async def loads_then_breaks(ask: Any, on_wait: Any = None) -> Any:
            assert on_wait is not None
            on_wait(Waiting("smol", "loading", "Loading the model `smol`…"))
            await h.fake.wait_for(lambda: (itx.original is not None and "Loading" in
                                  itx.original.content) or None, timeout=10)
            raise RuntimeError("a bug after the load")

        monkeypatch.setattr(chat, "prepare", loads_then_breaks)
        itx = await h.command("ask", {"prompt": "hello"})
        page = await h.fake.wait_for(
            lambda: (itx.original is not None and GENERIC in itx.original.content
                     and itx.original) or None, timeout=10)
        assert "Loading" not in page.content
        assert not itx.followup_ids  # said once, on the page
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0
