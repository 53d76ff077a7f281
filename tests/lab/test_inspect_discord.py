"""Inspect under a finished reply: the real client, the real engine, the fake Discord.

The replies are scripted, spelled one character per token: ids a sampled reply
could take but that its text, encoded again, never gives, and that the random
tiny model would not write on a re-run. So a view that showed the text's tokens,
or a new generation, would fail here. The probabilities are the tiny model's own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot import wording
from bot.engine import GenerationRequest
from bot.knobs import Knobs
from bot.lab.probs import format_table, probs_step
from bot.model.tokenizer import Tokenizer
from bot.store.scopes import Scope
from testing.backends import ScriptedGenerator
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FakeInteraction, FakeUser, StoredMessage
from testing.fake_discord.world import FLAG_EPHEMERAL
from testing.stories import buttons, labels, reads_held, refused

TEXT = "Zebras hum softly at the lighthouse door."
STRANGER = FakeUser(999_004, "stranger")


class OneCharacterEach:
    """The tokenizer, but a script is spelled one character per token."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return [i for ch in text for i in self.tokenizer.encode(ch)]

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id)


def spell(h: Harness, text: str = TEXT) -> tuple[int, ...]:
    """The bot's model now writes `text` one character per token; the ids it writes."""
    tokenizer = h.app.engine.bundle.tokenizer
    spelled = OneCharacterEach(tokenizer)
    h.app.engine.set_backend(ScriptedGenerator(spelled, text, 0.001))
    ids = tuple(spelled.encode(text))
    assert ids != tuple(tokenizer.encode(text))  # the text's own tokens are fewer
    return ids


def components(msg: StoredMessage | None) -> list[dict[str, Any]]:
    rows = msg.components if msg is not None else []
    return [c for row in rows for c in row.get("components", [])]


def select(msg: StoredMessage | None, prefix: str) -> dict[str, Any]:
    found = [c for c in components(msg) if c.get("custom_id", "").startswith(prefix)]
    assert found, [c.get("custom_id") for c in components(msg)]
    return found[0]


async def stored_reply_ids(h: Harness, ask_id: int) -> tuple[int, ...]:
    for _ in range(200):  # stored right after the final edit
        record = await h.app.ask_log.load(ask_id)
        if record is not None:
            return record.reply_ids
        await asyncio.sleep(0.05)
    raise AssertionError("the ask was never stored")


async def open_inspect(h: Harness, reply: StoredMessage, ask_id: int,
                       user: FakeUser | None = None) -> tuple[FakeInteraction, StoredMessage]:
    press = await h.fake.inject_component(f"llm:inspect:{ask_id}", message_id=reply.id,
                                          **({"user": user} if user else {}))
    view = (await press.wait_followups(1, timeout=60))[0]
    return press, view


async def choose(h: Harness, view: StoredMessage, custom_id: str, value: str | None = None,
                 user: FakeUser | None = None) -> FakeInteraction:
    """A press (or, with `value`, a select choice) on the view; waits for its edit."""
    before = len(view.revisions)
    kw: dict[str, Any] = {"message_id": view.id}
    if value is not None:
        kw.update(component_type=3, values=[value])
    if user is not None:
        kw["user"] = user
    press = await h.fake.inject_component(custom_id, **kw)
    response = await press.wait_response(timeout=30)
    if response.type in (6, 7) and user is None:
        await h.fake.wait_for(lambda: len(view.revisions) > before or None, timeout=60)
    return press


async def test_a_reply_has_one_inspect_button_and_at_most_two_rows(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT) as h:
        itx = await h.ask("tell me of zebras", max_new_tokens=6)  # cut: Continue too
        reply = itx.original
        assert reply is not None
        ids = buttons(reply)
        assert [i for i in ids if "inspect" in i] == [f"llm:inspect:{itx.id}"]
        assert not [i for i in ids if i.startswith(("lab:probs", "lab:conf"))]
        assert len(reply.components) == 1 and labels(reply).count(wording.INSPECT) == 1
        # Regenerated, it has versions too: still one row of actions and the versions' row.
        again = await h.fake.inject_component(f"llm:regen:{itx.id}", message_id=reply.id)
        await h.finished(again)
        two = again.original
        assert two is not None and "2/2" in labels(two)
        assert len(two.components) == 2
        assert [c.get("custom_id", "").rsplit(":", 1)[0]
                for c in two.components[0]["components"]] == [
            "llm:regen", "llm:reply", "llm:cont", "llm:inspect"]


async def test_inspect_shows_the_replys_own_tokens_jumps_and_marks_removed_ones(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        written = spell(h)
        # top_k=1: every alternative is one the knobs removed.
        itx = await h.ask("tell me of zebras", top_k=1)
        reply = itx.original
        assert reply is not None
        stored = await stored_reply_ids(h, itx.id)
        assert stored == written

        press, view = await open_inspect(h, reply, itx.id)
        assert view.flags & FLAG_EPHEMERAL
        assert view.content.startswith(f"**{wording.WORD_ODDS}**")
        assert view.content.count(wording.WORD_ODDS_NOTE) == 1 and "```ansi" in view.content
        inspection = h.bot.lab.inspections.get(str(press.id))
        assert inspection is not None and inspection.reply == stored
        # The select names the reply's own tokens, 25 at a time.
        tokens = select(view, "llm:itoken:")
        assert len(written) > 25 and len(tokens["options"]) == 25
        assert tokens["options"][0]["label"].startswith("#1 Z ·")
        assert f"1–25 of {len(written)}" in tokens["placeholder"]

        # The next 25, then token 30 (0-based 29): its alternatives, raw and final.
        await choose(h, view, f"llm:ipage:{press.id}:next")
        tokens = select(view, "llm:itoken:")
        assert tokens["options"][0]["label"].startswith("#26 ")
        n = 29
        await choose(h, view, f"llm:itoken:{press.id}", str(n))
        record = await h.app.ask_log.load(itx.id)
        assert record is not None
        request = GenerationRequest("tell me of zebras", knobs=Knobs.model_validate(record.knobs),
                                    system_prompt=record.system_prompt)
        step = await probs_step(h.app.engine, request, generated=written[:n],
                                include=written[n:n + 1])
        table = format_table(step).split("\n")
        assert all(row in view.content for row in table[1:-1])
        taken = h.app.engine.bundle.tokenizer.id_to_token(written[n])
        assert f"Token {n + 1} of {len(written)}" in view.content
        assert f"Reply so far: `{TEXT[:n]}`" in view.content, (taken, view.content[:400])
        assert "✕ removed by top_k" in view.content
        write = select(view, "llm:iwrite:")
        # top_k=1 keeps one token: every other alternative says the knobs removed it.
        removed = [o for o in write["options"] if "✕ removed by top_k" in o["label"]]
        assert removed and len(removed) >= len(write["options"]) - 1
        assert str(written[n]) not in [o["value"] for o in write["options"]]

        # A stranger, and a token past the reply, are refused plainly.
        no = await h.fake.inject_component(f"llm:iback:{press.id}", message_id=view.id,
                                           user=STRANGER)
        assert wording.INSPECT_NOT_YOURS in (await no.wait_response()).data["content"]
        bad = await h.fake.inject_component(f"llm:itoken:{press.id}", message_id=view.id,
                                            component_type=3, values=["999"])
        assert wording.INSPECT_NOT_IN_REPLY in (await bad.wait_response()).data["content"]
        # Back: the whole reply's Word odds again, no write-on choice.
        await choose(h, view, f"llm:iback:{press.id}")
        assert view.content == inspection.overview
        assert not [c for c in components(view) if "iwrite" in c.get("custom_id", "")]
        forged = await h.fake.inject_component(f"llm:itoken:{press.id}", message_id=view.id,
                                               component_type=3, values=["-1"])
        assert wording.BUTTON_INVALID in (await forged.wait_response()).data["content"]


async def test_write_on_from_a_token_becomes_version_two_of_the_reply(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        written = spell(h)
        itx = await h.ask("tell me of zebras")
        reply = itx.original
        assert reply is not None
        press, view = await open_inspect(h, reply, itx.id)
        n = 6
        await choose(h, view, f"llm:itoken:{press.id}", str(n))
        option = select(view, "llm:iwrite:")["options"][0]
        chosen = int(option["value"])
        assert chosen != written[n]

        wrote = await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                              component_type=3, values=[str(chosen)])
        assert (await wrote.wait_response(timeout=30)).type == 6  # streams in the view
        public = h.fake.message(reply.id)
        await h.fake.wait_for(lambda: "2/2" in labels(public) or None, timeout=60)
        tokenizer = h.app.engine.bundle.tokenizer
        prefix = tokenizer.decode([*written[:n], chosen])
        question = await h.app.turns.question_for_ask(itx.id)
        assert question is not None
        versions = await h.app.swipes.swipes(question.id, user_id=h.guild.members[0].id)
        assert len(versions.answers) == 2 and versions.shown == 1
        assert versions.current.turn.text.startswith(prefix)
        # The reply's own message shows version 2/2 like a swipe, its question quoted.
        assert public.content.startswith("> tell me of zebras\n" + prefix), public.content
        assert "llm:swipe:" in "".join(buttons(public))
        # It streamed in the view, which ends with its footer and no buttons of its own.
        await h.fake.wait_for(lambda: (is_final(view.content) and not buttons(view)) or None,
                              timeout=30)
        assert view.content.startswith("> tell me of zebras\n" + prefix)
        # The new version's ids are the prefix and what the model wrote on.
        new_ask = versions.current.turn.ask_id
        assert new_ask is not None
        ids = await stored_reply_ids(h, new_ask)
        assert ids[:n + 1] == (*written[:n], chosen)
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0


async def test_write_on_is_refused_to_a_member_who_may_not_regenerate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        spell(h)
        itx = await h.ask("a secret of zebras", private=True)
        reply = itx.original
        assert reply is not None
        # Not even the view opens for someone else: the reply is private.
        no = await h.fake.inject_component(f"llm:inspect:{itx.id}", message_id=reply.id,
                                           user=STRANGER)
        assert "Only the person who asked" in (await refused(no))["content"]
        press, view = await open_inspect(h, reply, itx.id)
        await choose(h, view, f"llm:itoken:{press.id}", "3")
        chosen = select(view, "llm:iwrite:")["options"][0]["value"]
        forged = await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                               component_type=3, values=[chosen],
                                               user=STRANGER)
        said = await refused(forged)  # acknowledged first: the store knows the asker
        assert wording.ONLY_ASKER_REGENERATES in said["content"]
        # A token the view did not offer is refused too, even to the asker.
        odd = await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                            component_type=3, values=["7"])
        assert wording.INSPECT_NOT_OFFERED in (await refused(odd))["content"]
        question = await h.app.turns.question_for_ask(itx.id)
        assert question is not None
        versions = await h.app.swipes.swipes(question.id, user_id=h.guild.members[0].id)
        assert len(versions.answers) == 1
        assert not h.bot.runner.active
        # The asker may. Their reply is ephemeral (no message of it can be edited now), so
        # the new version stays in the view with the version's own buttons.
        await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                      component_type=3, values=[chosen])
        await h.fake.wait_for(lambda: "2/2" in labels(view) or None, timeout=60)
        assert is_final(view.content) and "llm:inspect:" in "".join(buttons(view))
        versions = await h.app.swipes.swipes(question.id, user_id=h.guild.members[0].id)
        assert len(versions.answers) == 2 and versions.current.turn.private


async def test_continue_adds_its_ids_to_the_replys_own(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT) as h:
        written = spell(h)
        itx = await h.ask("tell me of zebras", max_new_tokens=6)
        reply = itx.original
        assert reply is not None
        assert await stored_reply_ids(h, itx.id) == written[:6]
        shown = reply.content
        cont = next(i for i in buttons(reply) if i.startswith("llm:cont:"))
        await h.fake.inject_component(cont, message_id=reply.id)
        await h.fake.wait_for(lambda: (h.fake.message(reply.id).content != shown
                                       and is_final(h.fake.message(reply.id).content)) or None,
                              timeout=30)
        ids = await stored_reply_ids(h, itx.id)
        for _ in range(100):  # the ask is updated with the continued answer
            if len(ids) > 6:
                break
            await asyncio.sleep(0.05)
            ids = await stored_reply_ids(h, itx.id)
        assert len(ids) == 12 and ids[:6] == written[:6]


async def test_write_on_from_a_reasoning_reply_keeps_its_thoughts_apart(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The reply's own ids include its thoughts: written on, they are thoughts again
    (behind Reasoning), never the version's answer, as when the reply first streamed."""
    thought = "<think>I ponder stripes.</think>Zebras hum softly."
    async with running_bot(tiny_model_dir, tmp_path, scripted=thought, weights=True) as h:
        written = spell(h, thought)
        await h.app.store.set_reasoning(Scope.server(h.guild.id), True, actor_id=1)
        itx = await h.ask("tell me of zebras")
        reply = itx.original
        assert reply is not None and "ponder" not in reply.content
        press, view = await open_inspect(h, reply, itx.id)
        n = len("<think>I ponder stripes.</think>Zebras h")
        await choose(h, view, f"llm:itoken:{press.id}", str(n))
        chosen = int(select(view, "llm:iwrite:")["options"][0]["value"])
        spell(h, "um on.")  # what the model writes on with
        await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                      component_type=3, values=[str(chosen)])
        public = h.fake.message(reply.id)
        await h.fake.wait_for(lambda: "2/2" in labels(public) or None, timeout=60)
        prefix = h.app.engine.bundle.tokenizer.decode([*written[:n], chosen])
        answer = prefix.split("</think>")[1] + "um on."
        question = await h.app.turns.question_for_ask(itx.id)
        assert question is not None
        versions = await h.app.swipes.swipes(question.id, user_id=h.guild.members[0].id)
        assert versions.current.turn.text == answer
        assert versions.current.reasoning == "I ponder stripes."
        assert public.content.startswith("> tell me of zebras\n" + answer), public.content
        assert "think>" not in public.content and "Reasoning" in labels(public)
        await h.fake.wait_for(lambda: is_final(view.content) or None, timeout=30)
        assert "ponder" not in view.content


async def test_inspect_on_a_regenerated_version_reads_the_conversation_it_was_written_in(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A version made by Regenerate has no question turn of its own: Inspect finds it
    through the answer, so its odds are those of the prompt it was written on (earlier
    turns included), as for the first version."""
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        spell(h)
        # Room in the tiny model's window for the earlier exchange.
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 48},
                                    actor_id=1)
        first = await h.ask("first question about zebras")
        assert first.original is not None
        opened = await (await h.fake.inject_component(
            f"llm:reply:{first.id}", message_id=first.original.id)).wait_response()
        asked = await h.fake.inject_modal_submit(opened.data["custom_id"],
                                                 {"text": "second question"},
                                                 channel_id=h.general)
        await h.finished(asked)
        reply = asked.original
        assert reply is not None
        await h.fake.wait_for(lambda: "llm:regen:" in "".join(buttons(reply)) or None)
        regen = await h.fake.inject_component(f"llm:regen:{asked.id}", message_id=reply.id)
        await h.finished(regen)
        assert regen.original is not None

        def request_seen(press: FakeInteraction) -> GenerationRequest:
            insp = h.bot.lab.inspections.get(str(press.id))
            assert insp is not None
            return insp.turn.request

        press, _ = await open_inspect(h, reply, asked.id)
        press_v2, _ = await open_inspect(h, regen.original, regen.id)
        earlier = request_seen(press).history
        assert [t.text for t in earlier] == ["first question about zebras", TEXT]
        assert request_seen(press_v2) == request_seen(press)


async def test_write_on_is_offered_only_where_the_budget_leaves_room(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A reply cut at max_new_tokens and continued runs past its budget: from its last
    allowed token on, writing on would leave nothing to write, so no choice is offered
    there (and the view says why) rather than a choice that is always refused."""
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        itx = await h.ask("tell me of zebras", max_new_tokens=6)
        reply = itx.original
        assert reply is not None
        cont = next(i for i in buttons(reply) if i.startswith("llm:cont:"))
        shown = reply.content
        await h.fake.inject_component(cont, message_id=reply.id)
        await h.fake.wait_for(lambda: (h.fake.message(reply.id).content != shown
                                       and is_final(h.fake.message(reply.id).content)) or None,
                              timeout=30)
        for _ in range(100):  # the ask is updated with the continued answer
            if len(await stored_reply_ids(h, itx.id)) > 6:
                break
            await asyncio.sleep(0.05)
        press, view = await open_inspect(h, h.fake.message(reply.id), itx.id)
        await choose(h, view, f"llm:itoken:{press.id}", "2")
        assert select(view, "llm:iwrite:")["options"]
        assert wording.WRITE_ON_HOW in view.content
        for past in ("5", "8"):  # the budget's last token, and one a Continue wrote
            await choose(h, view, f"llm:itoken:{press.id}", past)
            assert not [c for c in components(view) if "iwrite" in c.get("custom_id", "")]
            assert wording.write_on_past_budget(6) in view.content


async def test_write_on_leaves_a_reply_regenerate_retired_without_buttons(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Inspect opened on a reply, then Regenerate (a new message; the old one loses its
    buttons), then write on from the still-open view: the retired message stays
    retired, and the version written on keeps its buttons in the view."""
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        spell(h)
        itx = await h.ask("tell me of zebras")
        reply = itx.original
        assert reply is not None
        press, view = await open_inspect(h, reply, itx.id)
        await choose(h, view, f"llm:itoken:{press.id}", "4")
        again = await h.fake.inject_component(f"llm:regen:{itx.id}", message_id=reply.id)
        await h.finished(again)
        assert again.original is not None and again.original.id != reply.id
        await h.fake.wait_for(lambda: not buttons(h.fake.message(reply.id)) or None, timeout=30)
        retired = h.fake.message(reply.id).content
        option = select(view, "llm:iwrite:")["options"][0]
        wrote = await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                              component_type=3, values=[option["value"]])
        assert (await wrote.wait_response(timeout=30)).type == 6
        await h.fake.wait_for(lambda: (is_final(view.content) and "3/3" in labels(view))
                              or None, timeout=60)
        old = h.fake.message(reply.id)
        assert not buttons(old) and old.content == retired
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0


async def test_inspect_and_write_on_are_acknowledged_while_the_store_cannot_read(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Opening Inspect and writing on from it read the store (the ask, who may) before
    they know what to do: both are acknowledged first, and go on once it reads."""
    async with running_bot(tiny_model_dir, tmp_path, scripted=TEXT, weights=True) as h:
        itx = await h.ask("tell me of zebras")
        reply = itx.original
        assert reply is not None
        async with reads_held(h.app.store.db) as holding:
            press = await h.fake.inject_component(f"llm:inspect:{itx.id}", message_id=reply.id)
            ack = await press.wait_response(timeout=2.0)
            assert ack.type == 5 and ack.data["flags"] & FLAG_EPHEMERAL
            assert not holding.done()
        view = (await press.wait_followups(1, timeout=60))[0]
        await choose(h, view, f"llm:itoken:{press.id}", "4")
        option = select(view, "llm:iwrite:")["options"][0]
        async with reads_held(h.app.store.db) as holding:
            wrote = await h.fake.inject_component(f"llm:iwrite:{press.id}", message_id=view.id,
                                                  component_type=3, values=[option["value"]])
            assert (await wrote.wait_response(timeout=2.0)).type == 6
            assert not holding.done()
        await h.fake.wait_for(lambda: "2/2" in labels(h.fake.message(reply.id)) or None,
                              timeout=60)
