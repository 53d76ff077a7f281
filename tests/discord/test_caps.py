"""Admin caps hold: a member's per-ask max_new_tokens may narrow the scope's, never widen it.

With a server `max_new_tokens=8`, `/ask max_new_tokens:1024` gets 8 tokens, and
Regenerate uses the persona and knobs in effect when it is pressed. Replies are counted
from the engine's results, not from the footer's wording.
"""

from __future__ import annotations

from pathlib import Path

from bot.chat.request import within_cap
from bot.engine import GenerationResult
from bot.store.scopes import Scope
from testing.discord_harness import Harness, running_bot
from testing.fake_discord import StoredMessage

LONG = "word " * 400


def test_within_cap_narrows_only() -> None:
    assert within_cap({"max_new_tokens": 1024}, 8) == {"max_new_tokens": 8}
    assert within_cap({"max_new_tokens": 3, "temperature": 0.2}, 8) == {
        "max_new_tokens": 3, "temperature": 0.2,
    }
    assert within_cap({"min_new_tokens": 50, "max_new_tokens": 60}, 8) == {
        "min_new_tokens": 8, "max_new_tokens": 8,
    }
    assert within_cap({"max_new_tokens": True}, 8) == {"max_new_tokens": True}  # validation's


def results_of(h: Harness) -> list[GenerationResult]:
    out: list[GenerationResult] = []
    h.app.engine.on_result.append(out.append)
    return out


async def test_member_cannot_widen_the_server_cap(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with running_bot(tiny_model_dir, tmp_path, scripted=LONG) as h:
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 8}, actor_id=1)
        results = results_of(h)
        await h.ask("go on", max_new_tokens=1024)
        await h.ask("go on", max_new_tokens=3)
        await h.ask("go on", max_new_tokens=1024, min_new_tokens=500)
        await settled(h, results, 3)
        assert [(r.max_new_tokens, r.new_tokens) for r in results] == [(8, 8), (3, 3), (8, 8)]


async def settled(h: Harness, results: list[GenerationResult], count: int) -> None:
    """The engine reports a result just after the reply's last edit; wait for it."""
    await h.fake.wait_for(lambda: len(results) >= count or None, timeout=10)


def regen_button(msg: StoredMessage | None) -> str:
    assert msg is not None
    ids = [str(c.get("custom_id", "")) for row in msg.components
           for c in row.get("components", [])]
    return next(c for c in ids if c.startswith("llm:regen:"))


async def test_regenerate_uses_the_persona_and_cap_in_force(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    prompts: list[str] = []

    def record(tokens: list[str]) -> str:
        prompts.append("".join(tokens))
        return LONG

    async with running_bot(tiny_model_dir, tmp_path, scripted=record) as h:
        server = Scope.server(h.guild.id)
        await h.app.store.set_knobs(server, {"max_new_tokens": 20}, actor_id=1)
        await h.app.store.set_system_prompt(server, "You are a pirate.", actor_id=1)
        results = results_of(h)
        first = await h.ask("tell me", max_new_tokens=500, temperature=0.3)
        # The admin changes both after the ask; then the member presses Regenerate.
        await h.app.store.set_knobs(server, {"max_new_tokens": 5}, actor_id=1)
        await h.app.store.set_system_prompt(server, "You are a nun.", actor_id=1)
        press = await h.fake.inject_component(regen_button(first.original), channel_id=h.general)
        await h.finished(press)
        await settled(h, results, 2)
        assert [(r.max_new_tokens, r.new_tokens) for r in results] == [(20, 20), (5, 5)]
        assert "pirate" in prompts[0].replace("Ġ", " ")
        assert "nun" in prompts[1].replace("Ġ", " ") and "pirate" not in prompts[1]
        # The member's own narrower knob (temperature) is replayed as it was.
        record_ = await h.app.ask_log.load(press.id)
        assert record_ is not None
        assert record_.knobs["temperature"] == 0.3 and record_.system_prompt == "You are a nun."
