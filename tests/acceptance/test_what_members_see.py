"""What members see, read as they see it: each detail of a reply's messages as a story.

Replies run through the real client against the fake Discord with a scripted
model (exact text), so every assertion is about a payload a member would read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import discord

from bot.chat.request import footer
from bot.discord.pages import quote_prompt
from bot.engine import FinishReason, GenerationResult
from bot.store.scopes import Scope
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FLAG_EPHEMERAL, FakeUser, Routes, StoredMessage
from testing.stories import buttons, refused

MANAGE_MESSAGES = str(discord.Permissions(manage_messages=True).value)


def refused_as_not_yours(data: dict[str, Any] | None) -> bool:
    """An ephemeral refusal saying the reply (or its conversation) is its asker's alone."""
    if data is None or not data.get("flags", 0) & FLAG_EPHEMERAL:
        return False
    content = data["content"]
    return "Only the person who asked" in content or "private to the person" in content


def result(**kw: Any) -> GenerationResult:
    base: dict[str, Any] = dict(
        text="x", prompt_tokens=5, new_tokens=12, ttft_s=0.1, decode_tok_s=40.07, total_s=0.4,
        finish_reason=FinishReason.END, max_new_tokens=128,
    )
    base.update(kw)
    return GenerationResult(**base)


# ----------------------------------------------------------------------------------------- footer


def test_footer_words_read_as_sentences() -> None:
    assert footer(result(), operator=True) == "12 tokens · 40.1 tok/s · done"
    cut = footer(result(new_tokens=128, finish_reason=FinishReason.MAX_TOKENS), operator=True)
    assert cut == "128 tokens · 40.1 tok/s · cut at the limit of 128 tokens"
    # One token: singular, and no placeholder speed nobody can read.
    assert footer(result(new_tokens=1, decode_tok_s=None), operator=True) == "1 token · done"
    clamped = footer(result(new_tokens=40, max_new_tokens=40, clamped_to_context=True,
                            finish_reason=FinishReason.MAX_TOKENS), operator=True)
    assert clamped.endswith("cut at the limit of 40 tokens · shortened to 40 tokens to fit "
                            "the context")


# -------------------------------------------------------------------------------------- the quote


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


# -------------------------------------------------------------- private replies and their buttons


async def test_private_reply_has_stop_then_regenerate_and_stays_private(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(60))
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
        assert refused_as_not_yours(await refused(other))
        # Its author can, on the reply itself, and the new reply is private again.
        again = await h.fake.inject_component(regen_id, message_id=final.id, user=asker)
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
        assert "another channel" in (await refused(moved))["content"]
        # In DMs: one user's ask can't be regenerated by another.
        alice, bob = FakeUser(717171, "alice"), FakeUser(727272, "bob")
        dm_itx = await h.fake.inject_interaction("ask", {"prompt": "mine"}, dm=True, user=alice)
        await h.finished(dm_itx)
        dm_regen = next(c for c in buttons(dm_itx.original) if c.startswith("llm:regen:"))  # type: ignore[arg-type]
        by_bob = await h.fake.inject_component(dm_regen, dm=True, user=bob,
                                               channel_id=int(dm_itx.payload["channel_id"]))
        assert refused_as_not_yours(await refused(by_bob))
        by_alice = await h.fake.inject_component(dm_regen, dm=True, user=alice,
                                                 channel_id=int(dm_itx.payload["channel_id"]))
        await h.finished(by_alice)
        assert "an answer" in by_alice.original.content  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ pages


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


# ----------------------------------------------------------------- commands as Discord lists them


def _synced(h: Harness) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in h.fake.commands.get(None, [])}


async def test_commands_sync_with_real_descriptions_and_who_may_use_them(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        synced = _synced(h)
        knobs_set = next(o for o in synced["knobs"]["options"] if o["name"] == "set")
        for option in knobs_set["options"]:
            assert option["description"] not in ("…", ""), option
        temperature = next(o for o in knobs_set["options"] if o["name"] == "temperature")
        assert "0.1 to 5" in temperature["description"]
        ask_top_k = next(o for o in synced["ask"]["options"] if o["name"] == "top_k")
        assert "no limit" in ask_top_k["description"]
        # Write commands are offered to managers only; reading is everyone's /settings.
        manage_channels = str(discord.Permissions(manage_channels=True).value)
        assert str(synced["knobs"]["default_member_permissions"]) == manage_channels
        assert str(synced["system"]["default_member_permissions"]) == manage_channels
        assert synced["settings"]["default_member_permissions"] is None
        # /status needs a server's permission, so it is a server command only.
        assert synced["status"]["contexts"] == [0]


# ------------------------------------------------------------------------- permissions and places

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
MANAGE_GUILD = str(discord.Permissions(manage_guild=True, manage_channels=True).value)
MANAGE_THREADS = str(discord.Permissions(manage_threads=True).value)


async def test_settings_read_in_words_and_persona_is_shown_whole(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.command("knobs show")
        fields = {f["name"]: f["value"] for f in
                  (await itx.wait_response()).data["embeds"][0]["fields"]}  # type: ignore[index]
        assert fields["top_k"].startswith("`no limit`")
        assert fields["min_new_tokens"].startswith("`off`")
        assert fields["repetition_penalty"].startswith("`off`")
        assert fields["stop"].startswith("`none`")
        long_persona = "You are a careful assistant. " * 110  # 3,190 characters
        ok = await h.command("system set", {"text": long_persona.strip(), "scope": "server"},
                             permissions=MANAGE_GUILD)
        await ok.wait_response()
        shown = await h.command("system show")
        embed = (await shown.wait_response()).data["embeds"][0]  # type: ignore[index]
        assert embed["description"] == long_persona.strip()
        # Everyone's /settings: the persona, where it comes from, and the knobs.
        everyone = await h.command("settings")
        embeds = (await everyone.wait_response()).data["embeds"]  # type: ignore[index]
        assert "from this server" in embeds[0]["description"]  # no raw labels
        assert long_persona.strip() in embeds[0]["description"]
        assert any(f["name"] == "temperature" for f in embeds[1]["fields"])


def _modal_input(modal: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    row = modal["components"][0]
    text_input = row.get("component") or row["components"][0]
    return modal["custom_id"], text_input


async def test_system_edit_prefills_the_inherited_persona_and_rechecks_on_submit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        await h.app.store.set_system_prompt(Scope.server(h.guild.id), "You are a pirate.",
                                            actor_id=1)
        opened = await h.command("system edit", {"scope": "channel"}, permissions=MANAGE_CHANNELS)
        await opened.wait_response()
        assert opened.modal is not None
        custom_id, text_input = _modal_input(opened.modal)
        assert text_input["value"] == "You are a pirate."
        assert "this server" in text_input["label"]
        # The member lost Manage Channels while the box was open: the submit is refused.
        late = await h.fake.inject_modal_submit(
            custom_id, {text_input["custom_id"]: "Be rude."}, channel_id=h.general,
        )
        resp = await late.wait_response()
        assert resp.data is not None and "Manage Channels" in resp.data["content"]
        own = await h.app.store.scope_overrides(Scope.channel(h.general, h.guild.id))
        assert "system_prompt" not in own


async def test_manage_threads_alone_cannot_change_a_thread(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.command("knobs set", {"temperature": 1.2}, channel_id=h.thread,
                              permissions=MANAGE_THREADS)
        resp = await itx.wait_response()
        assert resp.data is not None and "Manage Channels" in resp.data["content"]
        ok = await h.command("knobs set", {"temperature": 1.2}, channel_id=h.thread,
                             permissions=MANAGE_CHANNELS)
        assert "Set temperature" in (await ok.wait_response()).data["content"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------- /tokens


async def test_tokens_shows_byte_pieces_privately_unless_asked(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path) as h:
        itx = await h.command("tokens", {"text": "Hi 😀🦜"})
        data = (await itx.wait_response()).data
        assert data is not None and data["flags"] & FLAG_EPHEMERAL
        content = data["content"]
        count = int(re.search(r"\*\*(\d+) tokens\*\*", content)[1])  # type: ignore[index]
        block = content.split("```ansi\n", 1)[1].rsplit("\n```", 1)[0]
        visible = [p for p in re.split(r"\x1b\[0;3\dm", block.removesuffix("\x1b[0m")) if p]
        assert len(visible) == count, visible
        assert "<0xF0>" in block
        public = await h.command("tokens", {"text": "Hi", "public": True})
        data = (await public.wait_response()).data
        assert data is not None and not data.get("flags", 0) & FLAG_EPHEMERAL


async def test_knob_errors_read_as_sentences(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        bad = await h.command("knobs set", {"stop": "a|b|c|d|e"}, permissions=MANAGE_CHANNELS)
        content = (await bad.wait_response()).data["content"]  # type: ignore[index]
        assert content == "⚠️ `stop` takes up to 4 sequences, not 5."


# ------------------------------------------------------------------------------ the Discord bench


def test_discord_bench_streams_long_enough_for_its_figures() -> None:
    from bench.discord_bench import STREAM_MAX_TOKENS, STREAM_TEXT_EDITS, stream_tokens

    # The case that printed "stream_ratio": null: ~63 tok/s, 1.25 s between edits.
    tokens = stream_tokens(63.0, 1.25, at_least=128)
    assert tokens / 63.0 >= 1.25 * (STREAM_TEXT_EDITS + 1)
    assert stream_tokens(63.0, 1.25, at_least=900) == 900  # --new-tokens is a floor
    assert stream_tokens(5000.0, 1.25, at_least=128) == STREAM_MAX_TOKENS
    assert stream_tokens(None, 1.25, at_least=128) >= 2 * 128


# --------------------------------------------------------------------------- the asker's slot


async def test_the_asker_may_ask_again_as_soon_as_the_footer_is_sent(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The slot is freed before the footer edit, not after discord.py returns from it.

    discord.py can sleep out a drained edit bucket after an edit is applied, so
    the footer is on screen while the reply's task still runs; an ask made on
    seeing it was refused as "already in progress". Here the footer edit is held
    by the fake (before it is applied): the slot must already be free.
    """
    async with running_bot(smol_model_dir, tmp_path, scripted="all done here") as h:
        asker = h.guild.members[0]

        def footer_edit(r: Any) -> bool:
            return r.key == Routes.EDIT_ORIGINAL and "· done" in str((r.json or {}).get("content"))

        h.fake.delay(footer_edit, 1.0, times=1)
        itx = await h.command("ask", {"prompt": "first"}, user=asker)
        await h.fake.wait_for(lambda: h.fake.requests_for(footer_edit) or None, timeout=30)
        assert h.bot.runner.gate.active(asker.id) == 0
        again = await h.command("ask", {"prompt": "second"}, user=asker)
        await h.finished(again)
        await h.finished(itx)
        assert "all done here" in again.original.content  # type: ignore[union-attr]


async def test_a_moderator_stops_a_mention_reply_in_its_channel(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """Stop checks the running reply's channel for moderators: the mention path records it."""
    text = " ".join(f"w{i}" for i in range(300))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.01) as h:
        await h.fake.inject_message("tell me things", mention_bot=True, channel_id=h.general)

        def streaming() -> StoredMessage | None:
            return next((m for m in h.fake.channel_messages(h.general)
                         if "w3" in m.content and any(
                             c.startswith("llm:stop:") for c in buttons(m))), None)

        msg = await h.fake.wait_for(streaming, timeout=20)
        stop_id = next(c for c in buttons(msg) if c.startswith("llm:stop:"))
        mod = FakeUser(939393, "mod", "Mod")
        press = await h.fake.inject_component(stop_id, message_id=msg.id, user=mod,
                                              channel_id=h.general, permissions=MANAGE_MESSAGES)
        await press.wait_response()
        await h.fake.wait_for(lambda: " · stopped" in h.fake.message(msg.id).content or None,
                              timeout=20)
