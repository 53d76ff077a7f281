"""The knobs lab on Discord: the real client, the real engine, the fake Discord.

/compare streams every variant into one embed within Discord's limits (a file when
cut), Stop stops all, Regenerate draws a new seed; /probs sends a PNG chart and a
table, ephemeral by default, and its Step buttons walk a reply; Inspect under a
finished reply reads the exact prompt that reply came from (tests/lab/test_inspect_discord.py
covers the rest of Inspect).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import discord
import pytest

from bot import wording
from bot.engine import GenerationRequest
from bot.knobs import Knobs
from bot.lab.chart import MAX_PNG_BYTES
from bot.lab.probs import format_table, probs_step
from testing.discord_harness import Harness, running_bot
from testing.fake_discord import FakeInteraction, FakeUser, Routes, StoredMessage
from testing.fake_discord.world import FLAG_EPHEMERAL
from testing.stories import buttons, refused

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def payloads(h: Harness) -> list[dict[str, Any]]:
    out = []
    for route in (Routes.EDIT_ORIGINAL, Routes.FOLLOWUP, Routes.EDIT_FOLLOWUP, Routes.CALLBACK,
                  Routes.SEND_MESSAGE, Routes.EDIT_MESSAGE):
        for r in h.fake.requests_for(route):
            body = r.json or {}
            data = body.get("data", body) if route == Routes.CALLBACK else body
            if data and ("content" in data or "embeds" in data):
                out.append(data)
    return out


def assert_no_mentions(h: Harness) -> None:
    sent = payloads(h)
    assert sent
    for body in sent:
        assert body.get("allowed_mentions") == {"parse": []}, body


def embed_size(embed: dict[str, Any]) -> int:
    return (len(embed.get("title", "")) + len(embed.get("description", ""))
            + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", [])))


async def finished_compare(h: Harness, itx: FakeInteraction, timeout: float = 60) -> StoredMessage:  # noqa: ASYNC109
    def done() -> StoredMessage | None:
        msg = itx.original
        if msg is not None and any(i.startswith("lab:cregen:") for i in buttons(msg)):
            return msg
        return None

    return await h.fake.wait_for(done, timeout=timeout)


def compare_seeds(h: Harness) -> list[str]:
    """The seed of each comparison delivered so far, read from its attached file."""
    seeds = []
    for r in h.fake.requests:
        for (name, _size), head in zip(r.files, r.file_heads, strict=False):
            found = re.search(rb"Seed: (\d+)", head) if name == "compare.md" else None
            if found:
                seeds.append(found.group(1).decode())
    return seeds


async def test_compare_streams_each_variant_into_one_embed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.command("compare", {"prompt": "hello there", "a": "temperature=0.1",
                                          "b": "top_k=1", "c": "temperature=1.5 top_p=1"})
        msg = await finished_compare(h, itx)
        embed = msg.embeds[0]
        fields = embed["fields"]
        assert [f["name"] for f in fields] == ["temperature=0.1", "top_k=1",
                                               "temperature=1.5 top_p=1"]
        for f in fields:
            words = r"`\d+ tokens · (cut at the limit|done|stop sequence)`$"
            assert re.search(words, f["value"]), f
            assert len(f["value"]) <= 1024
        assert embed_size(embed) <= 6000 and len(fields) <= 25
        # Each variant stopped at the comparison's own length (none asked for one).
        assert all(int(re.findall(r"`(\d+) tokens", f["value"])[-1]) <= 150 for f in fields)
        # The model is named; the seed and its caveats are in the file only.
        assert "model `" in embed["description"] and "seed" not in embed["description"]
        assert len(compare_seeds(h)) == 1
        # It streamed: the Stop button showed before the final edit, which has Regenerate.
        stops = [rev for rev in msg.revisions
                 if any("llm:stop:" in c.get("custom_id", "")
                        for row in rev["components"] for c in row.get("components", []))]
        assert stops
        assert [a["filename"] for a in msg.attachments] == ["compare.md"]
        assert msg.flags & FLAG_EPHEMERAL  # private by default, like /probs
        assert_no_mentions(h)
        # The member's slot is free again: an /ask goes through.
        await h.ask("and now?")


async def test_long_variants_are_cut_cleanly_with_the_full_texts_attached(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"word{i}" for i in range(900))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.0002) as h:
        # Asking for a length lifts the comparison's own.
        long = " max_new_tokens=600"
        itx = await h.command("compare", {"prompt": "write a lot", "a": "temperature=0.2" + long,
                                          "b": "temperature=1.2" + long, "c": "top_k=3" + long,
                                          "d": "top_p=0.5" + long})
        msg = await finished_compare(h, itx, timeout=120)
        embed = msg.embeds[0]
        assert len(embed["fields"]) == 4
        assert embed_size(embed) <= 6000
        for f in embed["fields"]:
            value = f["value"]
            assert len(value) <= 1024
            body = value.rsplit("\n`", 1)[0]
            assert body.endswith("…"), body[-40:]
            assert re.search(r"word\d+…$", body), body[-40:]  # cut between words
        assert [a["filename"] for a in msg.attachments] == ["compare.md"]
        # The file holds more than the fields could show.
        assert msg.attachments[0]["size"] > sum(len(f["value"]) for f in embed["fields"]) + 1000
        assert_no_mentions(h)


async def test_stop_stops_every_variant_and_regenerate_draws_a_new_seed(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"tok{i}" for i in range(600))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        itx = await h.command("compare", {"prompt": "go on", "a": "temperature=0.3",
                                          "b": "top_k=5"})

        def stop_id(of: FakeInteraction) -> str | None:
            msg = of.original
            found = [i for i in buttons(msg) if i.startswith("llm:stop:")] if msg else []
            return found[0] if found else None

        sid = await h.fake.wait_for(lambda: stop_id(itx), timeout=30)
        assert itx.original is not None
        stranger = FakeUser(999_001, "stranger")
        refused = await h.fake.inject_component(sid, message_id=itx.original.id, user=stranger)
        await refused.wait_response()
        press = await h.fake.inject_component(sid, message_id=itx.original.id)
        await press.wait_response()
        msg = await finished_compare(h, itx)
        for f in msg.embeds[0]["fields"]:
            assert f["value"].endswith("· stopped`"), f["value"][-60:]
        first_seed = compare_seeds(h)
        assert len(first_seed) == 1
        assert refused.response is not None
        assert "Only the person who asked" in refused.response.data["content"]

        regen = next(i for i in buttons(msg) if i.startswith("lab:cregen:"))
        again = await h.fake.inject_component(regen, message_id=msg.id)
        # The new draw is stopped too: its seed and its variants are what is checked.
        again_stop = await h.fake.wait_for(lambda: stop_id(again), timeout=30)
        assert again.original is not None
        await (await h.fake.inject_component(again_stop, message_id=again.original.id)
               ).wait_response()
        second = await finished_compare(h, again, timeout=120)
        seeds = compare_seeds(h)
        assert len(seeds) == 2 and seeds[1] != first_seed[0]
        assert [f["name"] for f in second.embeds[0]["fields"]] == ["temperature=0.3", "top_k=5"]


async def test_compare_is_an_entry_of_the_runner_cooldown_included(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A comparison takes the member's slot and starts their cooldown, as an /ask does;
    while it runs it is in the runner's table (its Stop is the runner's)."""
    async with running_bot(tiny_model_dir, tmp_path, scripted="Short answer.",
                           script_delay=0.05, user_cooldown_s=600) as h:
        itx = await h.command("compare", {"prompt": "hi", "a": "temperature=0.1",
                                          "b": "top_k=1"})
        await h.fake.wait_for(lambda: h.bot.runner.active.get(itx.id), timeout=30)
        await finished_compare(h, itx)
        assert itx.id not in h.bot.runner.active
        for name, options in (("ask", {"prompt": "and now?"}), ("compare", {"prompt": "hi"})):
            refused = await h.command(name, options)
            said = (await refused.wait_response()).data["content"]
            assert "Slow down a little" in said, said


async def probs_message(itx: FakeInteraction, h: Harness) -> StoredMessage:
    return (await itx.wait_followups(1, timeout=30))[0]


async def test_probs_sends_a_png_chart_ephemerally_and_steps_walk_the_reply(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.command("probs", {"prompt": "hello there", "knobs": "top_k=5"})
        response = await itx.wait_response()
        assert response.type == 5 and response.data["flags"] & FLAG_EPHEMERAL
        msg = await probs_message(itx, h)
        assert msg.flags & FLAG_EPHEMERAL
        assert [a["filename"] for a in msg.attachments] == ["probs.png"]
        upload = [r for r in h.fake.requests_for(Routes.FOLLOWUP) if r.files][-1]
        assert upload.file_heads[0].startswith(PNG_SIGNATURE)
        assert 0 < upload.files[0][1] < MAX_PNG_BYTES
        assert "top_k=5" in msg.content and "```" in msg.content
        assert len(msg.content) <= 2000
        steps = [i for i in buttons(msg) if i.startswith("lab:step:")]
        assert 1 <= len(steps) <= 5

        # The table is the lab's own for that request (the channel's persona and knobs).
        lab = h.bot.lab
        walk = next(iter(lab.walks._items.values()))[1]
        first_id = walk.choices[0]
        expected = await probs_step(h.app.engine, walk.request, top=10)
        rows = format_table(expected).split("\n")[2:12]
        assert all(row in msg.content for row in rows)

        # A stranger may not step it; the author may.
        stranger = FakeUser(999_002, "stranger")
        no = await h.fake.inject_component(steps[0], message_id=msg.id, user=stranger)
        await no.wait_response()
        assert len(msg.revisions) == 1
        press = await h.fake.inject_component(steps[0], message_id=msg.id)
        await press.wait_response()
        await h.fake.wait_for(lambda: len(msg.revisions) > 1 or None, timeout=30)
        so_far = h.app.engine.bundle.tokenizer.decode([first_id])
        assert f"Reply so far: `{so_far}`" in msg.content
        nxt = await probs_step(h.app.engine, walk.request, generated=(first_id,), top=10)
        for row in format_table(nxt).split("\n")[2:12]:
            assert row in msg.content
        assert "step 2" in msg.content
        assert [a["filename"] for a in msg.attachments] == ["probs.png"]
        assert_no_mentions(h)


async def test_probs_in_raw_text_mode_completes_the_text_and_says_so(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path) as h:
        itx = await h.command("probs", {"prompt": "The capital of France is", "raw": True})
        msg = await probs_message(itx, h)
        assert "Raw text" in msg.content and "no chat template" in msg.content
        rows = msg.content.splitlines()
        first_row = next(line for line in rows if line.lstrip().startswith("1 "))
        assert "␣Paris" in first_row
        lab = h.bot.lab
        walk = next(iter(lab.walks._items.values()))[1]
        steps = [i for i in buttons(msg) if i.startswith("lab:step:")]
        press = await h.fake.inject_component(steps[0], message_id=msg.id)
        await press.wait_response()
        await h.fake.wait_for(lambda: len(msg.revisions) > 1 or None, timeout=60)
        assert walk.step.raw_text and "step 2" in msg.content
        chat = await h.command("probs", {"prompt": "The capital of France is"})
        shown = await probs_message(chat, h)
        assert "step 1 is the first token of my reply" in shown.content


async def test_inspect_reads_the_replys_own_prompt_persona_included(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    persona = "You are a terse lighthouse keeper."
    async with running_bot(smol_model_dir, tmp_path) as h:
        ok = await h.command("system set", {"text": persona}, permissions=MANAGE_CHANNELS)
        await ok.wait_response()
        itx = await h.ask("what do you see?", max_new_tokens=6)
        reply = itx.original
        assert reply is not None
        inspect_id = f"llm:inspect:{itx.id}"
        assert inspect_id in buttons(reply)
        # Changing the persona afterwards does not change what that reply was made from.
        again = await h.command("system set", {"text": "You are a pirate."},
                                permissions=MANAGE_CHANNELS)
        await again.wait_response()
        press = await h.fake.inject_component(inspect_id, message_id=reply.id)
        msg = await probs_message(press, h)
        # Word odds first: the reply coloured, ephemeral, saying once what it measures.
        assert msg.flags & FLAG_EPHEMERAL and "```ansi" in msg.content
        assert msg.content.startswith(f"**{wording.WORD_ODDS}**")
        assert msg.content.count(wording.WORD_ODDS_NOTE) == 1
        assert "model `" in msg.content
        record = await h.app.ask_log.load(itx.id)
        assert record is not None and record.reply_ids
        # Its first token: the table is the one of the prompt the reply came from.
        await h.fake.inject_component(f"llm:itoken:{press.id}", message_id=msg.id,
                                      component_type=3, values=["0"])
        await h.fake.wait_for(lambda: len(msg.revisions) > 1 or None, timeout=30)
        # A lone member's question carries no name.
        request = GenerationRequest("what do you see?", system_prompt=persona,
                                    knobs=Knobs.model_validate(record.knobs))
        first = record.reply_ids[:1]
        expected = await probs_step(h.app.engine, request, include=first)
        for row in format_table(expected).split("\n")[2:12]:
            assert row in msg.content
        wrong = await probs_step(h.app.engine, GenerationRequest(
            request.prompt, system_prompt="You are a pirate.", knobs=request.knobs),
            include=first)
        assert format_table(wrong).split("\n")[2:12] != format_table(expected).split("\n")[2:12]
        assert_no_mentions(h)


async def test_an_empty_reply_offers_no_inspect(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted="") as h:
        itx = await h.ask("say nothing")
        reply = itx.original
        assert reply is not None
        assert not [i for i in buttons(reply) if "inspect" in i]
        # A button of a reply sent before Inspect still answers, plainly (the press comes
        # on a message that carries it).
        press = await h.fake.inject_component(f"lab:conf:{itx.id}", channel_id=h.general)
        assert wording.WORD_ODDS_EMPTY in (await refused(press))["content"]


async def test_a_private_replys_inspect_is_for_its_author_only(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted="A secret answer.") as h:
        itx = await h.ask("a secret", private=True, max_new_tokens=4)
        reply = itx.original
        assert reply is not None
        stranger = FakeUser(999_003, "stranger")
        # Inspect, and the Probabilities and Word odds of replies sent before it.
        for cid in (f"llm:inspect:{itx.id}", f"lab:probs:{itx.id}", f"lab:conf:{itx.id}"):
            on = {"message_id": reply.id} if cid in buttons(reply) else {"channel_id": h.general}
            press = await h.fake.inject_component(cid, user=stranger, **on)
            # Acknowledged before the store says whose it is, then refused privately.
            data = await refused(press)
            assert "Only the person who asked" in data.get("content", ""), data
            assert press.original is not None and press.original.deleted
        # Custom ids are validated before use: a forged one gets a plain refusal.
        forged = await h.fake.inject_component("lab:step:12345:9")
        response = await forged.wait_response()
        assert "expired" in response.data.get("content", "")


@pytest.mark.slow
def test_console_compare_probs_try_and_knob_help(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The console's /compare, /probs, /try and /help knob lines, in a real console process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_") and k != "DISCORD_TOKEN"}
    env.update(BOT_MODEL_DIR=str(tiny_model_dir), BOT_DATABASE_PATH=str(tmp_path / "bot.db"),
               BOT_DEVICE="cpu", BOT_CPU_THREADS="1", BOT_BATCH_WAIT_MS="5",
               BOT_CONSOLE_HISTORY=str(tmp_path / "history"), PYTHONUNBUFFERED="1")
    lines = ["/knobs set max_new_tokens=6", "/help",
             "/compare hello there | temperature=0.1 | top_k=1 | creative",
             "/compare hello there", "/compare hello | temperature=9",
             "/probs hello there | top_k=3", "/try top_k", "hi", "/try top_k", "/quit"]
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", "/dev/null", "console"],
        input="".join(line + "\n" for line in lines), capture_output=True, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2], timeout=120, check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "What the knobs do:" in out and "temperature" in out
    for label in ("=== temperature=0.1 ===", "=== top_k=1 ===", "=== creative ==="):
        assert label in out
    assert "=== current settings: temperature" in out  # no variants: these vs a contrast
    assert re.search(r"comparing 3 settings on model \S+, seed \d+", out)
    assert "error:" in out and "temperature" in out.split("/compare hello | temperature=9")[-1]
    assert "top_k=3" in out and "raw" in out and "final" in out
    assert "error: Ask something first" in out
    assert "=== top_k=-1 ===" in out or "=== top_k=" in out.split("/try top_k")[-1]


async def test_knob_help_from_knobs_show_and_try_it_on_my_last_prompt(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        show = await h.command("knobs show", permissions=MANAGE_CHANNELS)
        response = await show.wait_response()
        rows = response.data["components"]
        assert [c["custom_id"] for r in rows for c in r["components"]] == ["lab:knobhelp"]
        help_press = await h.fake.inject_component("lab:knobhelp")
        shown = await help_press.wait_response()
        assert shown.data["flags"] & FLAG_EPHEMERAL
        description = shown.data["embeds"][0]["description"]
        assert "temperature" in description and "top_p" in description
        tries = [c["custom_id"] for r in shown.data["components"] for c in r["components"]]
        assert "lab:try:temperature" in tries

        early = await h.fake.inject_component("lab:try:temperature")
        assert "Ask something here first" in (await early.wait_response()).data["content"]
        await h.ask("tell me about lighthouses", max_new_tokens=5)
        tried = await h.fake.inject_component("lab:try:temperature")
        msg = await finished_compare(h, tried)
        assert msg.flags & FLAG_EPHEMERAL
        names = [f["name"] for f in msg.embeds[0]["fields"]]
        assert names[0] == "temperature=0.7" and names[1].startswith("temperature=")
        assert names[1] != names[0]
        assert "lighthouses" in msg.embeds[0]["description"]
        forged = await h.fake.inject_component("lab:try:warmth")
        assert "not valid" in (await forged.wait_response()).data["content"]
        assert_no_mentions(h)
