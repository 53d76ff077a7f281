"""A press is acknowledged before anything that can queue: here, a store that cannot read.

Discord allows 3 s for an interaction's first response, and under a flood of
presses the store's reads queue. The store's read connection is held on a real
query (a SQL function that waits) while members press Regenerate, Continue, the
versions' ◀ ▶ and Reasoning: the presses are acknowledged all the same, and what
the store then decides (the new reply, or a refusal) follows once it reads
again; a refusal stays private.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord
import pytest

from bot import wording
from bot.discord import model_wait
from bot.errors import UserFacingError
from bot.store.scopes import Scope
from testing.discord_harness import is_final, running_bot
from testing.fake_discord import FLAG_EPHEMERAL, FakeUser
from testing.stories import RecordingModel, button, final_message, labels, reads_held, refused

#: Well within Discord's 3 s, with room for a slow shared test machine.
ACK_WITHIN_S = 2.0


async def test_regenerate_is_acknowledged_while_the_store_cannot_read(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="A fresh answer.") as h:
        asked = await h.ask("hello", channel_id=h.help)
        first = final_message(asked)
        regen = button(first, "llm:regen:")
        other = FakeUser(818181, "other", "Other")
        async with reads_held(h.app.store.db) as holding:
            press = await h.fake.inject_component(regen, message_id=first.id)
            # The same custom id pressed from another channel: refused, but only the
            # store knows the ask's channel, so it too is acknowledged first.
            elsewhere = await h.fake.inject_component(regen, channel_id=h.general, user=other)
            for itx in (press, elsewhere):
                ack = await itx.wait_response(timeout=ACK_WITHIN_S)
                assert ack.type == 5 and not int(ack.data.get("flags") or 0) & FLAG_EPHEMERAL
            # A second press by the same member is refused at once, from memory.
            again = await h.fake.inject_component(regen, message_id=first.id)
            second = await again.wait_response(timeout=ACK_WITHIN_S)
            assert second.type == 4 and second.data["flags"] & FLAG_EPHEMERAL
            assert "in progress" in second.data["content"]
            assert not holding.done()  # every answer above came while the store was held
            assert press.original is not None and not press.original.content
        await h.finished(press)
        assert "A fresh answer." in final_message(press).content
        refusal = await refused(elsewhere)
        assert refusal["content"].endswith(wording.BUTTON_OTHER_CHANNEL)
        assert elsewhere.original is not None and elsewhere.original.deleted


async def test_a_private_reply_regenerates_privately_and_is_acknowledged_so(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The pressed message's privacy decides the acknowledgement's, before the store
    says whether the ask was private; a press of a private ask's id on a public
    message is refused (privately), never answered in public."""
    async with running_bot(smol_model_dir, tmp_path, scripted="Just for you.") as h:
        asked = await h.command("ask", {"prompt": "secret", "private": True})
        await h.finished(asked)
        mine = final_message(asked)
        assert mine.flags & FLAG_EPHEMERAL
        regen = button(mine, "llm:regen:")
        async with reads_held(h.app.store.db) as holding:
            press = await h.fake.inject_component(regen, message_id=mine.id)
            ack = await press.wait_response(timeout=ACK_WITHIN_S)
            assert ack.type == 5 and ack.data["flags"] & FLAG_EPHEMERAL
            assert not holding.done()
        await h.finished(press)
        assert final_message(press).flags & FLAG_EPHEMERAL
        # The same id on a public message (a forged one): refused, and the public
        # "thinking" message it was acknowledged with is taken back.
        forged = await h.fake.inject_component(regen, channel_id=h.general)
        refusal = await refused(forged)
        assert refusal["content"].endswith(wording.BUTTON_OTHER_REPLY)
        assert forged.original is not None and forged.original.deleted


async def test_the_client_keeps_a_bounded_pool_of_connections_to_discord(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """Every press's acknowledgement is one request: a flood reuses kept-alive
    connections rather than opening one per request (discord.py's default)."""
    async with running_bot(smol_model_dir, tmp_path, scripted="Hi.", http_connections=8) as h:
        connector = h.bot.http.connector
        assert connector.limit == 8
        presses = [await h.fake.inject_component("llm:regen:" + "9" * 30, channel_id=h.general,
                                                 user=FakeUser(900_000 + n, f"m{n}"))
                   for n in range(40)]
        for press in presses:
            assert (await press.wait_response(timeout=10)).type == 4


async def test_continue_and_the_versions_are_acknowledged_while_the_store_cannot_read(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    text = " ".join(f"w{i}" for i in range(60))
    async with running_bot(smol_model_dir, tmp_path, scripted=text, script_delay=0.0) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8},
                                    actor_id=1)
        first = final_message(await h.ask("count"))
        again = await h.fake.inject_component(button(first, "llm:regen:"), message_id=first.id)
        await h.finished(again)
        two = final_message(again)
        assert "2/2" in labels(two)
        stranger = FakeUser(828282, "stranger", "Stranger")
        async with reads_held(h.app.store.db) as holding:
            back = await h.fake.inject_component(button(two, "llm:swipe:"), message_id=two.id)
            # Continue of another place's answer: only the store knows it is refused.
            forged = await h.fake.inject_component(button(two, "llm:cont:"),
                                                   channel_id=h.help, user=stranger)
            for itx in (back, forged):
                ack = await itx.wait_response(timeout=ACK_WITHIN_S)
                assert ack.type == 6  # a deferred update: the pressed message stays
            assert not holding.done()
        shown = h.fake.message(two.id)
        await h.fake.wait_for(lambda: "version 1/2" in shown.content or None, timeout=10)
        refusal = await refused(forged)
        assert refusal["content"].endswith(wording.BUTTON_OTHER_CHANNEL)
        before = shown.content
        async with reads_held(h.app.store.db) as holding:
            cont = await h.fake.inject_component(button(shown, "llm:cont:"), message_id=two.id,
                                                 user=FakeUser(838383, "other", "Other"))
            assert (await cont.wait_response(timeout=ACK_WITHIN_S)).type == 6
            assert not holding.done()
        # Carried on in the pressed message once the store reads again.
        await h.fake.wait_for(lambda: (shown.content != before and is_final(shown.content)
                                       and "continued" in shown.content) or None, timeout=30)


async def test_reasoning_is_acknowledged_privately_while_the_store_cannot_read(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir, answer=lambda n: f"<think>plan {n}</think>Answer {n}.")
    manage = str(discord.Permissions(manage_channels=True).value)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        turned = await h.command("system reasoning", {"mode": "on"}, permissions=manage)
        await turned.wait_response()
        answer = final_message(await h.ask("Why?"))
        think = button(answer, "llm:think:")
        async with reads_held(h.app.store.db) as holding:
            press = await h.fake.inject_component(think, message_id=answer.id)
            forged = await h.fake.inject_component(think, channel_id=h.help)
            for itx in (press, forged):
                ack = await itx.wait_response(timeout=ACK_WITHIN_S)
                assert ack.type == 5 and ack.data["flags"] & FLAG_EPHEMERAL
            assert not holding.done()
        thoughts = await h.fake.wait_for(
            lambda: press.original if press.original is not None
            and "plan 1" in press.original.content else None, timeout=10)
        assert thoughts.flags & FLAG_EPHEMERAL
        refusal = await refused(forged)
        assert refusal["content"].endswith(wording.BUTTON_OTHER_CHANNEL)
        assert forged.original is not None and forged.original.deleted


async def test_a_reply_box_is_acknowledged_while_the_store_cannot_read(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The box is opened before the hold (a modal must be the press's first response, so
    Reply itself cannot acknowledge first); its submission is acknowledged during it."""
    async with running_bot(smol_model_dir, tmp_path, scripted="More to say.") as h:
        answer = final_message(await h.ask("hello", channel_id=h.help))
        opened = await (await h.fake.inject_component(button(answer, "llm:reply:"),
                                                      message_id=answer.id)).wait_response()
        assert opened.type == 9  # the box
        async with reads_held(h.app.store.db) as holding:
            submit = await h.fake.inject_modal_submit(opened.data["custom_id"],
                                                      {"text": "go on"}, channel_id=h.help)
            ack = await submit.wait_response(timeout=ACK_WITHIN_S)
            assert ack.type == 5 and not int(ack.data.get("flags") or 0) & FLAG_EPHEMERAL
            assert not holding.done()
        await h.finished(submit)
        assert "More to say." in final_message(submit).content


async def test_a_regenerate_that_fails_in_the_store_is_withdrawn_and_frees_the_slot(
    smol_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a refusal but a failure (the store raising): the public "thinking" message
    goes all the same, the apology is private, and the member may press again."""
    async with running_bot(smol_model_dir, tmp_path, scripted="A fresh answer.") as h:
        asked = await h.ask("hello")
        first = final_message(asked)
        regen = button(first, "llm:regen:")
        real = h.app.chat.asked

        async def failing(ask_id: int) -> object:
            raise RuntimeError("the store is down")

        monkeypatch.setattr(h.app.chat, "asked", failing)
        press = await h.fake.inject_component(regen, message_id=first.id)
        refusal = await refused(press)
        assert refusal["content"].endswith(wording.GENERIC)
        assert press.original is not None and press.original.deleted
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0
        monkeypatch.setattr(h.app.chat, "asked", real)
        again = await h.fake.inject_component(regen, message_id=first.id)
        await h.finished(again)
        assert "A fresh answer." in final_message(again).content


#: An ask still preparing at the runner's deadline is deferred then: that, plus room
#: for a slow shared machine, and still inside Discord's 3 s.
LATE_ACK_WITHIN_S = model_wait.ACK_WITHIN_S + 1.5


async def test_an_ask_is_acknowledged_by_the_deadline_while_the_store_cannot_read(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """/ask refuses from memory at once, but what it must read first can queue: past
    the deadline it is deferred (Discord's "thinking"), and the reply then fills it."""
    async with running_bot(smol_model_dir, tmp_path, scripted="Here you are.") as h:
        await h.ask("warm up")  # the conversation tables exist and the model is loaded
        async with reads_held(h.app.store.db) as holding:
            itx = await h.command("ask", {"prompt": "hello"})
            ack = await itx.wait_response(timeout=LATE_ACK_WITHIN_S)
            assert ack.type == 5 and not int(ack.data.get("flags") or 0) & FLAG_EPHEMERAL
            assert not holding.done()
        await h.finished(itx)
        assert "Here you are." in final_message(itx).content
        assert not itx.followup_ids  # the deferral became the reply


async def test_a_refusal_after_the_deadline_takes_the_deferral_back_and_is_private(
    smol_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted="Never said.") as h:
        slow = asyncio.Event()

        async def refuses_late(ask: object, on_wait: object = None) -> object:
            await slow.wait()
            raise UserFacingError("Not today.")

        monkeypatch.setattr(h.app.chat, "prepare", refuses_late)
        itx = await h.command("ask", {"prompt": "hello"})
        ack = await itx.wait_response(timeout=LATE_ACK_WITHIN_S)
        assert ack.type == 5
        slow.set()
        refusal = await refused(itx)
        assert refusal["content"].endswith("Not today.")
        assert itx.original is not None and itx.original.deleted
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0
