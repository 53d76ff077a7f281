"""Hostile members: what one member (or a crafted client) can do to the bot.

Long conversations never stall the bot; continuations are bound to where they
started; refused presses leave nothing behind; server-only commands are refused
from DMs; a reply a moderator deletes stays deleted; refusals do not amplify;
crafted ids and option values get a plain refusal. The core stories run a real tiny
CTranslate2 model and a real SQLite file; the Discord ones the real discord.py client
against the fake Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.chat.history import fit_history
from bot.chat.turns import TurnAsk
from bot.engine import Engine, GenerationRequest, PreparedPrompt, Turn
from bot.errors import PromptTooLong
from bot.knobs import Knobs
from bot.limits import _TRACKED_LIMIT, AskGate, QuietRefusals
from bot.store.scopes import Location, Scope
from bot.store.turns import NewExchange
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FakeUser, StoredMessage
from testing.stories import refusal_of, watch_prepares

LOCATION = Location(guild_id=10, channel_id=20)


def _history(pairs: int) -> tuple[Turn, ...]:
    out: list[Turn] = []
    for n in range(pairs):
        out += [Turn("user", f"Ada: question {n} about the hike"),
                Turn("assistant", f"{n}: pack water, a jacket and snacks")]
    return tuple(out)



# --- long conversations never stall the bot ---------------------------------------------------


@pytest.mark.parametrize("pairs", [50, 250])
async def test_fitting_a_long_history_renders_only_about_a_window_of_it(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch, pairs: int
) -> None:
    """Each turn is counted once; only candidates near the window's size are rendered.

    Before, the first probe rendered the whole chain and a binary search rendered
    halves of it, each render quadratic in its length: seconds for 500 turns.
    """
    request = GenerationRequest(prompt="and the rain?", knobs=Knobs(max_new_tokens=32),
                                system_prompt="Be brief.", history=_history(pairs))
    prepares = watch_prepares(tiny_engine, monkeypatch)
    counted: list[str] = []
    real_count = getattr(tiny_engine, "count_tokens", None)

    def count(text: str) -> int:
        counted.append(text)
        assert real_count is not None
        return int(real_count(text))

    monkeypatch.setattr(tiny_engine, "count_tokens", count, raising=False)
    fitted = fit_history(tiny_engine, request)
    kept = len(fitted.request.history)
    assert 0 < kept < len(request.history)
    # Every turn's text counted once (plus the prompt and persona), not per probe.
    assert len(counted) <= len(request.history) + 2
    rendered_turns = sum(len(r.history) for r in prepares)
    assert rendered_turns <= 4 * kept + 8, (rendered_turns, kept)
    assert len(prepares) <= 6
    # Still the newest turns, and no fewer than fit (one more exchange would not).
    assert fitted.request.history == request.history[-kept:]
    one_more = replace(request, history=request.history[-kept - 2:])
    with contextlib.suppress(PromptTooLong):  # far too long is "would not fit" too
        assert tiny_engine.prepare(one_more).clamped



async def test_preparing_a_500_turn_chain_runs_off_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering and encoding happen in a worker thread: the loop keeps serving others."""
    parent = None
    for n in range(250):
        _, answer = await app.turns.add_exchange(NewExchange(
            parent_id=parent, question=f"question {n}", answer=f"answer {n}", author_id=1,
            author_name="Ada", ask_id=None, guild_id=10, channel_id=20, private=False))
        parent = answer.id
    threads: list[threading.Thread] = []
    real = app.engine.prepare

    def prepare(request: GenerationRequest) -> PreparedPrompt:
        threads.append(threading.current_thread())
        return real(request)

    monkeypatch.setattr(app.engine, "prepare", prepare)
    # A short budget, set here rather than left to the default (512), so the
    # tiny model's window keeps some of the history.
    turn = await app.chat.prepare(TurnAsk(location=LOCATION, prompt="and now?", author_id=1,
                                           author_name="Ada", parent_id=parent, explicit=True,
                                           overrides={"max_new_tokens": 64}))
    assert 0 < len(turn.request.history) < 500
    assert threads and all(t is not threading.main_thread() for t in threads)


# --- a reply a moderator deletes stays deleted ------------------------------------------------

LONG_SCRIPT = "word " * 400  # ~8 s at 20 ms a token: deleted long before its end


@pytest.fixture
async def h(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_bot(tiny_model_dir, tmp_path, scripted=LONG_SCRIPT,
                           script_delay=0.02) as harness:
        yield harness


def bot_messages_after(h: Harness, message_id: int) -> list[StoredMessage]:
    me = str(h.fake.bot_user.id)
    return [m for m in h.fake.messages.values()
            if m.id > message_id and m.author.get("id") == me]


async def delete_while_streaming(h: Harness, reply: Callable[[], StoredMessage | None]) -> None:
    """Wait for the reply to be streaming text, delete it as a moderator, and check that
    its generation was cancelled and nothing was posted again."""
    streaming = await h.fake.wait_for(
        lambda: ((m := reply()) is not None and "word" in m.content and m) or None, timeout=30)
    ask = next(iter(h.bot.runner.active.values()))
    assert ask.gen is not None
    last_id = max(h.fake.messages)
    await h.fake.moderator_delete(streaming.id)
    result = await asyncio.wait_for(ask.gen.result(), timeout=15)
    assert result.finish_reason == "cancelled"
    await h.fake.wait_for(lambda: not h.bot.runner.active or None, timeout=15)
    await asyncio.sleep(0.5)  # anything it would still post, it would have posted by now
    assert bot_messages_after(h, last_id) == []
    assert h.fake.message(streaming.id).deleted


async def test_a_deleted_ask_reply_stays_deleted_and_stops_generating(h: Harness) -> None:
    itx = await h.command("ask", {"prompt": "tell me a long story"})
    await delete_while_streaming(h, lambda: itx.original)


async def test_a_deleted_mention_reply_stays_deleted_and_stops_generating(h: Harness) -> None:
    asked = await h.fake.inject_message("tell me a long story", mention_bot=True,
                                        channel_id=h.general)
    me = str(h.fake.bot_user.id)

    def reply() -> StoredMessage | None:
        return next((m for m in h.fake.channel_messages(h.general)
                     if m.id > asked.id and m.author.get("id") == me), None)

    await delete_while_streaming(h, reply)


# --- refusals do not amplify ------------------------------------------------------------------


async def test_thirty_mentions_during_a_reply_get_one_refusal(h: Harness) -> None:
    member = h.guild.members[0]
    first = await h.fake.inject_message("tell me a long story", mention_bot=True,
                                        channel_id=h.general, user=member)
    await h.fake.wait_for(lambda: h.bot.runner.active or None, timeout=30)
    for n in range(30):
        await h.fake.inject_message(f"and {n}?", mention_bot=True, channel_id=h.general,
                                    user=member)

    def refusals() -> list[StoredMessage]:
        return [m for m in bot_messages_after(h, first.id) if "in progress" in m.content]

    await h.fake.wait_for(lambda: refusals() or None, timeout=15)
    await asyncio.sleep(1.0)  # the other 29 would have been answered by now
    assert len(refusals()) == 1
    assert h.bot.runner.active  # the live reply runs on


# --- crafted ids and raw option values get a plain refusal ------------------------------------




@pytest.mark.parametrize("custom_id", [
    "llm:regen:" + "9" * 25,                  # beyond 64 bits
    "llm:reply:" + "9" * 5000,                # thousands of digits
    "llm:stop:" + str(2**64) + ":1",
    "llm:stop:1:" + "9" * 90,
    "llm:regen:" + str(2**63),
])
async def test_crafted_custom_ids_get_a_plain_refusal(h: Harness, custom_id: str) -> None:
    itx = await h.fake.inject_component(custom_id, guild_id=h.guild.id, channel_id=h.general)
    await itx.wait_response(timeout=10)
    assert "not valid" in refusal_of(itx)


@pytest.mark.parametrize("value", [12345, True, ["a"], None, {"x": 1}])
async def test_a_non_string_prompt_gets_a_plain_refusal(h: Harness, value: Any) -> None:
    itx = await h.fake.inject_interaction(
        "ask", [{"name": "prompt", "type": 3, "value": value}],
        guild_id=h.guild.id, channel_id=h.general)
    await itx.wait_response(timeout=10)
    refusal_of(itx)
    assert not h.bot.runner.active


async def test_a_display_name_with_invalid_unicode_never_refuses_the_ask(h: Harness) -> None:
    member = FakeUser(h.guild.id + 777, "odd", "Odd \ud800 Name")
    h.guild.members.append(member)
    await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
    asked = await h.fake.inject_message("hello", mention_bot=True, channel_id=h.general,
                                        user=member)
    me = str(h.fake.bot_user.id)

    def answer() -> StoredMessage | None:
        return next((m for m in h.fake.channel_messages(h.general)
                     if m.id > asked.id and m.author.get("id") == me and is_final(m.content)),
                    None)

    said = await h.fake.wait_for(answer, timeout=30)
    assert "⚠️" not in said.content
    itx = await h.command("ask", {"prompt": "hi"}, user=member)
    await h.finished(itx)
    assert "⚠️" not in h.full_text(itx)


# --- server-only commands are refused from DMs, whatever the client says ----------------------


@pytest.mark.parametrize("name", ["status"])
async def test_server_only_commands_from_a_dm_are_refused(h: Harness, name: str) -> None:
    member = h.guild.members[0]
    itx = await h.fake.inject_interaction(name, {}, dm=True, user=member,
                                          permissions=str(2**40 - 1))
    await itx.wait_response(timeout=10)
    assert "only works in a server" in refusal_of(itx)


async def test_a_dm_cannot_write_server_settings_whatever_the_client_sends(h: Harness) -> None:
    """/system works in DMs (a persona of one's own), but only there.

    Sent from a DM with scope "server" and every permission bit set, it is refused and
    nothing is written to the DM or to any server.
    """
    member = h.guild.members[0]
    itx = await h.fake.inject_interaction(
        "system set", {"text": "DM persona", "scope": "server"}, dm=True, user=member,
        permissions=str(2**40 - 1))
    await itx.wait_response(timeout=10)
    assert "DMs have no server settings" in refusal_of(itx)
    dm = Location(guild_id=None, channel_id=member.id + 7, user_id=member.id)
    assert (await h.app.store.resolve(dm)).system_prompt != "DM persona"
    assert (await h.app.store.resolve(Location(guild_id=h.guild.id, channel_id=h.general))
            ).system_prompt != "DM persona"


# --- every continuation is bound to where it started ------------------------------------------


@pytest.fixture
async def quick(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_bot(tiny_model_dir, tmp_path, scripted="a short answer",
                           script_delay=0.0) as harness:
        yield harness


async def test_a_reply_button_pressed_in_another_channel_is_refused(quick: Harness) -> None:
    h = quick
    asked = await h.ask("where do we meet?")
    itx = await h.fake.inject_component(f"llm:reply:{asked.id}", guild_id=h.guild.id,
                                        channel_id=h.help)
    await itx.wait_response(timeout=10)
    assert "another channel" in refusal_of(itx)
    # Where it started, the same press opens the follow-up box.
    here = await h.fake.inject_component(f"llm:reply:{asked.id}", guild_id=h.guild.id,
                                         channel_id=h.general)
    assert (await here.wait_response(timeout=10)).type == 9


async def test_a_message_replying_to_an_answer_from_another_channel_is_refused(
    quick: Harness,
) -> None:
    h = quick
    asked = await h.ask("the secret plan for #general")
    assert asked.original is not None
    crafted = await h.fake.inject_message("go on", mention_bot=True, channel_id=h.help,
                                          reply_to=asked.original.id)
    me = str(h.fake.bot_user.id)

    def said() -> StoredMessage | None:
        return next((m for m in h.fake.channel_messages(h.help)
                     if m.id > crafted.id and m.author.get("id") == me), None)

    answer = await h.fake.wait_for(said, timeout=30)
    assert "another channel" in answer.content
    assert await h.app.turns.head(f"thread:{h.help}") is None


# --- nothing grows with refused presses -------------------------------------------------------


def state_sizes(h: Harness) -> dict[str, int]:
    """Everything a press could leave behind in the bot's memory."""
    runner = h.bot.runner
    store = h.bot._connection._view_store
    return {
        "active": len(runner.active),
        "gate_active": len(runner.gate._active),
        "gate_last": len(runner.gate._last),
        "background": len(runner._background),
        "refusals": len(getattr(runner, "quiet_refusals", ())),
        "views": len(store._views),
        "modals": len(store._modals),
        "dynamic": len(store._dynamic_items),
        "engine_waiting": h.app.engine.queue_depth,
    }


async def test_a_thousand_refused_presses_leave_the_runner_as_it_was(quick: Harness) -> None:
    h = quick
    asked = await h.ask("where do we meet?")
    member = h.guild.members[0]
    await asyncio.sleep(0.3)
    before = state_sizes(h)
    presses = [
        f"llm:reply:{asked.id}",           # another channel (refused)
        f"llm:regen:{asked.id}",           # another channel
        f"llm:stop:{asked.id}:{member.id}",  # finished already
        "llm:regen:" + "9" * 30,           # beyond 64 bits
        f"llm:reply:{asked.id + 1}",       # no such ask
    ]
    for n in range(1000):
        itx = await h.fake.inject_component(presses[n % len(presses)], guild_id=h.guild.id,
                                            channel_id=h.help, user=member)
        # Let the bot keep up (a press unanswered for 3 s expires, as on Discord, and a
        # busy machine falls behind on long bursts), and check each is answered plainly.
        if n % 10 == 9:
            await itx.wait_response(timeout=10)
            refusal_of(itx)
    await h.fake.wait_for(lambda: all(i.response for i in h.fake.interactions.values())
                          or None, timeout=60)
    # A Regenerate is acknowledged before the store says no: its refusal (and the
    # member's slot) may still be on the way when every press has its response.
    await h.fake.wait_for(lambda: state_sizes(h) == before or None, timeout=30)


def test_refusal_memory_is_bounded_and_forgets_after_its_window() -> None:
    now = [0.0]
    quiet = QuietRefusals(30.0, limit=3, clock=lambda: now[0])
    assert quiet.should_say(1) and not quiet.should_say(1)
    for user in range(2, 12):
        assert quiet.should_say(user)
    assert len(quiet) == 3
    now[0] = 31.0
    assert quiet.should_say(11)  # a new window: told once more


async def test_the_ask_gate_remembers_a_bounded_number_of_members() -> None:
    gate = AskGate(1, cooldown_s=0.0)
    for user in range(_TRACKED_LIMIT + 50):
        with await gate.take(user):
            gate.accepted(user)
    assert len(gate._last) == _TRACKED_LIMIT and not gate._active
