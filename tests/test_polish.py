"""What members see, read as they see it: issue 13's polish items, each as a story.

Replies run through the real client against the fake Discord with a scripted
model (exact text), so every assertion is about a payload a member would read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import discord

from bot.asks import footer
from bot.discord.pages import quote_prompt
from bot.engine import FinishReason, GenerationResult
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FLAG_EPHEMERAL, FakeUser, Routes, StoredMessage

MANAGE_MESSAGES = str(discord.Permissions(manage_messages=True).value)


def buttons(msg: StoredMessage | dict[str, Any]) -> list[str]:
    rows = msg.components if isinstance(msg, StoredMessage) else msg.get("components") or []
    return [c.get("custom_id", "") for row in rows for c in row.get("components", [])]


def result(**kw: Any) -> GenerationResult:
    base: dict[str, Any] = dict(
        text="x", prompt_tokens=5, new_tokens=12, ttft_s=0.1, decode_tok_s=40.07, total_s=0.4,
        finish_reason=FinishReason.END, max_new_tokens=128,
    )
    base.update(kw)
    return GenerationResult(**base)


# --------------------------------------------------------------------------- item 3: footer


def test_footer_words_read_as_sentences() -> None:
    assert footer(result()) == "12 tokens · 40.1 tok/s · done"
    cut = footer(result(new_tokens=128, finish_reason=FinishReason.MAX_TOKENS))
    assert cut == "128 tokens · 40.1 tok/s · cut at the limit of 128 tokens"
    # One token: singular, and no placeholder speed nobody can read.
    assert footer(result(new_tokens=1, decode_tok_s=None)) == "1 token · done"
    clamped = footer(result(new_tokens=40, max_new_tokens=40, clamped_to_context=True,
                            finish_reason=FinishReason.MAX_TOKENS))
    assert clamped.endswith("cut at the limit of 40 tokens · shortened to 40 tokens to fit "
                            "the context")


# --------------------------------------------------------------------------- item 9: the quote


def test_quoted_prompt_is_plain_text_not_markup() -> None:
    quoted = quote_prompt("say **hi** to ||you|| <@123456789012345678> with `code` @everyone")
    assert quoted.startswith("> ")
    body = quoted[2:]
    # Every markup character is escaped; nothing was swapped for a look-alike.
    assert "ˋ" not in body
    assert not re.search(r"(?<!\\)[*|<>@`]", body), body
    assert "\\*\\*hi\\*\\*" in body and "\\<\\@123456789012345678\\>" in body
    # Removing the escapes gives back exactly what was typed.
    assert body.replace("\\", "") == (
        "say **hi** to ||you|| <@123456789012345678> with `code` @everyone"
    )
    # The limit counts what a member sees, before escaping.
    long = quote_prompt("*" * 500)
    assert long.replace("\\", "").endswith("…") and len(long.replace("\\", "")) == 2 + 180


# --------------------------------------------------------------------------- items 1, 4, 6


async def test_private_reply_has_stop_then_regenerate_and_stays_private(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(150))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.01) as h:
        asker = h.guild.members[0]
        itx = await h.command("ask", {"prompt": "secret", "private": True})
        msg = await itx.wait_original(lambda m: "w3" in m.content, timeout=10)
        assert msg.flags & FLAG_EPHEMERAL
        stop_id = next(c for c in buttons(msg) if c.startswith("llm:stop:"))
        await h.finished(itx)
        final = itx.original
        assert final is not None and final.flags & FLAG_EPHEMERAL
        regen_id = next(c for c in buttons(final) if c.startswith("llm:regen:"))
        # A stranger, even a moderator, can't regenerate someone's private ask.
        stranger = FakeUser(515151, "stranger", "Stranger")
        other = await h.fake.inject_component(regen_id, channel_id=h.general, user=stranger,
                                              permissions=MANAGE_MESSAGES)
        resp = await other.wait_response()
        assert resp.data is not None and "Only the person who asked" in resp.data["content"]
        # Its author can, and the new reply is private again.
        again = await h.fake.inject_component(regen_id, channel_id=h.general, user=asker)
        await h.finished(again)
        assert again.response is not None and again.response.type == 5
        assert again.original is not None and again.original.flags & FLAG_EPHEMERAL
        assert stop_id  # the private reply carried Stop while it streamed


async def test_idle_bot_shows_no_queue_line_and_no_trailing_blank_lines(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = "Hello there.\n\n\n\n"
    async with running_bot(smol_model_dir, tmp_path, scripted=text) as h:
        itx = await h.ask("hi")
        edits = h.fake.edits(itx.token)
        assert not any("next in line" in e or "queued" in e for e in edits), edits
        final = itx.original
        assert final is not None
        assert "Hello there.\n-# " in final.content, final.content


async def test_stop_checks_the_running_reply_not_the_button_id(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(300))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.01) as h:
        itx = await h.command("ask", {"prompt": "go"})
        msg = await itx.wait_original(lambda m: "w2" in m.content, timeout=10)
        assert any(c.startswith("llm:stop:") for c in buttons(msg))
        # A forged custom id naming the stranger as the owner proves nothing (the fake
        # posts a message carrying it, as a modified client could make one appear).
        stranger = FakeUser(626262, "stranger", "Stranger")
        forged = f"llm:stop:{itx.id}:{stranger.id}"
        press = await h.fake.inject_component(forged, user=stranger, channel_id=h.general)
        resp = await press.wait_response()
        assert resp.data is not None and "Only the person who asked" in resp.data["content"]
        # A moderator in another channel can't stop it either.
        mod_elsewhere = await h.fake.inject_component(
            forged, user=stranger, channel_id=h.help, permissions=MANAGE_MESSAGES
        )
        resp = await mod_elsewhere.wait_response()
        assert resp.data is not None and "Only the person who asked" in resp.data["content"]
        # A moderator where the reply is can.
        mod = await h.fake.inject_component(forged, user=stranger, channel_id=h.general,
                                            permissions=MANAGE_MESSAGES)
        await mod.wait_response()
        await h.finished(itx)
        assert "stopped" in itx.original.content  # type: ignore[union-attr]


async def test_regenerate_stays_in_its_channel_and_dm_asks_stay_their_authors(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="an answer") as h:
        itx = await h.ask("in help", channel_id=h.help)
        regen_id = next(c for c in buttons(itx.original) if c.startswith("llm:regen:"))  # type: ignore[arg-type]
        moved = await h.fake.inject_component(regen_id, channel_id=h.general)
        resp = await moved.wait_response()
        assert resp.data is not None and "another channel" in resp.data["content"]
        # In DMs: one user's ask can't be regenerated by another.
        alice, bob = FakeUser(717171, "alice"), FakeUser(727272, "bob")
        dm_itx = await h.fake.inject_interaction("ask", {"prompt": "mine"}, dm=True, user=alice)
        await h.finished(dm_itx)
        dm_regen = next(c for c in buttons(dm_itx.original) if c.startswith("llm:regen:"))  # type: ignore[arg-type]
        by_bob = await h.fake.inject_component(dm_regen, dm=True, user=bob,
                                               channel_id=int(dm_itx.payload["channel_id"]))
        resp = await by_bob.wait_response()
        assert resp.data is not None and "Only the person who asked" in resp.data["content"]
        by_alice = await h.fake.inject_component(dm_regen, dm=True, user=alice,
                                                 channel_id=int(dm_itx.payload["channel_id"]))
        await h.finished(by_alice)
        assert "an answer" in by_alice.original.content  # type: ignore[union-attr]


# --------------------------------------------------------------------------- item 5: pages


def _live_stops_over_time(h: Harness, token: str, followup_ids: list[int]) -> list[int]:
    """After each request of this reply, how many of its messages showed a Stop button."""
    has_stop: dict[str, bool] = {}
    posted = 0
    counts: list[int] = []
    for r in h.fake.requests:
        if token not in r.path or not isinstance(r.json, dict):
            continue
        body = r.json
        if r.key == Routes.EDIT_ORIGINAL:
            key = "original"
        elif r.key == Routes.FOLLOWUP:
            key = str(followup_ids[posted])
            posted += 1
        elif r.key == Routes.EDIT_FOLLOWUP:
            key = r.params["message_id"]
        else:
            continue
        if "components" in body:
            has_stop[key] = any(c.startswith("llm:stop:") for c in buttons(body))
        counts.append(sum(has_stop.values()))
    return counts


async def test_page_split_posts_once_and_only_the_live_page_has_stop(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = "\n\n".join(f"paragraph {i} " + "lorem ipsum dolor sit amet " * 12 for i in range(9))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.001) as h:
        itx = await h.ask("long", timeout=60)
        pages = [itx.original, *itx.followups]
        assert len(pages) == 2
        for page in pages:
            assert page is not None
            revs = page.revisions
            same = [i for i in range(1, len(revs)) if revs[i] == revs[i - 1]]
            assert not same, f"message {page.id} was edited to what it already showed"
        counts = _live_stops_over_time(h, itx.token, itx.followup_ids)
        assert counts and max(counts) == 1, counts
        assert is_final(pages[-1].content)  # type: ignore[union-attr]
