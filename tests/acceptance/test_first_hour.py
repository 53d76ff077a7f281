"""A member's and an admin's first hour with the bot, as stories.

The real discord.py
client against the fake Discord, a real SQLite file, a real (tiny or
embedded) CTranslate2 model; the model is scripted where a test needs exact
output.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import discord

from bot import wording
from bot.chat.request import Cap, footer
from bot.engine import FinishReason, GenerationResult
from bot.knobs import Knobs
from bot.limits import AskGate
from bot.model.tokenizer import load_tokenizer
from bot.store.scopes import Scope
from bot.wording import HELP, JOINED
from testing.discord_harness import Harness, running_bot
from testing.fake_discord import (
    FLAG_EPHEMERAL,
    FakeInteraction,
    FakeUser,
    Routes,
    StoredMessage,
    default_guild,
)
from testing.stories import buttons

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
MANAGE_GUILD = str(discord.Permissions(manage_guild=True, manage_channels=True).value)
CAROL = FakeUser((1 << 22) * 1000 + 91, "carol", "Carol")


def result(**kw: Any) -> GenerationResult:
    base: dict[str, Any] = dict(
        text="an answer", prompt_tokens=5, new_tokens=12, ttft_s=0.1, decode_tok_s=40.07,
        total_s=0.4, finish_reason=FinishReason.END, max_new_tokens=512,
    )
    base.update(kw)
    return GenerationResult(**base)


def final(itx: FakeInteraction) -> StoredMessage:
    msgs = [m for m in [itx.original, *itx.followups] if m is not None]
    return msgs[-1]


def command_json(h: Harness, name: str) -> dict[str, Any]:
    for cmds in h.fake.commands.values():
        for cmd in cmds:
            if cmd["name"] == name:
                return cmd
    raise KeyError(name)


async def content(itx: FakeInteraction) -> str:
    resp = await itx.wait_response()
    assert resp.data is not None
    return str(resp.data.get("content", ""))


# ----------------------------------------------------------------------------------- reply length


def test_default_lets_an_everyday_answer_finish_and_a_cut_says_how_to_get_more() -> None:
    # Measured by `python -m bench --finish`: 35% of everyday answers end on their own
    # at 128 tokens, 85% at 512 (median 222 tokens).
    assert Knobs().max_new_tokens == 512
    cut = footer(result(new_tokens=512, finish_reason=FinishReason.MAX_TOKENS),
                 cap=Cap("channel", 1024))
    assert "cut at the limit of 512 tokens" in cut
    assert "ask with a larger max_new_tokens" in cut
    # At the scope's own cap a larger per-ask value can't help: say what can.
    at_cap = footer(result(new_tokens=512, finish_reason=FinishReason.MAX_TOKENS),
                    cap=Cap("default", 512))
    assert "/knobs set max_new_tokens" in at_cap


# -------------------------------------------------------------------------------- the per-ask cap


async def test_a_per_ask_length_above_the_cap_is_said_not_cut_silently(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        await h.app.store.set_knobs(Scope.channel(h.general, h.guild.id),
                                    {"max_new_tokens": 8}, actor_id=1)
        itx = await h.ask("hi", max_new_tokens=500, min_new_tokens=500)
        text = final(itx).content
        assert "capped at this channel's 8 (you asked 500)" in text, text
        option = next(o for o in command_json(h, "ask")["options"]
                      if o["name"] == "max_new_tokens")
        assert "limit" in option["description"] and "channel" in option["description"]


# ------------------------------------------------------------------------------------------- help


async def test_help_on_discord_and_at_mention_help_is_not_sent_to_the_model(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    calls: list[int] = []

    def model(_tokens: list[str]) -> str:
        calls.append(1)
        return "model text"

    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        itx = await h.command("help")
        resp = await itx.wait_response()
        assert resp.data is not None and resp.data["flags"] & FLAG_EPHEMERAL
        assert "/ask" in resp.data["content"] and "checklist" in resp.data["content"]
        await h.fake.inject_message("help", mention_bot=True, channel_id=h.general)
        said = await h.fake.wait_for(lambda: next(
            (m for m in h.fake.channel_messages(h.general) if "Admins' checklist" in m.content),
            None), timeout=10)
        assert said.content == HELP
        assert calls == []  # the model never saw it


# --------------------------------------------------------------------------------- the first text


async def test_the_first_text_is_not_held_back_by_a_status_edit(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"word{i}" for i in range(40))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02,
                           edit_interval_s=1.0) as h:
        itx = await h.ask("Tell me words")
        edits = [r.json.get("content", "") for r in h.fake.requests_for(Routes.EDIT_ORIGINAL)
                 if itx.token in r.path and r.json]
        # The first edit of the deferred answer carries text, not "thinking…".
        assert edits and edits[0].split("\n")[1].startswith("word"), edits
        assert not any("thinking" in e for e in edits), edits


# ----------------------------------------------------------------------------- the settings limit


async def test_only_real_changes_count_against_the_settings_limit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, settings_write_limit=2,
                           settings_write_window_s=3600) as h:
        for _ in range(3):  # opening the edit box changes nothing
            opened = await h.command("system edit", permissions=MANAGE_CHANNELS)
            assert (await opened.wait_response()).type == 9
        for _ in range(3):  # resets that find nothing to reset change nothing
            reset = await h.command("knobs reset", permissions=MANAGE_CHANNELS)
            assert "Nothing to reset" in await content(reset)
        for value in (0.3, 0.4):
            ok = await h.command("knobs set", {"temperature": value},
                                 permissions=MANAGE_CHANNELS)
            assert "Set temperature" in await content(ok)
        refused = await h.command("knobs set", {"temperature": 0.5},
                                  permissions=MANAGE_CHANNELS)
        said = await content(refused)
        assert "too quickly" in said and re.search(r"<t:\d+:R>", said), said


# -------------------------------------------------------------------------- boxes after a restart


async def test_reply_and_persona_boxes_submitted_after_a_restart_are_answered(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="first answer") as h:
        itx = await h.ask("a question", max_new_tokens=20)
        reply_id = next(c for c in buttons(final(itx)) if c.startswith("llm:reply:"))
        press = await h.fake.inject_component(reply_id, channel_id=h.general)
        box = (await press.wait_response()).data
        assert box is not None
        opened = await h.command("system edit", permissions=MANAGE_CHANNELS)
        persona_box = (await opened.wait_response()).data
        assert persona_box is not None
    # A new process: same database, new client; both boxes were open across it.
    async with running_bot(smol_model_dir, tmp_path, scripted="after the restart") as h2:
        submit = await h2.fake.inject_modal_submit(box["custom_id"], {"text": "and then?"},
                                                   channel_id=h2.general)
        await h2.finished(submit)
        assert "after the restart" in final(submit).content
        saved = await h2.fake.inject_modal_submit(
            persona_box["custom_id"], {"text": "Be kind."}, channel_id=h2.general,
            permissions=MANAGE_CHANNELS)
        assert "Persona saved" in await content(saved)
        own = await h2.app.store.scope_overrides(Scope.channel(h2.general, h2.guild.id))
        assert own["system_prompt"] == "Be kind."
        # Still checked again: without the permission the box saves nothing.
        late = await h2.fake.inject_modal_submit(
            persona_box["custom_id"], {"text": "Be rude."}, channel_id=h2.general)
        assert "Manage Channels" in await content(late)


# ---------------------------------------------------------------------------------------- wording


def test_one_table_of_words_follows_its_rules() -> None:
    strings = [*wording.ALL_FIXED, wording.queued(1), wording.cut_at(1), wording.cut_at(5),
               wording.capped("thread", 8, 500), wording.shortened(1), wording.left_out(1),
               wording.busy(1), wording.busy(3), wording.slow_down(1.2),
               wording.settings_too_fast(1_700_000_000), wording.persona_saved("this thread"),
               wording.persona_not_set("this thread"), wording.plural(1, "request")]
    for s in strings:
        assert not re.search(r"(?<![\d,])1 \w+s\b", s), s  # no "1 requests"
        assert "system prompt" not in s.lower(), s  # members read "persona"
    assert wording.busy(1).startswith("I'm busy: 1 request is already")
    assert wording.plural(2048, "token") == "2,048 tokens"
    assert wording.warning("careful") == "⚠️ careful" == wording.warning("⚠️ careful")
    # One set of waiting words, each a small status line.
    assert all(w.startswith("-# ") for w in wording.WAITING)
    assert wording.place_word("channel", in_thread=True) == "this thread"
    assert wording.source_label("dm") == "your DMs"


async def test_inside_a_thread_it_says_this_thread_and_sources_read_as_words(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        done = await h.command("knobs set", {"temperature": 0.3}, channel_id=h.thread,
                               permissions=MANAGE_CHANNELS)
        said = await content(done)
        assert "for this thread" in said and "this channel" not in said, said
        shown = await h.command("knobs show", channel_id=h.thread)
        resp = await shown.wait_response()
        assert resp.data is not None
        fields = {f["name"]: f["value"] for f in resp.data["embeds"][0]["fields"]}
        assert "this thread" in fields["temperature"] and "default" in fields["top_p"]
        persona = await h.command("system set", {"text": "Be brief."}, channel_id=h.thread,
                                  permissions=MANAGE_CHANNELS)
        assert await content(persona) == "Persona set for this thread."


# ------------------------------------------------------------------------------- DM conversations


async def test_a_dm_conversation_can_be_seen_and_forgotten(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    user = FakeUser(4243, "dmer", "Dee")
    dm_channel = user.id + 7
    tokenizer = await asyncio.to_thread(load_tokenizer, smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted="An answer.") as h:
        for n, text in enumerate(("hello there", "tell me more"), start=1):
            await h.fake.inject_message(text, dm=True, user=user)
            await h.fake.wait_for(lambda n=n: len([
                m for m in h.fake.channel_messages(dm_channel) if " · done" in m.content
            ]) >= n or None, timeout=20)
        shown = await h.command("conversation show", dm=True, user=user, channel_id=dm_channel)
        resp = await shown.wait_response()
        assert resp.data is not None and resp.data["flags"] & FLAG_EPHEMERAL
        listing = resp.data["content"]
        assert listing.startswith("**4 turns**"), listing
        hello = len(tokenizer.encode("hello there"))
        assert f"Dee ({wording.plural(hello, 'token')}): hello there" in listing, listing
        gone = await h.command("conversation forget", dm=True, user=user, channel_id=dm_channel)
        assert "Forgot 4 turns" in await content(gone)
        rows = await h.app.store.db.read("SELECT COUNT(*) FROM turns WHERE author_id = ?",
                                         (user.id,))
        assert rows[0][0] == 0
        again = await h.command("conversation show", dm=True, user=user, channel_id=dm_channel)
        assert await content(again) == "No conversation here yet."


# ------------------------------------------------------------------------------------- the footer


def test_the_footer_says_only_what_tells_the_member_something() -> None:
    plain = footer(result())
    assert plain == "12 tokens · done"  # no tok/s: /status has the speed
    # Shortened to fit, but the answer ended on its own well before: nothing to say.
    quiet = footer(result(clamped_to_context=True, max_new_tokens=40))
    assert "shortened" not in quiet
    cut = footer(result(new_tokens=40, max_new_tokens=40, clamped_to_context=True,
                        finish_reason=FinishReason.MAX_TOKENS))
    assert "shortened to 40 tokens to fit the context" in cut


# ------------------------------------------------------------------- regenerate by another member


async def test_regenerate_by_another_member_keeps_the_askers_name(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = await asyncio.to_thread(load_tokenizer, smol_model_dir)
    prompts: list[str] = []

    def model(tokens: list[str]) -> str:
        ids = [tokenizer.token_to_id(t) for t in tokens]
        prompts.append(tokenizer.decode([i for i in ids if i is not None]))
        return "An answer."

    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        asker = h.guild.members[0]
        itx = await h.ask("what is a llama?")
        regen = next(c for c in buttons(final(itx)) if c.startswith("llm:regen:"))
        press = await h.fake.inject_component(regen, channel_id=h.general, user=CAROL)
        await h.finished(press)
        # One person asked: the question carries no name, and never the presser's.
        assert "\nwhat is a llama?" in prompts[-1]
        assert f"{asker.global_name or asker.username}:" not in prompts[-1]
        assert "Carol" not in prompts[-1]


async def test_an_empty_reply_says_so_and_offers_regenerate(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="") as h:
        itx = await h.ask("say nothing")
        msg = final(itx)
        assert "the model returned no text" in msg.content, msg.content
        assert any(c.startswith("llm:regen:") for c in buttons(msg))


# --------------------------------------------------------------------------------------- cooldown


async def test_a_refused_ask_starts_no_cooldown() -> None:
    gate = AskGate(1, cooldown_s=60.0)
    try:
        with await gate.take(5):
            raise ValueError("the prompt was too long")
    except ValueError:
        pass
    gate.check(5)  # not "Slow down": nothing was asked
    with await gate.take(5):
        gate.accepted(5)
    try:
        gate.check(5)
    except Exception as exc:
        assert "Slow down" in str(exc)
    else:
        raise AssertionError("an accepted ask starts the cooldown")


async def test_a_too_long_prompt_does_not_make_the_asker_wait(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, user_cooldown_s=600) as h:
        long = await h.command("ask", {"prompt": "word " * 800})
        assert "too long" in (await content(long)).lower() or "tokens long" in await content(long)
        ok = await h.ask("hi", max_new_tokens=3)
        assert ok.original is not None and "3 tokens" in ok.original.content


# ---------------------------------------------------------------------------------- scope choices


async def test_scope_choices_read_right_in_threads_and_dms_have_a_persona(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    user = FakeUser(4244, "dmer2", "Dana")
    async with running_bot(tiny_model_dir, tmp_path) as h:
        knobs = command_json(h, "knobs")
        set_ = next(o for o in knobs["options"] if o["name"] == "set")
        scope = next(o for o in set_["options"] if o["name"] == "scope")
        assert [c["name"] for c in scope["choices"]] == ["This channel or thread",
                                                         "Whole server"]
        assert [c["value"] for c in scope["choices"]] == ["channel", "server"]
        system = command_json(h, "system")
        assert system.get("dm_permission", True) is not False
        assert system.get("contexts") is None or 1 in system["contexts"]
        done = await h.command("system set", {"text": "Talk like a pirate."}, dm=True,
                               user=user, channel_id=user.id + 7)
        assert await content(done) == "Persona set for your DMs."
        own = await h.app.store.scope_overrides(Scope.dm(user.id))
        assert own["system_prompt"] == "Talk like a pirate."


async def test_joining_a_server_leaves_one_short_note_that_pings_nobody(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        new = default_guild(guild_id=(1 << 22) * 2000 + 1, name="New Guild")
        h.fake.guilds.append(new)
        payload = new.to_payload(h.fake.bot_user)
        payload["system_channel_id"] = str(new.channels[0].id)
        del payload["unavailable"]  # a join, as Discord sends it (not a guild coming back)
        await h.fake.dispatch("GUILD_CREATE", payload, guild_id=new.id)
        note = await h.fake.wait_for(lambda: next(iter(
            h.fake.channel_messages(new.channels[0].id)), None), timeout=10)
        assert note.content == JOINED and "/help" in note.content
        sent = [r for r in h.fake.requests_for(Routes.SEND_MESSAGE)
                if str(new.channels[0].id) in r.path]
        assert sent and sent[0].json["allowed_mentions"]["parse"] == []
