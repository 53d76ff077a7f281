"""Continue runs on the runner's one lifecycle: what /ask does, Continue does too.

Through the real discord.py client and the fake Discord: the cooldown, the
member's slot freed before the final edit, the "Discord kept failing" message,
and the loading notice when the answer's model must load first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot import wording
from bot.hosting.catalog import MB, weight_bytes_of
from bot.store.scopes import Scope
from testing.discord_harness import Harness, is_final, running_bot
from testing.fake_discord import FakeUser, RecordedRequest, Routes, StoredMessage
from testing.model_hosts import MANAGE_SERVER, entries, models_bot, set_model
from testing.stories import button, final_message

TEXT = " ".join(f"w{i}" for i in range(200))
BOB = FakeUser((1 << 22) * 1000 + 77, "bob", "Bob")


async def cut_answer(h: Harness, prompt: str = "count", **kw: Any) -> StoredMessage:
    answer = final_message(await h.ask(prompt, **kw))
    assert "cut at the limit" in answer.content
    return answer


def continued(h: Harness, msg: StoredMessage, before: str) -> StoredMessage | None:
    now = h.fake.message(msg.id)
    return now if now.content != before and is_final(now.content) else None


def is_continue_footer(req: RecordedRequest) -> bool:
    content = (req.json or {}).get("content") if isinstance(req.json, dict) else None
    return (req.method == "PATCH" and req.route == Routes.EDIT_ORIGINAL.split(" ", 1)[1]
            and isinstance(content, str) and is_final(content))


async def test_continue_keeps_the_cooldown_and_starts_it(smol_model_dir: Path,
                                                         tmp_path: Path) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.0,
                           user_cooldown_s=60) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
        asker = h.guild.members[0]
        answer = await cut_answer(h, user=asker)
        answer_id = int(button(answer, "llm:cont:").rsplit(":", 1)[1])
        # The asker's Continue right after their ask: refused as a second ask would be.
        refused = await h.fake.inject_component(button(answer, "llm:cont:"),
                                                message_id=answer.id, user=asker)
        said = (await refused.wait_response(timeout=10)).data["content"]
        assert "Slow down" in said
        stored = await h.app.swipes.answer(answer_id)
        assert stored is not None and stored.continuations == 0
        # Someone else's Continue of the public reply is taken, and starts their cooldown.
        before = answer.content
        taken = await h.fake.inject_component(button(answer, "llm:cont:"),
                                              message_id=answer.id, user=BOB)
        assert (await taken.wait_response(timeout=10)).type == 6
        await h.fake.wait_for(lambda: continued(h, answer, before), timeout=30)
        again = await h.command("ask", {"prompt": "more"}, user=BOB)
        assert "Slow down" in (await again.wait_response(timeout=10)).data["content"]


async def test_continue_frees_the_slot_before_its_final_edit(smol_model_dir: Path,
                                                             tmp_path: Path) -> None:
    """Held by the fake before it is applied, the final edit finds the slot free already."""
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.0) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
        asker = h.guild.members[0]
        answer = await cut_answer(h, user=asker)
        seen = len(h.fake.requests)
        h.fake.delay(is_continue_footer, 1.5, times=1)
        await h.fake.inject_component(button(answer, "llm:cont:"), message_id=answer.id,
                                      user=asker)

        def held() -> bool:
            return any(is_continue_footer(r) for r in h.fake.requests[seen:])

        await h.fake.wait_for(lambda: held() or None, timeout=30)
        assert h.bot.runner.gate.active(asker.id) == 0
        assert h.bot.runner.active  # the Continue itself is still making its last edit
        again = await h.command("ask", {"prompt": "next"}, user=asker)
        await h.finished(again)
        assert again.original is not None and "w0" in again.original.content


async def test_a_continue_discord_keeps_refusing_ends_with_a_clear_message(
    smol_model_dir: Path, tmp_path: Path, quick_retries: None
) -> None:
    async with running_bot(smol_model_dir, tmp_path, scripted=TEXT, script_delay=0.0) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
        answer = await cut_answer(h)
        fault = h.fake.fail_next(is_continue_footer, 503, times=5)  # discord.py tries 5 times
        press = await h.fake.inject_component(button(answer, "llm:cont:"), message_id=answer.id)
        notes = await press.wait_followups(1, timeout=30)
        assert fault.hits == 5
        assert notes[0].content == wording.undelivered(503)
        await h.fake.wait_for(lambda: not h.bot.runner.active or None, timeout=10)
        assert h.bot.runner.gate.active(h.guild.members[0].id) == 0
        h.fake.clear_faults()
        after = await h.ask("and now?")
        assert after.original is not None and is_final(after.original.content)


async def test_continue_says_its_model_is_loading_on_the_pressed_page(
    smol_model_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """The answer's model was unloaded for another: the press is acknowledged at once and
    the page reads "loading" under the text so far, as an /ask's page does."""
    smol, tiny = weight_bytes_of(smol_model_dir), weight_bytes_of(tiny_dir)
    budget_mb = (smol + tiny // 2) / MB  # room for smol, or for tiny, never both
    async with models_bot(tmp_path, entries(smol_model_dir, tiny_dir),
                          model_memory_budget_mb=budget_mb) as h:
        registry = h.app.models.registry
        answer = final_message(await h.ask("Count from one to fifty, in words."))
        if "cut at the limit" not in answer.content:
            pytest.fail(f"the greedy reply was expected to use its budget: {answer.content!r}")
        text = answer.content.rsplit("\n", 1)[0]
        await set_model(h, "tiny", h.help, permissions=MANAGE_SERVER)
        await h.ask("Say hi.", channel_id=h.help)
        assert registry.evictions == 1  # smol made room for tiny
        before = answer.content
        press = await h.fake.inject_component(button(answer, "llm:cont:"), message_id=answer.id)
        assert (await press.wait_response(timeout=10)).type == 6
        done = await h.fake.wait_for(lambda: continued(h, answer, before), timeout=120)
        seen = [rev["content"] for rev in h.fake.message(answer.id).revisions]
        loading = [c for c in seen if "Loading the model `smol`" in c]
        assert loading, seen
        assert all(c.startswith(text) for c in loading), loading  # the text stays on screen
        assert done.content.startswith(text)
        assert registry.evictions == 2
