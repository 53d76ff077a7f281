"""The id-button factory against crafted and forged presses, through discord.py and the fake.

A custom id is text a client sends back. Every button's id is parsed and
range-checked in one place, and the buttons under an answer (versions,
Continue, Reasoning) name an answer that must belong to the press's server and
channel and to the reply on the pressed message. Each refusal is plain (never
the generic apology) and changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import wording
from bot.discord.buttons import DYNAMIC_ITEMS, IdButton, IdSelect
from bot.store.scopes import Scope
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FakeUser, StoredMessage, default_guild
from testing.stories import button, buttons, final_message, labels, refusal_of, refused

OTHER = default_guild((1 << 22) * 2000 + 1, "Other Guild")
STRANGER = FakeUser((1 << 22) * 2000 + 77, "mallory", "Mallory")
TEXT = " ".join(f"w{i}" for i in range(80))


@pytest.fixture
async def two_servers(smol_model_dir: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    """Replies cut at 8 tokens (so they offer Continue), in two servers."""
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.0,
                           guilds=[default_guild(), OTHER]) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
        yield h


async def cut_answer(h: Harness, prompt: str) -> StoredMessage:
    answer = final_message(await h.ask(prompt))
    assert "cut at the limit" in answer.content
    return answer


def answer_id_of(msg: StoredMessage) -> int:
    return int(button(msg, "llm:cont:").rsplit(":", 1)[1])


async def test_every_reply_button_is_declared_through_the_factory() -> None:
    assert all(issubclass(item, (IdButton, IdSelect)) for item in DYNAMIC_ITEMS)
    kinds = [(item.spec.prefix, item.spec.kind) for item in DYNAMIC_ITEMS]
    assert len(set(kinds)) == len(kinds) >= 13


@pytest.mark.parametrize("custom_id", [
    "llm:cont:" + str(2**63),        # one past SQLite's integers
    "llm:cont:" + "9" * 19,
    "llm:cont:-5",
    "llm:cont:abc",
    "llm:cont:",
    "llm:cont:1:2",                  # a part too many
    "llm:think:" + str(2**64),
    "llm:think:١٢",                  # digits, but not ASCII ones
    "llm:swipe:" + str(2**63) + ":next",
    "llm:swipe:1:sideways",          # no such way
    "llm:swipe:1",                   # no way at all
    "llm:stop:1",                    # a part missing
    "llm:regen:0",
    "llm:reply:-1",
    "lab:probs:" + str(2**63),       # the lab's buttons under a reply, too
    "lab:probs:-1",
    "lab:probs:abc",
    "lab:probs:",
    "lab:conf:" + str(2**64),
    "lab:conf:-1",
    "lab:conf:abc",
    "lab:conf:",
    "llm:inspect:" + str(2**63),     # Inspect, and its view's controls
    "llm:inspect:-1",
    "llm:inspect:1:2",
    "llm:itoken:abc",
    "llm:ipage:1:sideways",
    "llm:iback:",
    "llm:iwrite:" + "9" * 25,
    "lab:step:abc:1",                # the lab's /probs and /compare controls
    "lab:step:1",
    "lab:back:1:2",
    "lab:cregen:" + "9" * 25,
    "lab:cregen:-1",
    "lab:try:warmth",                # a knob with no Try
    "lab:knobhelp:1",
])
async def test_crafted_ids_on_every_button_get_a_plain_refusal(
    two_servers: Harness, custom_id: str
) -> None:
    h = two_servers
    itx = await h.fake.inject_component(custom_id, guild_id=h.guild.id, channel_id=h.general)
    await itx.wait_response(timeout=10)
    assert wording.BUTTON_INVALID in refusal_of(itx)


async def test_a_continue_forged_from_another_server_is_refused_and_changes_nothing(
    two_servers: Harness,
) -> None:
    h = two_servers
    answer = await cut_answer(h, "the secret plan")
    answer_id = answer_id_of(answer)
    before = await h.app.swipes.answer(answer_id)
    assert before is not None
    for custom_id in (f"llm:cont:{answer_id}", f"llm:think:{answer_id}",
                      f"llm:swipe:{answer_id}:next"):
        # The press comes from a message in the other server that carries the forged id.
        itx = await h.fake.inject_component(custom_id, guild_id=OTHER.id,
                                            channel_id=OTHER.channels[0].id, user=STRANGER)
        said = (await refused(itx, timeout=10))["content"]
        assert said == wording.warning(wording.BUTTON_OTHER_SERVER), said
        assert "w0" not in said
    after = await h.app.swipes.answer(answer_id)
    assert after == before
    assert not h.bot.runner.active and h.bot.runner.gate.active(STRANGER.id) == 0


async def test_a_version_press_from_another_channel_is_refused(two_servers: Harness) -> None:
    h = two_servers
    answer = await cut_answer(h, "for #general only")
    answer_id = answer_id_of(answer)
    itx = await h.fake.inject_component(f"llm:swipe:{answer_id}:prev", guild_id=h.guild.id,
                                        channel_id=h.help)
    assert wording.BUTTON_OTHER_CHANNEL in (await refused(itx, timeout=10))["content"]


async def test_a_press_naming_another_replys_answer_is_refused(two_servers: Harness) -> None:
    """A guessed answer id in this very channel, on a message that is not that answer's."""
    h = two_servers
    mine = await cut_answer(h, "mine")
    theirs = await cut_answer(h, "theirs")
    shown = mine.content
    for custom_id in (f"llm:cont:{answer_id_of(theirs)}", f"llm:think:{answer_id_of(mine)}",
                      f"llm:swipe:{answer_id_of(theirs)}:next"):
        # Without `message_id` the press comes on a message made to carry the forged id.
        itx = await h.fake.inject_component(custom_id, guild_id=h.guild.id,
                                            channel_id=h.general)
        assert wording.BUTTON_OTHER_REPLY in (await refused(itx, timeout=10))["content"]
    stored = await h.app.swipes.answer(answer_id_of(theirs))
    assert stored is not None and stored.continuations == 0
    # The genuine press on the answer's own message works: Continue carries it on.
    press = await h.fake.inject_component(button(mine, "llm:cont:"), message_id=mine.id)
    assert (await press.wait_response(timeout=10)).type == 6
    await h.fake.wait_for(lambda: (h.fake.message(mine.id).content != shown
                                   and is_final(h.fake.message(mine.id).content)) or None,
                          timeout=30)


async def test_regenerate_leaves_the_earlier_message_its_text_and_no_buttons(
    two_servers: Harness,
) -> None:
    """The new message carries the versions; the first keeps its text, stays bound to
    the answer (a Reply to it continues the conversation) and shows no buttons."""
    h = two_servers
    first = await cut_answer(h, "a joke")
    shown = first.content
    again = await h.fake.inject_component(button(first, "llm:regen:"), message_id=first.id)
    await h.finished(again)
    two = final_message(again)
    assert "2/2" in labels(two)
    await h.fake.wait_for(lambda: not buttons(h.fake.message(first.id)))
    assert h.fake.message(first.id).content == shown
    assert (await h.app.turns.by_message(first.id)) is not None
