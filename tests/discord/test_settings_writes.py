"""Settings changes from Discord and from the console go through one core service.

The same sequence of commands, typed in the console and sent as slash commands
by a member, leaves the same settings and is counted the same way against the
write limit: only real changes count, and the change past the limit is refused
in both, before anything is written.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import discord
import pytest

from bot.console import Console
from bot.console.commands import CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID
from bot.errors import UserFacingError
from bot.limits import TooManyWrites
from bot.store.scopes import Scope
from testing.apps import core_app
from testing.discord_harness import running_bot
from testing.fake_discord import FakeInteraction, FakeUser

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)

#: (console line, slash command, its options, counted against the limit?)
SEQUENCE = [
    ("/knobs set temperature=0.3", "knobs set", {"temperature": 0.3}, True),
    ("/knobs set temperature=0.3", "knobs set", {"temperature": 0.3}, False),  # no change
    ("/knobs reset top_k", "knobs reset", {"knob": "top_k"}, False),  # nothing to reset
    ("/system reset", "system reset", {}, False),  # no persona of its own
    ("/system set Be brief.", "system set", {"text": "Be brief."}, True),
]
PAST_THE_LIMIT = ("/knobs set temperature=0.5", "knobs set", {"temperature": 0.5})


async def content(itx: FakeInteraction) -> str:
    resp = await itx.wait_response()
    assert resp.data is not None
    return str(resp.data.get("content", ""))


async def test_the_write_limit_counts_the_same_changes_in_the_console_and_on_discord(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    limit = sum(counted for *_, counted in SEQUENCE)
    assert limit == 2  # the sequence ends exactly at the limit
    async with running_bot(tiny_model_dir, tmp_path, settings_write_limit=limit,
                           settings_write_window_s=3600) as h:
        out = io.StringIO()
        console = Console(h.app, out=out)
        member = FakeUser(4242, "admin")

        async def typed(line: str) -> str:
            out.seek(0)
            out.truncate()
            assert await console.handle(line)
            return out.getvalue()

        async def sent(name: str, options: dict[str, object]) -> str:
            itx = await h.command(name, options, permissions=MANAGE_CHANNELS, user=member)
            return await content(itx)

        for line, name, options, _ in SEQUENCE:
            said = await typed(line)
            answered = await sent(name, options)
            assert "error:" not in said and "too quickly" not in answered, (line, said, answered)
        # The next change is refused in both: the console says in how long, Discord says
        # when, as a timestamp every client shows in its own time zone.
        line, name, options = PAST_THE_LIMIT
        refused_here = await typed(line)
        refused_there = await sent(name, options)
        assert re.fullmatch(r"error: You're changing settings too quickly; try again in \d+ s\.\n",
                            refused_here), refused_here
        assert "too quickly" in refused_there and re.search(r"<t:\d+:R>", refused_there)

        # Both front-ends left the same settings, and nothing past the limit was written.
        store = h.app.store
        console_scope = Scope.channel(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID)
        discord_scope = Scope.channel(h.general, h.guild.id)
        for scope in (console_scope, discord_scope):
            assert await store.scope_overrides(scope) == {
                "temperature": 0.3, "system_prompt": "Be brief."}, scope
            assert len(await store.history(scope)) == limit, scope
        # Another member (and the console's own user) are limited on their own.
        other = await h.command("knobs set", {"top_k": 5}, permissions=MANAGE_CHANNELS,
                                user=FakeUser(4343, "other"))
        assert (await content(other)).startswith("Set top_k")


async def test_a_model_choice_counts_as_a_settings_change(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path, settings_write_limit=2,
                           settings_write_window_s=3600) as h:
        name = h.app.models.default
        here = Scope.channel(h.general, h.guild.id)
        for _ in range(2):  # the second choice changes nothing, so only the first counts
            chosen = await h.command("model set", {"name": name}, permissions=MANAGE_CHANNELS)
            assert f"`{name}` now answers" in await content(chosen)
        reset = await h.command("model reset", permissions=MANAGE_CHANNELS)
        assert "Model choice removed" in await content(reset)
        refused = await h.command("model set", {"name": name}, permissions=MANAGE_CHANNELS)
        assert "too quickly" in await content(refused)
        assert await h.app.store.scope_overrides(here) == {}  # the refused choice wrote nothing


async def test_two_changes_at_once_never_both_take_the_last_write(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A member with one write left sends two changes at once: one is made, one refused
    (a check and a later count let both through), and a change that fails gives its
    write back."""
    async with core_app(tiny_model_dir, tmp_path, settings_write_limit=2,
                        settings_write_window_s=3600) as app:
        settings = app.scope_settings
        here = Scope.channel(CONSOLE_GUILD_ID, CONSOLE_CHANNEL_ID)
        await settings.set_knobs(here, {"temperature": 0.3}, actor_id=7)
        both = await asyncio.gather(
            settings.set_knobs(here, {"top_k": 5}, actor_id=7),
            settings.set_knobs(here, {"top_p": 0.5}, actor_id=7),
            return_exceptions=True)
        assert sum(isinstance(r, TooManyWrites) for r in both) == 1, both
        own = await app.store.scope_overrides(here)
        assert ("top_k" in own) != ("top_p" in own)
        # Another member: a change refused by validation counts nothing.
        with pytest.raises(UserFacingError):
            await settings.set_knobs(here, {"temperature": 99}, actor_id=8)
        await settings.set_knobs(here, {"temperature": 0.4}, actor_id=8)
        await settings.set_knobs(here, {"temperature": 0.5}, actor_id=8)
