"""A character card's greeting is the conversation's first assistant turn.

Through the real discord.py client and the fake Discord: `/system import
greeting:true` posts the greeting with ◀ n/m ▶ over the alternate greetings,
Reply and a reply that pings the bot continue from the version on screen, and
the model (the embedded one's tokenizer, scripted output) reads that greeting
as its own turn before the member's.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bot import wording
from bot.store.retention import forget
from testing.character_cards import card_json
from testing.discord_harness import Harness, running_bot
from testing.fake_discord import FakeUser, StoredMessage
from testing.stories import (
    CARD_ADMIN,
    RecordingModel,
    button,
    buttons,
    final_message,
    import_card,
    in_order,
    labels,
    refused,
)

CARD = card_json({
    "name": "Marlo",
    "description": "Marlo keeps a lighthouse and talks to {{user}}.",
    "first_mes": "Welcome to the lighthouse, {{user}}. Mind the stairs.",
    "alternate_greetings": ["The lamp is lit, {{user}}; sit by the window.",
                            "A storm is coming. You picked a fine night to visit."],
})
GREETINGS = ("Welcome to the lighthouse, you. Mind the stairs.",
             "The lamp is lit, you; sit by the window.",
             "A storm is coming. You picked a fine night to visit.")
BEA = FakeUser((1 << 22) * 1000 + 21, "bea", "Bea")


async def greeting_message(h: Harness, channel_id: int | None = None) -> StoredMessage:
    """The greeting the import posted, once it carries its buttons (it is stored then)."""
    return await h.fake.wait_for(lambda: next(
        (m for m in h.fake.channel_messages(channel_id or h.general)
         if "lighthouse" in m.content and any(b.startswith("llm:reply:") for b in buttons(m))),
        None))


async def reply_in_box(h: Harness, message: StoredMessage, text: str) -> None:
    """Press Reply under `message`, write `text` in the box and wait for the answer."""
    opened = await (await h.fake.inject_component(
        button(message, "llm:reply:"), message_id=message.id)).wait_response()
    submit = await h.fake.inject_modal_submit(opened.data["custom_id"], {"text": text},
                                              channel_id=h.general, user=BEA)
    await h.finished(submit)
    # The buttons come once the exchange is stored.
    await h.fake.wait_for(lambda: "llm:reply:" in "".join(buttons(final_message(submit)))
                          or None)
    assert "Answer" in final_message(submit).content


async def test_alternate_greetings_are_versions_and_reply_continues_the_one_shown(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        await (await import_card(h, CARD, greeting=True)).wait_response()
        greeting = await greeting_message(h)
        # The first greeting, to everyone ({{user}} is "you"), as version 1 of 3.
        assert greeting.content.startswith(GREETINGS[0])
        assert "version 1/3" in greeting.content and "{{user}}" not in greeting.content
        assert labels(greeting) == ["Reply", "◀", "1/3", "▶"]
        # No prompt made it: nothing to regenerate or inspect.
        assert not [b for b in buttons(greeting) if b.startswith(("llm:regen", "lab:"))]

        press = await h.fake.inject_component(
            next(b for b in buttons(greeting) if b.endswith(":next")), message_id=greeting.id)
        # A deferred update (before the store is read), then the same message, edited.
        assert (await press.wait_response()).type == 6
        shown = h.fake.message(greeting.id)
        await h.fake.wait_for(lambda: "version 2/3" in shown.content or None, timeout=10)
        assert shown.content.startswith(GREETINGS[1])
        assert "2/3" in labels(shown)

        await reply_in_box(h, shown, "Thanks, I brought tea.")
        # The model read greeting 2 as its own turn, right after the persona and
        # before the member's reply; greetings 1 and 3 are not in the conversation.
        assert in_order(model.last, "Marlo keeps a lighthouse",
                        f"assistant\n{GREETINGS[1]}", "user\nThanks, I brought tea.",
                        "assistant\n")
        assert GREETINGS[0] not in model.last and GREETINGS[2] not in model.last
        im_start = model.tokenizer.token_to_id("<|im_start|>")
        assert im_start is not None
        # System, the greeting, the member's reply and the reply's opener: no empty
        # user turn before the greeting, and one member reads no names.
        assert model.ids[-1].count(im_start) == 4
        assert "Bea:" not in model.last

        # A reply that pings the bot, to the greeting message, continues it too.
        await h.fake.inject_message("Is the lamp electric?", reply_to=greeting.id,
                                    channel_id=h.general, user=BEA)
        await h.fake.wait_for(lambda: len(model.prompts) == 2 or None)
        assert in_order(model.prompts[1], GREETINGS[1], "Is the lamp electric?")
        assert "Thanks, I brought tea." not in model.prompts[1]  # a branch of its own


async def test_the_greeting_is_nobodys_turn_forget_keeps_it_and_retention_prunes_it(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        await (await import_card(h, CARD, greeting=True)).wait_response()
        greeting = await greeting_message(h)
        await reply_in_box(h, greeting, "Hello Marlo.")
        stored = await h.app.chat.by_message(greeting.id)
        assert stored is not None and stored.role == "assistant"
        assert stored.text == GREETINGS[0] and stored.author_id == 0 and not stored.private
        # Erasing the member removes their turns, not the greeting nobody wrote.
        gone = await forget(h.app.chat.turns.db, user_id=BEA.id)
        assert gone.turns == 2  # Bea's question and the answer to it
        assert await h.app.chat.get(stored.id) is not None
        # Retention counts the greeting's age like any turn's.
        assert await h.app.chat.turns.prune(retention_days=0) == 0
        db = h.app.chat.turns.db
        now = db.clock
        db.clock = lambda: now() + timedelta(days=31)
        assert await h.app.chat.turns.prune(retention_days=30) == 4  # opening + 3 versions
        assert await h.app.chat.by_message(greeting.id) is None



async def test_a_greeting_in_a_dm_starts_the_members_dm_conversation(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        await (await import_card(h, CARD, greeting=True, dm=BEA)).wait_response()
        dm_channel = BEA.id + 7  # the fake's DM channel of a member
        greeting = await greeting_message(h, dm_channel)
        stored = await h.app.chat.by_message(greeting.id)
        assert stored is not None and stored.private and stored.author_id == BEA.id
        # A plain DM continues the member's current conversation: the greeting's.
        await h.fake.inject_message("Good evening.", dm=True, user=BEA)
        await h.fake.wait_for(lambda: model.prompts or None)
        assert in_order(model.last, f"assistant\n{GREETINGS[0]}", "user\nGood evening.")
        # The member's erasure takes their DM conversation, greeting and all.
        await h.fake.wait_for(lambda: next(  # its buttons come once its turns are stored
            (m for m in h.fake.channel_messages(dm_channel)
             if "Answer 1." in m.content and "llm:regen:" in "".join(buttons(m))), None))
        assert (await forget(h.app.chat.turns.db, user_id=BEA.id)).turns == 6


async def test_loading_a_saved_persona_with_its_greeting_starts_a_conversation_too(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        await (await import_card(h, CARD)).wait_response()  # saved as "Marlo", no greeting
        assert not [m for m in h.fake.channel_messages(h.general) if "lighthouse" in m.content]
        loaded = await h.command("system load", {"name": "Marlo", "greeting": True},
                                 channel_id=h.help, permissions=CARD_ADMIN)
        await loaded.wait_response()
        greeting = await greeting_message(h, h.help)
        # A saved persona keeps one greeting: Reply alone, no versions.
        assert greeting.content == GREETINGS[0] and labels(greeting) == ["Reply"]
        stored = await h.app.chat.by_message(greeting.id)
        assert stored is not None and stored.text == GREETINGS[0]


async def test_a_greeting_in_a_thread_becomes_the_threads_conversation(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    model = RecordingModel(smol_model_dir)
    async with running_bot(smol_model_dir, tmp_path, scripted=model) as h:
        await (await import_card(h, CARD, greeting=True, channel_id=h.thread)).wait_response()
        greeting = await greeting_message(h, h.thread)
        # Anyone's /ask in the thread continues from the greeting shown.
        press = await h.fake.inject_component(
            next(b for b in buttons(greeting) if b.endswith(":next")), message_id=greeting.id,
            channel_id=h.thread)
        await press.wait_response()
        await h.fake.wait_for(lambda: h.fake.message(greeting.id).content.startswith(
            GREETINGS[1]) or None, timeout=10)
        await h.ask("Which way to the lamp?", channel_id=h.thread, user=BEA)
        assert in_order(model.last, f"assistant\n{GREETINGS[1]}", "user\nWhich way to the lamp?")
        assert GREETINGS[0] not in model.last


async def test_a_card_with_more_greetings_than_versions_says_the_versions_it_keeps(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """A card may hold more alternate greetings than an answer keeps versions: the
    message's "version 1/n" and its ◀ 1/n ▶ count the same greetings, those stored."""
    many = card_json({
        "name": "Marlo", "description": "Marlo keeps a lighthouse.",
        "first_mes": "Welcome to the lighthouse.",
        "alternate_greetings": [f"Greeting {n} at the lighthouse." for n in range(2, 31)],
    })
    async with running_bot(smol_model_dir, tmp_path, scripted="Hi.") as h:
        await (await import_card(h, many, greeting=True)).wait_response()
        greeting = await greeting_message(h)
        stored = await h.app.chat.by_message(greeting.id)
        assert stored is not None
        versions = await h.app.swipes.swipes_of_answer(stored.id, user_id=BEA.id)
        count = len(versions.answers)
        assert count < 30  # the card had more than an answer keeps
        assert f"version 1/{count}" in greeting.content, greeting.content
        assert f"1/{count}" in labels(greeting)


async def test_regenerate_continue_or_inspect_named_on_a_greeting_are_refused_privately(
    smol_model_dir: Path, tmp_path: Path
) -> None:
    """The greeting carries none of them, but a custom id is the client's to send: each
    is refused to the presser alone (nothing was asked), and no slot is left held."""
    async with running_bot(smol_model_dir, tmp_path, scripted="Hi.") as h:
        imported = await import_card(h, CARD, greeting=True)
        await imported.wait_response()
        greeting = await greeting_message(h)
        answer_id = button(greeting, "llm:swipe:").split(":")[2]
        for custom_id in (f"llm:regen:{imported.id}", f"llm:inspect:{imported.id}",
                          f"llm:cont:{answer_id}"):
            press = await h.fake.inject_component(custom_id, channel_id=h.general, user=BEA)
            assert refusal_of_press(await refused(press))
            assert press.response is not None
            if press.response.type == 5:  # Regenerate's "thinking" message is taken back
                assert press.original is not None and press.original.deleted
        assert h.bot.runner.gate.active(BEA.id) == 0
        assert not h.bot.runner.active


def refusal_of_press(data: dict[str, object]) -> str:
    text = str(data["content"])
    assert wording.GENERIC not in text
    return text
