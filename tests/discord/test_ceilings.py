"""Caps mean one thing: a ceiling, at the server and for the operator.

A server's `max_new_tokens` is a ceiling for its channels and threads: a channel
asking for more gets the server's value (and `/knobs set` says so). The operator's
`BOT_MAX_NEW_TOKENS_CEILING` bounds every scope, DMs included: more is refused when
set and held down when resolved, also for values stored before it was lowered.
Real SQLite files throughout; the last story runs the bot against the fake Discord.
"""

from __future__ import annotations

from pathlib import Path

import discord
import pytest

from bot.engine import GenerationResult
from bot.errors import InvalidKnobs
from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore
from testing.discord_harness import running_bot

G, C, T, U = 10, 20, 30, 40
ADMIN = 1
MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)


async def test_a_servers_max_is_a_ceiling_for_its_channels_and_threads(tmp_path: Path) -> None:
    async with await SettingsStore.open(tmp_path / "s.sqlite3") as store:
        assert await store.set_knobs(Scope.server(G), {"max_new_tokens": 64}, actor_id=ADMIN) == []
        notes = await store.set_knobs(
            Scope.channel(C, G), {"max_new_tokens": 200, "min_new_tokens": 100}, actor_id=ADMIN
        )
        assert len(notes) == 1
        assert "ceiling" in notes[0] and "(64)" in notes[0]
        assert "max_new_tokens and min_new_tokens are 64" in notes[0]
        await store.set_knobs(Scope.channel(T, G), {"max_new_tokens": 300}, actor_id=ADMIN)

        channel = await store.resolve(Location(G, C))
        assert (channel.knobs.max_new_tokens, channel.knobs.min_new_tokens) == (64, 64)
        assert channel.sources["max_new_tokens"] == "server"
        thread = await store.resolve(Location(G, T, parent_channel_id=C))
        assert thread.knobs.max_new_tokens == 64 and thread.sources["max_new_tokens"] == "server"

        # Below the ceiling a channel's own value holds, and says where it comes from.
        assert await store.set_knobs(
            Scope.channel(C, G), {"max_new_tokens": 32, "min_new_tokens": -1}, actor_id=ADMIN
        ) == []
        channel = await store.resolve(Location(G, C))
        assert channel.knobs.max_new_tokens == 32 and channel.sources["max_new_tokens"] == "channel"

        # The stored channel value was kept: it applies again once the server's goes.
        await store.reset_knobs(Scope.server(G), ["max_new_tokens"], actor_id=ADMIN)
        thread = await store.resolve(Location(G, T, parent_channel_id=C))
        assert thread.knobs.max_new_tokens == 300 and thread.sources["max_new_tokens"] == "thread"
        # Another server's ceiling never reaches this one.
        await store.set_knobs(Scope.server(G + 1), {"max_new_tokens": 5}, actor_id=ADMIN)
        assert (await store.resolve(Location(G, C))).knobs.max_new_tokens == 32


async def test_the_operators_ceiling_holds_in_every_scope_dms_included(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    # Values stored while there was no ceiling (or a higher one)...
    async with await SettingsStore.open(path) as store:
        await store.set_knobs(Scope.server(G), {"max_new_tokens": 900}, actor_id=ADMIN)
        await store.set_knobs(Scope.channel(C, G), {"max_new_tokens": 1000}, actor_id=ADMIN)
        await store.set_knobs(
            Scope.dm(U), {"max_new_tokens": 800, "min_new_tokens": 700}, actor_id=U
        )
    # ...are held to it once the operator sets one.
    async with await SettingsStore.open(path, max_new_tokens_ceiling=100) as store:
        for loc in (Location(G, C), Location(G, T, parent_channel_id=C), Location(G + 1, C + 1),
                    Location(None, C, user_id=U), Location(None, C, user_id=U + 1)):
            eff = await store.resolve(loc)
            assert eff.knobs.max_new_tokens == 100, loc
            assert eff.sources["max_new_tokens"] == "operator", loc
        dm = await store.resolve(Location(None, C, user_id=U))
        assert dm.knobs.min_new_tokens == 100 and dm.sources["min_new_tokens"] == "operator"

        for scope in (Scope.dm(U), Scope.server(G), Scope.channel(C, G)):
            with pytest.raises(InvalidKnobs, match="at most 100 new tokens"):
                await store.set_knobs(scope, {"max_new_tokens": 101}, actor_id=ADMIN)
            with pytest.raises(InvalidKnobs, match="min_new_tokens = 200"):
                await store.set_knobs(scope, {"min_new_tokens": 200}, actor_id=ADMIN)
        # Refused means nothing was written.
        assert (await store.scope_overrides(Scope.dm(U)))["max_new_tokens"] == 800
        await store.set_knobs(Scope.dm(U), {"max_new_tokens": 40, "min_new_tokens": 1},
                              actor_id=U)
        dm = await store.resolve(Location(None, C, user_id=U))
        assert (dm.knobs.max_new_tokens, dm.sources["max_new_tokens"]) == (40, "dm")


async def test_ceilings_through_the_bot(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A DM ask for 1024 tokens gets the operator's 6; /knobs set names the server's ceiling."""
    results: list[GenerationResult] = []
    async with running_bot(tiny_model_dir, tmp_path, scripted="word " * 300,
                           max_new_tokens_ceiling=6) as h:
        h.app.engine.on_result.append(results.append)
        await h.ask("go on", max_new_tokens=1024, dm=True)
        await h.ask("go on", max_new_tokens=3)
        await h.fake.wait_for(lambda: len(results) >= 2 or None, timeout=10)
        assert sorted((r.max_new_tokens, r.new_tokens) for r in results) == [(3, 3), (6, 6)]

        refused = await h.command("knobs set", {"max_new_tokens": 7}, permissions=MANAGE_CHANNELS)
        assert "at most 6 new tokens" in (await refused.wait_response()).data["content"]
        await h.app.store.set_knobs(Scope.server(h.guild.id), {"max_new_tokens": 4},
                                    actor_id=ADMIN)
        ok = await h.command("knobs set", {"max_new_tokens": 5}, permissions=MANAGE_CHANNELS)
        said = (await ok.wait_response()).data["content"]
        assert "Set max_new_tokens = `5` for this channel." in said
        assert "This server's max_new_tokens (4) is a ceiling" in said
