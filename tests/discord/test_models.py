"""Several models through the real composition root, discord.py and the fake Discord.

Two real models are configured with BOT_MODEL_DIRS: the embedded SmolLM2 (the
default, `smol`) and a tiny random one built here (`tiny`); `open_app` builds
the catalog and registry as the bot does. Which model answered is read from the
footer (hosts with several models name it) and from each engine's own token
counter, so a footer that lied would fail too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import discord

from bot.app import open_app
from bot.console.commands import Console
from bot.hosting.catalog import MB, weight_bytes_of
from bot.hosting.registry import ModelState
from bot.store.scopes import Scope
from testing.discord_harness import Harness
from testing.fake_discord import FakeInteraction, StoredMessage
from testing.model_hosts import (
    MANAGE_CHANNELS,
    MANAGE_GUILD,
    MANAGE_SERVER,
    NEW_TOKENS,
    answer_text,
    entries,
    footer_of,
    models_bot,
    set_model,
    tokens_of,
)
from testing.stories import final_message


async def test_a_channel_chooses_a_model_and_another_keeps_the_default(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir)) as h:
        models = h.app.models
        assert models.names == ("smol", "tiny") and models.default == "smol"
        assert models.loaded("smol") is not None  # the default is loaded before serving
        assert models.loaded("tiny") is None  # the other waits for its first ask

        # Members may not choose; a name that is not served is refused politely.
        refused = await set_model(h, "tiny", h.help, permissions="0")
        assert "Manage Channels" in refused
        unknown = await set_model(h, "llama-70b", h.help)
        assert "no model called `llama-70b`" in unknown and "`tiny`" in unknown
        assert "now answers" in await set_model(h, "tiny", h.help)

        in_help = await h.ask("Say hi.", channel_id=h.help)
        assert footer_of(in_help).endswith("· `tiny`"), footer_of(in_help)
        assert tokens_of(h, "tiny") > 0
        smol_before = tokens_of(h, "smol")
        tiny_before = tokens_of(h, "tiny")
        in_general = await h.ask("Say hi.")
        assert footer_of(in_general).endswith("· `smol`"), footer_of(in_general)
        assert tokens_of(h, "smol") > smol_before and tokens_of(h, "tiny") == tiny_before

        listed = await answer_text(await h.command("model list", channel_id=h.help))
        smol_line = next(line for line in listed.splitlines() if "`smol`" in line)
        tiny_line = next(line for line in listed.splitlines() if "`tiny`" in line)
        assert "(default)" in smol_line and "loaded" in smol_line
        assert f"{weight_bytes_of(tiny_dir) / MB:,.0f} MB" in tiny_line
        smol_window = h.app.models.loaded("smol").info.context_length  # type: ignore[union-attr]
        assert f"context {smol_window:,} tokens" in smol_line
        assert f"chosen in <#{h.help}>" in tiny_line
        assert "**Here:** `tiny` (from the channel)" in listed

        settings = await answer_text(await h.command("settings", channel_id=h.help))
        assert "**Model** `tiny` (from the channel)" in settings
        settings = await answer_text(await h.command("settings"))
        assert "**Model** `smol` (the default)" in settings

        assert "removed" in await answer_text(await h.command(
            "model reset", channel_id=h.help, permissions=MANAGE_CHANNELS))
        back = await h.ask("Say hi.", channel_id=h.help)
        assert footer_of(back).endswith("· `smol`"), footer_of(back)


async def test_a_budget_for_one_model_unloads_the_idle_one_and_the_ask_says_it_loads(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    smol, tiny = weight_bytes_of(smol_model_dir), weight_bytes_of(tiny_dir)
    budget_mb = (smol + tiny // 2) / MB  # room for smol, or for tiny, never both
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir),
                          model_memory_budget_mb=budget_mb) as h:
        registry = h.app.models.registry
        await set_model(h, "tiny", h.help, permissions=MANAGE_SERVER)
        in_help = await h.ask("Say hi.", channel_id=h.help)
        seen = [r["content"] for r in in_help.original.revisions]  # type: ignore[union-attr]
        assert any("Loading the model `tiny`" in c for c in seen), seen
        assert footer_of(in_help).endswith("· `tiny`")
        assert registry.state("smol") is ModelState.UNLOADED and registry.evictions == 1

        in_general = await h.ask("Say hi.")
        seen = [r["content"] for r in in_general.original.revisions]  # type: ignore[union-attr]
        assert any("Loading the model `smol`" in c for c in seen), seen
        assert footer_of(in_general).endswith("· `smol`")
        assert registry.state("tiny") is ModelState.UNLOADED and registry.evictions == 2
        assert h.app.engine is h.app.models.loaded("smol")  # `app.engine` follows the default


async def test_a_model_that_unloads_the_default_is_limited_in_who_and_how_often(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """Before, under this budget a channel manager (or anyone, for their DMs) chose
    `tiny`, and every ask there unloaded `smol`, the model the rest of the server
    uses: three asks, three swaps. Now choosing it needs Manage Server (refused in
    DMs), `/model` says why, and a server swaps it in once per cooldown."""
    smol, tiny = weight_bytes_of(smol_model_dir), weight_bytes_of(tiny_dir)
    budget_mb = (smol + tiny // 2) / MB  # room for smol, or for tiny, never both
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir),
                          model_memory_budget_mb=budget_mb) as h:
        models, registry = h.app.models, h.app.models.registry
        assert models.swaps_default("tiny") and not models.swaps_default("smol")
        assert "Manage Server" in await set_model(h, "tiny", h.help)
        assert "can't be chosen for DMs" in await set_model(h, "tiny", h.help, dm=True)
        assert await h.app.store.model_choices(h.guild.id) == []
        listed = await answer_text(await h.command("model list"))
        tiny_line = next(line for line in listed.splitlines() if "`tiny`" in line)
        assert "doesn't fit beside `smol`" in tiny_line and "only Manage Server" in tiny_line
        said = await set_model(h, "tiny", h.help, permissions=MANAGE_SERVER)
        assert "now answers" in said and "at most once every 120 s" in said

        assert footer_of(await h.ask("Say hi.", channel_id=h.help)).endswith("· `tiny`")
        # The default always comes back for everyone else...
        assert footer_of(await h.ask("Say hi.")).endswith("· `smol`")
        assert registry.evictions == 2
        # ...and the channel cannot push it out again at once.
        itx = await h.command("ask", {"prompt": "Say hi."}, channel_id=h.help)

        def refused() -> str | None:
            msg = itx.original
            return msg.content if msg is not None and "Try again in" in msg.content else None

        text = await h.fake.wait_for(refused, timeout=60)
        assert "Loading `tiny` now would unload `smol`" in text
        # /tokens loads the model answering here too: held to the same limit.
        counted = await h.command("tokens", {"text": "hi"}, channel_id=h.help)

        def tokens_refused() -> str | None:
            msgs = [m for m in [counted.original, *counted.followups] if m is not None]
            return next((m.content for m in msgs if "Try again in" in m.content), None)

        assert "would unload `smol`" in await h.fake.wait_for(tokens_refused, timeout=60)
        assert registry.evictions == 2 and registry.state("smol") is ModelState.READY
        assert footer_of(await h.ask("Say hi.")).endswith("· `smol`")


async def test_a_broken_model_fails_clearly_while_the_others_serve(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    (broken / "config.json").write_text("{}", encoding="utf-8")
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir,
                                            {"dir": str(broken), "name": "broken"})) as h:
        await set_model(h, "broken", h.help)
        itx = await h.command("ask", {"prompt": "Say hi."}, channel_id=h.help)

        def said() -> str | None:
            msg = itx.original
            return msg.content if msg is not None and "could not be loaded" in msg.content else None

        text = await h.fake.wait_for(said, timeout=60)
        assert "The model `broken` could not be loaded" in text and "Other models" in text
        ok = await h.ask("Say hi.")
        assert footer_of(ok).endswith("· `smol`")
        listed = await answer_text(await h.command("model list"))
        assert "`broken` · " in listed and "failed to load" in listed


async def test_a_conversation_keeps_its_model_until_the_channel_changes_it(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir)) as h:
        first = await h.ask("Say hi.")
        assert footer_of(first).endswith("· `smol`")
        await set_model(h, "tiny", h.general)
        # The random tiny model writes only newlines to some prompts; a reply needs text
        # to be continued, and a penalty on repeats gives it some.
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"repetition_penalty": 1.0},
                                    actor_id=1)
        second = await reply(h, final_message(first), "And again?")
        assert "switched to `tiny` (the model set for this channel)" in footer_of(second)
        third = await reply(h, final_message(second), "Once more?")
        assert footer_of(third).endswith("· `tiny`") and "switched" not in footer_of(third)
        stored = await h.app.turns.answer_for_ask(second.id)
        assert stored is not None
        turns = await h.app.turns.chain(stored.id)
        assert [t.model for t in turns] == ["smol", "smol", "tiny", "tiny"]


async def reply(h: Harness, answer: StoredMessage, text: str) -> FakeInteraction:
    """Press Reply under `answer`, fill the modal with `text`, wait for the follow-up."""
    ids = [c.get("custom_id", "") for row in answer.components for c in row.get("components", [])]
    press = await h.fake.inject_component(next(i for i in ids if i.startswith("llm:reply:")),
                                          message_id=answer.id)
    opened = await press.wait_response()
    submit = await h.fake.inject_modal_submit(opened.data["custom_id"], {"text": text},
                                              channel_id=answer.channel_id)
    await h.finished(submit)
    return submit


async def test_the_console_lists_sets_and_resets_the_model(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from bot.config import load_settings

    settings = load_settings(None, database_path=tmp_path / "bot.sqlite3", device="cpu",
                             model_dirs=entries(smol_model_dir, tiny_dir), cpu_threads=1)
    async with open_app(settings, progress=lambda _line: None) as app:
        out = io.StringIO()
        console = Console(app, out=out)
        await app.store.set_knobs(console.scope(server=True), {"max_new_tokens": NEW_TOKENS},
                                  actor_id=1)
        await console.handle("/model")
        await console.handle("/model set tiny")
        await console.handle("/model list")
        await console.handle("Say hi.")
        await console.handle("/model set nothing-here")
        await console.handle("/model reset")
        await console.handle("/model list")
        said = out.getvalue()
    assert "`smol` (default)" in said and "`tiny` · " in said
    assert "Here: `smol` (the default)" in said
    assert "`tiny` now answers in this channel." in said
    assert "(Loading the model `tiny`…)" in said
    footers = [line for line in said.splitlines() if line.startswith("[") and "tokens" in line]
    assert footers and footers[0].endswith("· `tiny`]"), footers
    assert "error: There is no model called `nothing-here` here." in said
    assert "Model choice removed for this channel." in said
    assert "chosen in the channel" in said  # listed while it was set


async def test_the_lab_follows_the_model_set_here(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """/probs, Inspect and /compare use the channel's model, each view names it,
    and the Step ids are that model's own (the two tokenizers differ)."""
    from bot.lab.probs import format_table, probs_step

    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir)) as h:
        assert "now answers" in await set_model(h, "tiny", h.help)
        lab = h.bot.lab

        async def probs_in(channel_id: int) -> tuple[StoredMessage, Any]:
            itx = await h.command("probs", {"prompt": "hello there"}, channel_id=channel_id)
            msg = (await itx.wait_followups(1, timeout=60))[0]
            walk = next(reversed(lab.walks._items.values()))[1]
            return msg, walk

        msg, walk = await probs_in(h.help)
        tiny = h.app.models.loaded("tiny")
        smol = h.app.models.loaded("smol")
        assert tiny is not None and smol is not None
        assert tiny.bundle.tokenizer.vocab_size != smol.bundle.tokenizer.vocab_size
        assert walk.model == "tiny" and "model `tiny`" in msg.content
        rows = format_table(await probs_step(tiny, walk.request, top=10)).split("\n")[2:12]
        assert all(row in msg.content for row in rows)
        assert all(0 <= i < tiny.bundle.tokenizer.vocab_size for i in walk.choices)
        msg, walk = await probs_in(h.general)
        assert walk.model == "smol" and "model `smol`" in msg.content
        rows = format_table(await probs_step(smol, walk.request, top=10)).split("\n")[2:12]
        assert all(row in msg.content for row in rows)

        # Inspect under a reply the channel's model wrote.
        asked = await h.ask("Say hi.", channel_id=h.help)
        reply = final_message(asked)
        press = await h.fake.inject_component(f"llm:inspect:{asked.id}", message_id=reply.id,
                                              channel_id=h.help)
        shown = (await press.wait_followups(1, timeout=60))[0]
        assert "model `tiny`" in shown.content

        # /compare runs on the channel's model only.
        smol_before, tiny_before = tokens_of(h, "smol"), tokens_of(h, "tiny")
        itx = await h.command("compare", {"prompt": "hello", "a": "temperature=0.3",
                                          "b": "temperature=1.2"}, channel_id=h.help)

        def compared() -> StoredMessage | None:
            msg = itx.original
            ids = [c.get("custom_id", "") for row in (msg.components if msg else [])
                   for c in row.get("components", [])]
            return msg if any(i.startswith("lab:cregen:") for i in ids) else None

        done = await h.fake.wait_for(compared, timeout=120)
        assert "model `tiny`" in done.embeds[0]["description"]
        assert tokens_of(h, "tiny") > tiny_before and tokens_of(h, "smol") == smol_before

        # /settings gives the window of the model answering here; /status names models as
        # /model list does and counts every loaded model's tokens.
        settings = await answer_text(await h.command("settings", channel_id=h.help))
        assert f"{tiny.info.context_length:,} tokens" in settings
        assert f"{smol.info.context_length:,} tokens" not in settings
        status = await h.command("status", permissions=str(
            discord.Permissions(manage_guild=True).value))
        fields = {f["name"]: f["value"]
                  for f in (await status.wait_response()).data["embeds"][0]["fields"]}
        assert fields["Model"] == "`smol` (default)"
        assert fields["Tokens generated"] == (f"`smol` {tokens_of(h, 'smol'):,} · "
                                              f"`tiny` {tokens_of(h, 'tiny'):,}")


async def test_tokens_and_the_settings_window_follow_the_channels_model(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """Two tokenizers: /tokens splits with, and /settings shows the window of, the
    model answering in the channel, not the default's."""
    from bot.engine.streaming import token_pieces

    text = "Llamas hum softly at dusk 🦙"
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir)) as h:
        assert "now answers" in await set_model(h, "tiny", h.help)
        await h.ask("Say hi.", channel_id=h.help)  # tiny loads (so /tokens answers at once)
        in_help = await answer_text(await h.command("tokens", {"text": text}, channel_id=h.help))
        in_general = await answer_text(await h.command("tokens", {"text": text}))
        smol, tiny = (h.app.models.loaded(n) for n in ("smol", "tiny"))
        assert smol is not None and tiny is not None
        counts = {name: len(token_pieces(engine.bundle.tokenizer, text))
                  for name, engine in (("smol", smol), ("tiny", tiny))}
        windows = {"smol": smol.info.context_length, "tiny": tiny.info.context_length}
        assert counts["smol"] != counts["tiny"] and windows["smol"] != windows["tiny"]
        assert in_help.startswith(f"**{counts['tiny']} tokens**"), in_help
        assert f"context window {windows['tiny']} tokens · model `tiny`" in in_help
        assert in_general.startswith(f"**{counts['smol']} tokens**"), in_general
        assert f"context window {windows['smol']} tokens · model `smol`" in in_general

        # No conversation yet: /settings shows the window of the model answering there.
        settings_help = await answer_text(await h.command("settings", channel_id=h.help))
        assert f"**Context window**: {windows['tiny']:,} tokens" in settings_help
        settings_general = await answer_text(await h.command("settings"))
        assert f"**Context window**: {windows['smol']:,} tokens" in settings_general
        # The conversation in #help is counted in tiny's tokens, against tiny's window.
        shown = await answer_text(await h.command("conversation show", channel_id=h.help))
        assert f"{windows['tiny']:,}-token window" in shown, shown

        # It follows the choice: #general chooses tiny, and its window shows there.
        assert "removed" in await answer_text(await h.command(
            "model reset", channel_id=h.help, permissions=MANAGE_CHANNELS))
        assert "now answers" in await set_model(h, "tiny", h.general)
        settings_general = await answer_text(await h.command("settings"))
        assert f"**Context window**: {windows['tiny']:,} tokens" in settings_general
        # /status describes the model answering where it is asked.
        done = await h.command("status", permissions=MANAGE_GUILD)
        embed = (await done.wait_response()).data["embeds"][0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert smol.info.model_name != tiny.info.model_name
        assert fields["Model"] == "`tiny`", fields
