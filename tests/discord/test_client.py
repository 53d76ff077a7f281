"""The Discord front-end end to end: the real discord.py client against the fake API."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import discord

from bot.store.scopes import Scope
from testing.backends import FailsMidway
from testing.discord_harness import FOOTER_WORDS, Harness, is_final, running_bot
from testing.fake_discord import FakeUser, Routes
from testing.stories import buttons

MANAGE_GUILD = str(discord.Permissions(manage_guild=True, manage_channels=True).value)
MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)


def contents_of_edits(h: Harness, token: str) -> list[str]:
    return [r.json.get("content", "") for r in h.fake.requests_for(Routes.EDIT_ORIGINAL)
            if token in r.path and r.json]


def all_payloads(h: Harness) -> list[dict[str, Any]]:
    sends = (Routes.EDIT_ORIGINAL, Routes.FOLLOWUP, Routes.EDIT_FOLLOWUP, Routes.SEND_MESSAGE,
             Routes.EDIT_MESSAGE, Routes.CALLBACK)
    out = []
    for route in sends:
        for r in h.fake.requests_for(route):
            body = r.json or {}
            data = body.get("data", body) if route == Routes.CALLBACK else body
            if data and ("content" in data or "embeds" in data):
                out.append(data)
    return out


async def test_ask_streams_by_editing_and_ends_with_footer_and_regenerate(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"word{i}" for i in range(60))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        itx = await h.ask("Tell me words")
        assert itx.response is not None and itx.response.type == 5  # deferred at once
        final = itx.original
        assert final is not None
        assert final.content.startswith("> Tell me words\n")
        assert text in final.content
        assert "· done" in final.content and "tokens" in final.content
        assert any(cid.startswith("llm:regen:") for cid in buttons(final))
        edits = contents_of_edits(h, itx.token)
        assert len(edits) >= 3  # streamed, not one final edit
        grew = [e for e in edits if "word" in e]
        assert all(len(a) <= len(b) for a, b in itertools.pairwise(grew))
        assert len(edits) < 60  # coalesced: far fewer edits than tokens
        # Streaming edits carry the Stop button.
        streaming = [r for r in h.fake.requests_for(Routes.EDIT_ORIGINAL)
                     if "llm:stop:" in str(r.json.get("components"))]
        assert streaming


async def test_per_ask_overrides_apply_once_and_are_not_stored(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.ask("hi", max_new_tokens=3, min_new_tokens=3)
        assert "3 tokens" in itx.original.content  # type: ignore[union-attr]
        eff = await h.app.store.scope_overrides(Scope.channel(h.general, h.guild.id))
        assert eff == {}
        itx2 = await h.ask("hi", min_new_tokens=5, max_new_tokens=5)
        assert "5 tokens" in itx2.original.content  # type: ignore[union-attr]


async def test_stop_button_ends_decoding_and_says_stopped(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(400))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        itx = await h.command("ask", {"prompt": "go on"})
        msg = await itx.wait_original(lambda m: "w3" in m.content, timeout=10)
        stop_id = next(c for c in buttons(msg) if c.startswith("llm:stop:"))
        press = await h.fake.inject_component(stop_id, message_id=msg.id,
                                              channel_id=h.general)
        await press.wait_response()
        await h.finished(itx)
        final = itx.original
        assert final is not None and "stopped" in final.content
        assert "w399" not in final.content
        assert h.app.engine.active == 0


async def test_stop_button_refuses_strangers_and_stale_replies(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(120))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.01) as h:
        itx = await h.command("ask", {"prompt": "go"})
        msg = await itx.wait_original(lambda m: "w2" in m.content, timeout=10)
        stop_id = next(c for c in buttons(msg) if c.startswith("llm:stop:"))
        stranger = FakeUser(424242, "stranger", "Stranger")
        press = await h.fake.inject_component(stop_id, message_id=msg.id, user=stranger,
                                              channel_id=h.general)
        resp = await press.wait_response()
        assert resp.data and "Only the person who asked" in resp.data["content"]
        assert resp.data["flags"] & 64  # ephemeral
        await h.finished(itx)
        # The footer shows a moment before the reply leaves the runner's table.
        await h.fake.wait_for(lambda: itx.id not in h.bot.runner.active or None, timeout=10)
        # A Stop button left on a message (e.g. by a restart mid-reply) answers clearly.
        late = await h.fake.inject_component(stop_id, channel_id=h.general)
        resp = await late.wait_response()
        assert "already finished" in resp.data["content"]


async def test_regenerate_makes_a_new_reply_even_after_a_restart(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="first answer") as h:
        itx = await h.ask("a question", max_new_tokens=20)
        assert itx.original is not None
        regen_id = next(c for c in buttons(itx.original) if c.startswith("llm:regen:"))
    # A new process: same database, new client.
    async with running_bot(smol_model_dir, tmp_path, scripted="second answer") as h2:
        press = await h2.fake.inject_component(regen_id, channel_id=h2.general)
        await h2.finished(press)
        new = press.original
        assert new is not None
        assert new.content.startswith("> a question")
        assert "second answer" in new.content


async def test_regenerate_takes_the_buttons_off_the_superseded_reply(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="an answer") as h:
        itx = await h.ask("a question", max_new_tokens=20)
        old = itx.original
        assert old is not None
        regen_id = next(c for c in buttons(old) if c.startswith("llm:regen:"))
        press = await h.fake.inject_component(regen_id, message_id=old.id)
        await h.finished(press)
        assert press.original is not None and press.original.id != old.id
        # The new message carries the actions and the versions; the old one only its text.
        assert any(c.startswith("llm:regen:") for c in buttons(press.original))
        await h.fake.wait_for(lambda: not buttons(h.fake.message(old.id)))
        assert "an answer" in h.fake.message(old.id).content


async def test_long_reply_overflows_into_followups_with_balanced_fences(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    # About 4,900 characters in under 1,000 tokens: three messages.
    code = "\n".join(
        "    the quick brown fox jumps over the lazy dog and keeps on running" for _ in range(70)
    )
    text = "Here is the code:\n```python\n" + code + "\n```\nThat is all."
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.0005) as h:
        itx = await h.ask("write code", max_new_tokens=1024, timeout=60)
        pages = [itx.original, *itx.followups]
        assert len(pages) >= 3
        for page in pages:
            assert page is not None
            assert len(page.content) <= 2000
            fences = sum(1 for ln in page.content.split("\n") if ln.strip().startswith("```"))
            assert fences % 2 == 0, page.content[-200:]
        assert pages[1].content.startswith("```python")  # type: ignore[union-attr]
        assert "That is all." in pages[-1].content  # type: ignore[union-attr]
        assert is_final(pages[-1].content)  # type: ignore[union-attr]
        # Only the last page keeps a button.
        assert all(not buttons(p) for p in pages[:-1])  # type: ignore[arg-type]


async def test_mentions_in_model_output_ping_no_one(smol_model_dir: Path, tmp_path: Path) -> None:
    text = "Hey @everyone and @here, <@123456789012345678> and <@&987654321098765432>!"
    async with running_bot(smol_model_dir, tmp_path, scripted=text) as h:
        itx = await h.ask("ping people")
        assert "@everyone" in itx.original.content  # type: ignore[union-attr]
        payloads = all_payloads(h)
        assert payloads
        for body in payloads:
            assert body.get("allowed_mentions") == {"parse": []}, body


async def test_settings_permissions_scopes_and_threads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        # A member without Manage Channels is refused, ephemerally, and nothing is saved.
        refused = await h.command("knobs set", {"temperature": 1.5})
        resp = await refused.wait_response()
        assert "Manage Channels" in resp.data["content"] and resp.data["flags"] & 64
        refused = await h.command("system set", {"text": "Pirate", "scope": "server"},
                                  permissions=MANAGE_CHANNELS)
        resp = await refused.wait_response()
        assert "Manage Server" in resp.data["content"]
        # With permissions: server persona, channel temperature.
        ok = await h.command("system set", {"text": "You are a pirate.", "scope": "server"},
                             permissions=MANAGE_GUILD)
        assert "set for this server" in (await ok.wait_response()).data["content"]
        ok = await h.command("knobs set", {"temperature": 1.5, "stop": "\\n\\n|END"},
                             permissions=MANAGE_CHANNELS)
        assert "temperature" in (await ok.wait_response()).data["content"]

        shown = await h.command("knobs show")
        embed = (await shown.wait_response()).data["embeds"][0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert "1.5" in fields["temperature"] and "channel" in fields["temperature"]
        assert '"\\n\\n", "END"' in fields["stop"]
        assert "default" in fields["top_k"]

        # Another channel sees the server persona but not the channel knob.
        other = await h.command("knobs show", channel_id=h.help)
        fields = {f["name"]: f["value"] for f in (await other.wait_response()).data["embeds"][0]
                  ["fields"]}
        assert "0.7" in fields["temperature"] and "default" in fields["temperature"]
        persona = await h.command("system show", channel_id=h.help)
        data = (await persona.wait_response()).data["embeds"][0]
        assert "pirate" in data["description"] and "server" in data["footer"]["text"]

        # The thread inherits its parent channel's knobs.
        in_thread = await h.command("knobs show", channel_id=h.thread)
        fields = {f["name"]: f["value"] for f in
                  (await in_thread.wait_response()).data["embeds"][0]["fields"]}
        assert "1.5" in fields["temperature"] and "channel" in fields["temperature"]

        # Reset brings back the default.
        reset = await h.command("knobs reset", {"knob": "temperature"}, permissions=MANAGE_CHANNELS)
        assert "Reset temperature" in (await reset.wait_response()).data["content"]


async def test_out_of_range_and_bad_stop_get_clear_errors(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        bad = await h.command("knobs set", {"stop": "|".join(["x"] * 5)},
                              permissions=MANAGE_CHANNELS)
        resp = await bad.wait_response()
        assert "stop" in resp.data["content"] and "up to 4" in resp.data["content"]
        bad = await h.command("ask", {"prompt": "hi", "min_new_tokens": 50, "max_new_tokens": 10})
        resp = await bad.wait_response()
        assert "min_new_tokens" in resp.data["content"] and resp.data["flags"] & 64


async def test_three_concurrent_asks_show_queue_positions(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"t{i}" for i in range(40))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02,
                           max_batch_size=1) as h:
        users = [FakeUser(500 + i, f"u{i}", f"U{i}") for i in range(3)]
        itxs = [await h.command("ask", {"prompt": f"q{i}"}, user=users[i]) for i in range(3)]
        for itx in itxs:
            await h.finished(itx)
        seen = [" ".join(r["content"] for r in itx.original.revisions)  # type: ignore[union-attr]
                for itx in itxs]
        assert "queued, 1 ahead" in seen[2]
        assert "next in line" in seen[1] or "queued" in seen[1]
        for itx in itxs:
            assert "· done" in itx.original.content  # type: ignore[union-attr]


async def test_one_reply_at_a_time_per_user(smol_model_dir: Path, tmp_path: Path) -> None:
    text = " ".join(f"t{i}" for i in range(60))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        first = await h.command("ask", {"prompt": "one"})
        await first.wait_original(lambda m: "t1" in m.content)
        second = await h.command("ask", {"prompt": "two"})
        resp = await second.wait_response()
        assert "already have a reply in progress" in resp.data["content"]
        await h.finished(first)


async def test_no_429_under_discord_buckets(smol_model_dir: Path, tmp_path: Path) -> None:
    text = " ".join(f"t{i}" for i in range(70))  # 1.4 s a reply: over a bucket window
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02,
                           enforce_buckets=True, bucket_window=1.0) as h:
        for _ in range(2):
            itx = await h.ask("go", timeout=60)
            assert "· done" in itx.original.content  # type: ignore[union-attr]
        assert h.fake.stats.rate_limited == 0


async def test_injected_429_and_500_on_edits_still_end_with_full_text(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"t{i}" for i in range(50))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        h.fake.fail_next(Routes.EDIT_ORIGINAL, 500, times=1)
        h.fake.fail_next(Routes.EDIT_ORIGINAL, 429, times=1, retry_after=0.05)
        itx = await h.ask("go", timeout=60)
        assert text in itx.original.content  # type: ignore[union-attr]
        assert "· done" in itx.original.content  # type: ignore[union-attr]


async def test_gateway_reconnect_mid_reply(smol_model_dir: Path, tmp_path: Path) -> None:
    text = " ".join(f"t{i}" for i in range(80))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        itx = await h.command("ask", {"prompt": "go"})
        await itx.wait_original(lambda m: "t5" in m.content, timeout=10)
        await h.fake.send_reconnect()
        await h.finished(itx)
        assert text in itx.original.content  # type: ignore[union-attr]
        after = await h.ask("again")
        assert "· done" in after.original.content  # type: ignore[union-attr]


async def test_expired_token_continues_as_a_channel_message(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"t{i}" for i in range(80))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.02) as h:
        itx = await h.command("ask", {"prompt": "go"})
        await itx.wait_original(lambda m: "t3" in m.content, timeout=10)
        h.fake.expire_token(itx.token)

        def final_channel_message() -> Any:
            for m in h.fake.channel_messages(h.general):
                if is_final(m.content):
                    return m
            return None

        msg = await h.fake.wait_for(final_channel_message, timeout=30)
        assert "t79" in msg.content


async def test_tokens_command_shows_coloured_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        itx = await h.command("tokens", {"text": "Hello world 123"})
        resp = await itx.wait_response()
        content = resp.data["content"]
        assert "tokens" in content and "context window" in content
        assert "```ansi" in content and "\u001b[0;3" in content


async def test_model_failure_mid_reply_shows_an_error_and_frees_the_slot(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        real = h.app.engine.backend
        h.app.engine.set_backend(FailsMidway(real, after=5, message="boom"))
        itx = await h.ask("fail please", min_new_tokens=50, max_new_tokens=60)
        assert "model failed" in itx.original.content  # type: ignore[union-attr]
        assert "error" in itx.original.content  # type: ignore[union-attr]
        h.app.engine.set_backend(real)
        ok = await h.ask("and now?", max_new_tokens=4)
        assert any(w in ok.original.content for w in FOOTER_WORDS)  # type: ignore[union-attr]
        await asyncio.sleep(0)


def _text_inputs(modal: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == 4:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(modal.get("components", []))
    return found


async def test_system_edit_opens_a_prefilled_multiline_modal(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        first = await h.command("system set", {"text": "Be brief."}, permissions=MANAGE_CHANNELS)
        await first.wait_response()
        itx = await h.command("system edit", permissions=MANAGE_CHANNELS)
        await itx.wait_response()
        modal = itx.modal
        assert modal is not None
        (field,) = _text_inputs(modal)
        assert field["value"] == "Be brief." and field["style"] == 2  # paragraph
        submit = await h.fake.inject_modal_submit(
            modal["custom_id"], {field["custom_id"]: "Line one.\nLine two: be kind."},
            channel_id=h.general, permissions=MANAGE_CHANNELS,
        )
        assert "saved" in (await submit.wait_response()).data["content"]
        eff = await h.app.store.scope_overrides(Scope.channel(h.general, h.guild.id))
        assert eff["system_prompt"] == "Line one.\nLine two: be kind."
        # Without the permission the modal never opens.
        refused = await h.command("system edit")
        resp = await refused.wait_response()
        assert resp.type == 4 and "Manage Channels" in resp.data["content"]
