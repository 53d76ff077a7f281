"""Two shard hosts against one fake Discord, and moving a shard's settings between hosts.

Each host is what `python -m bot run` builds with `BOT_SHARD_COUNT=2` and its own
`BOT_SHARD_IDS`: its own engine, its own SQLite file, a `LlamaBot` from
`make_bot`. Discord routes a guild to shard ``(guild_id >> 22) % shard_count``, so
each host must see, answer and store only its own servers.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.app import App
from bot.discord.client import LlamaBot, make_bot
from bot.engine import GenerationResult
from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore
from bot.store.transfer import export_guilds, export_shard
from testing.apps import core_app
from testing.discord_harness import is_final
from testing.fake_discord import FakeDiscord, FakeInteraction, default_guild
from testing.processes import clean_env, run_bot_cli

MANAGE_CHANNELS = str(discord.Permissions(manage_channels=True).value)
G0 = default_guild((1000 << 22) | 1, "Shard Zero")  # (id >> 22) % 2 == 0
G1 = default_guild((1001 << 22) | 2, "Shard One")  # (id >> 22) % 2 == 1


@dataclass
class Host:
    """One shard host: its bot, app and every reply its engine produced."""

    bot: LlamaBot
    app: App
    results: list[GenerationResult] = field(default_factory=list)


@contextlib.asynccontextmanager
async def shard_host(
    fake: FakeDiscord, model_dir: Path, db: Path, shard_id: int
) -> AsyncIterator[Host]:
    async with core_app(model_dir, db.parent, database_path=db, shard_count=2,
                        shard_ids=[shard_id]) as app:
        # The production factory, with the fake's test-friendly ready timeout.
        bot = make_bot(app, guild_ready_timeout=0.05)
        assert isinstance(bot, LlamaBot)
        host = Host(bot=bot, app=app)
        app.engine.on_result.append(host.results.append)
        async with fake.run_bot(bot):
            yield host


async def finished(fake: FakeDiscord, itx: FakeInteraction) -> str:
    """The original response once its footer is there."""
    def final() -> str | None:
        msg = itx.original
        return msg.content if msg is not None and is_final(msg.content) else None

    return await fake.wait_for(final, timeout=30)


async def reported(fake: FakeDiscord, host: Host) -> None:
    """The engine reports a result just after the reply's last event: wait for it."""
    await fake.wait_for(lambda: host.results or None, timeout=10)


async def test_each_shard_host_sees_answers_and_stores_only_its_own_guild(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert (G0.shard_id(2), G1.shard_id(2)) == (0, 1)
    async with (
        FakeDiscord(guilds=[G0, G1], shard_count=2) as fake,
        shard_host(fake, tiny_model_dir, tmp_path / "host0.sqlite3", 0) as host0,
        shard_host(fake, tiny_model_dir, tmp_path / "host1.sqlite3", 1) as host1,
    ):
        hosts = {0: host0, 1: host1}
        for shard, host in hosts.items():
            assert host.bot.shard_ids == [shard] and host.bot.shard_count == 2
            assert [g.id for g in host.bot.guilds] == [(G0, G1)[shard].id]

        for shard, guild in enumerate((G0, G1)):
            others = len(hosts[1 - shard].results)
            itx = await fake.inject_interaction(
                "ask", {"prompt": f"hello shard {shard}", "max_new_tokens": 8},
                guild_id=guild.id,
            )
            content = await finished(fake, itx)
            assert content.splitlines()[-1].startswith("-# 8 tokens · ")  # the footer
            await reported(fake, hosts[shard])
            assert len(hosts[shard].results) == 1
            assert len(hosts[1 - shard].results) == others  # the other host never saw it
            if shard == 0:
                assert host1.app.engine.tokens_generated == 0

        # Every INTERACTION_CREATE went only to the session of the shard owning its guild.
        for session in fake.sessions:
            assert session.shard is not None
            for frame in session.history:
                if frame["t"] == "INTERACTION_CREATE":
                    assert session.covers(int(frame["d"]["guild_id"]))

        channel = G1.channels[0].id
        itx = await fake.inject_interaction(
            "knobs set", {"temperature": 1.5, "top_k": 9}, guild_id=G1.id,
            channel_id=channel, permissions=MANAGE_CHANNELS,
        )
        assert "temperature" in (await itx.wait_response()).data["content"]
        assert await host1.app.store.scope_overrides(Scope.channel(channel, G1.id)) == {
            "temperature": 1.5, "top_k": 9,
        }
        effective = await host1.app.store.resolve(Location(G1.id, channel))
        assert effective.sources["temperature"] == "channel"
        everything = await export_guilds(host0.app.store, lambda _gid: True)
        assert everything["settings"] == [] and everything["history"] == []


# --- moving a shard's settings through the CLI -------------------------------------


def cli(db: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_bot_cli(clean_env(BOT_DATABASE_PATH=str(db)), "settings", *args, stdin=stdin,
                       timeout=60)


@pytest.mark.slow
async def test_cli_export_and_import_move_one_shard_with_its_history(tmp_path: Path) -> None:
    old_db, new_db = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    c0, c1, thread = G0.channels[0].id, G1.channels[0].id, G1.channels[2].id
    async with await SettingsStore.open(old_db) as old:
        await old.set_knobs(Scope.server(G0.id), {"temperature": 0.2}, actor_id=10)
        await old.set_system_prompt(Scope.channel(c0, G0.id), "shard zero", actor_id=10)
        await old.set_knobs(Scope.server(G1.id), {"top_k": 5}, actor_id=11)
        await old.set_knobs(Scope.server(G1.id), {"top_k": 6}, actor_id=12)
        await old.set_knobs(Scope.channel(c1, G1.id), {"stop": ["\n###"], "top_p": 0.5},
                            actor_id=13)
        await old.set_system_prompt(Scope.channel(thread, G1.id), "You are a pirate.",
                                    actor_id=14)
        await old.set_knobs(Scope.dm(77), {"top_p": 0.2}, actor_id=77)
        expected = await export_shard(old, 1, 2)
    assert {r["guild_id"] for r in expected["settings"]} == {G1.id}

    dump = tmp_path / "shard1.json"
    out = cli(old_db, "export", "--shard", "1", "--shard-count", "2", "--file", str(dump))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "exported 4 settings" in out.stderr
    out = cli(new_db, "import", "--shard", "1", "--shard-count", "2", "--file", str(dump))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("imported 4 settings rows")

    def strip_time(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "exported_at"}

    async with await SettingsStore.open(new_db) as new:
        # Values, who set them and when, and the history: all as they were.
        assert strip_time(await export_shard(new, 1, 2)) == strip_time(expected)
        assert (await export_shard(new, 0, 2))["settings"] == []
        here = await new.resolve(Location(G1.id, thread, parent_channel_id=c1))
        assert here.system_prompt == "You are a pirate."
        assert here.knobs.top_k == 6 and here.knobs.stop == ("\n###",)
        assert here.sources["top_k"] == "server" and here.sources["top_p"] == "channel"
        changes = await new.history(Scope.server(G1.id))
        assert [(c.new_value, c.actor_id) for c in changes] == [(6, 12), (5, 11)]

    # A whole-host dump through stdin: only shard 1's guild lands, DMs never do.
    full = cli(old_db, "export", "--shard", "0", "--shard-count", "1")
    assert full.returncode == 0, full.stderr
    assert {r["guild_id"] for r in json.loads(full.stdout)["settings"]} == {G0.id, G1.id}
    third = tmp_path / "third.sqlite3"
    out = cli(third, "import", "--shard", "1", "--shard-count", "2", stdin=full.stdout)
    assert out.returncode == 0, out.stderr
    assert "imported 4 settings rows" in out.stderr and "skipped 2" in out.stderr
    async with await SettingsStore.open(third) as store:
        assert strip_time(await export_shard(store, 1, 2)) == strip_time(expected)
        assert (await export_guilds(store, lambda _gid: True))["settings"] == expected["settings"]


@pytest.mark.slow
def test_cli_settings_errors_are_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    cases = [
        (("export", "--shard", "1"), 2, "--shard-count"),
        (("export", "--shard", "2", "--shard-count", "2"), 2, "between 0 and 1"),
        (("import", "--shard", "0", "--shard-count", "2", "--file", str(tmp_path / "no.json")),
         1, "does not exist"),
        (("export", "--shard", "0", "--shard-count", "2"), 1, "no settings database"),
    ]
    for args, code, words in cases:
        out = cli(db, *args)
        assert out.returncode == code, (args, out.stderr)
        assert out.stderr.startswith("error: ") and words in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    out = cli(db, "import", "--shard", "0", "--shard-count", "2", "--file", str(bad))
    assert out.returncode == 1 and "is not JSON" in out.stderr
    assert not db.exists()  # nothing was created for a dump that could not be read
