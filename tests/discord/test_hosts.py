"""Several hosts on one PostgreSQL database: a member's limits are the same on all of them.

Hosts here are App instances (each with its own pool, gate and limiter, as each
bot process has) or whole bots on fake Discords, all on one database of
`testing.postgres`'s throwaway server; a dead host is a process killed with
SIGKILL. One host on SQLite keeps its limits in memory, with no SQL on an ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bot import wording
from bot.app import App
from bot.discord.client import LlamaBot, make_bot
from bot.discord.runner import AskRunner
from bot.engine import Engine
from bot.errors import UserFacingError
from bot.limits import AskGate, TooManyWrites, WriteTaken
from bot.store.copy import tables
from bot.store.member_limits import EPHEMERAL_TABLES, MemberLimits
from bot.store.scopes import Scope
from testing.apps import core_app
from testing.discord_harness import is_final, running_bot
from testing.fake_discord import FakeDiscord, FakeGuild, FakeUser, Routes, default_guild
from testing.postgres import postgres_server, postgres_url
from testing.processes import ROOT, clean_env

__all__ = ["postgres_server", "postgres_url"]

ADA, BOB = FakeUser(601, "ada", "Ada"), FakeUser(602, "bob", "Bob")


@contextlib.asynccontextmanager
async def hosts(count: int, model_dir: Path, tmp_path: Path, engine: Engine, url: str,
                **overrides: Any) -> AsyncIterator[list[App]]:
    """`count` Apps on one database (one engine between them: the limits are the point)."""
    async with contextlib.AsyncExitStack() as stack:
        apps = [await stack.enter_async_context(core_app(
            model_dir, tmp_path / f"host{i}", engine=engine, database_url=url, **overrides))
            for i in range(count)]
        yield apps


def shared(app: App) -> MemberLimits:
    assert isinstance(app.shared_limits, MemberLimits)
    return app.shared_limits


async def refusal(gate: AskGate, user: int) -> str:
    """The refusal `gate` gives `user` (fails if it accepts)."""
    with pytest.raises(UserFacingError) as caught:
        await gate.take(user)
    return caught.value.message


async def test_three_hosts_give_a_member_one_reply_between_them(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path, postgres_url: str
) -> None:
    """All three hosts try at once, ten times: exactly one wins each time, and the
    others say what a single host says to a second ask."""
    async with hosts(3, tiny_model_dir, tmp_path, tiny_engine, postgres_url) as apps:
        gates = [AskRunner(app).gate for app in apps]
        assert all(g.shared is not None for g in gates)
        for _ in range(10):
            results = await asyncio.gather(*(g.take(ADA.id) for g in gates),
                                           return_exceptions=True)
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, results
            assert [str(e) for e in lost] == [wording.in_progress(1, 1)] * 2
            # Another member is not held back by Ada's reply.
            (await gates[1].take(BOB.id)).release()
            for slot in won:
                slot.release()
            await asyncio.gather(*(shared(app).settle() for app in apps))
        # Live limits are not part of the store: `db copy` leaves them out.
        rows = await apps[0].store.db.read(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY(?)",
            (list(EPHEMERAL_TABLES),))
        assert rows == [(len(EPHEMERAL_TABLES),)]
        assert not set(EPHEMERAL_TABLES) & set(await tables(apps[0].store.db))


@contextlib.asynccontextmanager
async def shard_host(fake: FakeDiscord, model_dir: Path, tmp_path: Path, url: str, shard: int,
                     script: str, delay: float, **overrides: Any) -> AsyncIterator[LlamaBot]:
    """Shard `shard` of two, as `python -m bot run` builds it, on the shared database."""
    async with core_app(model_dir, tmp_path / f"shard{shard}", script=script, delay=delay,
                        database_url=url, shard_count=2, shard_ids=[shard],
                        **overrides) as app:
        bot = make_bot(app, guild_ready_timeout=0.05)
        assert isinstance(bot, LlamaBot) and bot.identify_gate is not None
        bot.identify_gate.spacing_s = 0.05  # the fake has no identify rate limit
        async with fake.run_bot(bot):
            yield bot


async def test_a_reply_in_progress_on_host_a_is_refused_on_host_b(
    smol_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """Two shard hosts on one database, Ada in a server of each: her reply on A makes B
    refuse her with A's own words; once it ends, B answers her."""
    text = " ".join(f"t{i}" for i in range(60))
    g0, g1 = (default_guild((n << 22) | n, f"Shard {n}") for n in (1000, 1001))
    assert (g0.shard_id(2), g1.shard_id(2)) == (0, 1)
    async with (
        FakeDiscord(guilds=[g0, g1], shard_count=2) as fake,
        shard_host(fake, smol_model_dir, tmp_path, postgres_url, 0, text, 0.02) as a,
        shard_host(fake, smol_model_dir, tmp_path, postgres_url, 1, text, 0.005),
    ):
        def ask(guild: FakeGuild, prompt: str, user: FakeUser) -> Any:
            return fake.inject_interaction("ask", {"prompt": prompt}, guild_id=guild.id,
                                           channel_id=guild.channels[0].id, user=user)

        first = await ask(g0, "one", ADA)
        await first.wait_original(lambda m: "t1" in m.content)
        on_a = await (await ask(g0, "two", ADA)).wait_response()
        on_b = await (await ask(g1, "two", ADA)).wait_response()
        assert on_b.data["content"] == on_a.data["content"]
        assert wording.in_progress(1, 1) in on_b.data["content"]
        assert on_b.data["flags"] & 64  # ephemeral, as on one host
        other = await ask(g1, "meanwhile", BOB)  # Bob is not held back
        await fake.wait_for(lambda: other.original and is_final(other.original.content),
                            timeout=30)
        await fake.wait_for(lambda: first.original and is_final(first.original.content),
                            timeout=30)
        await shared(a.app).settle()  # A's release lands (a round trip after the footer)
        again = await ask(g1, "three", ADA)
        await fake.wait_for(lambda: again.original and is_final(again.original.content),
                            timeout=30)
        assert "· done" in again.original.content  # type: ignore[union-attr]


async def test_the_cooldown_holds_across_hosts(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path, postgres_url: str
) -> None:
    async with hosts(3, tiny_model_dir, tmp_path, tiny_engine, postgres_url,
                     user_cooldown_s=30.0) as apps:
        a, b, c = (AskRunner(app).gate for app in apps)
        # An ask refused after its slot was taken (no `accepted`) starts no cooldown.
        (await a.take(ADA.id)).release()
        await shared(apps[0]).settle()
        (await b.take(ADA.id)).release()
        await shared(apps[1]).settle()
        with await c.take(ADA.id):
            c.accepted(ADA.id)
        await shared(apps[2]).settle()
        for gate in (a, b):
            said = await refusal(gate, ADA.id)
            assert said.startswith("Slow down a little: try again in ")
            assert 28 <= int(said.rsplit(" ", 2)[-2]) <= 30, said
        (await a.take(BOB.id)).release()


async def test_settings_writes_are_limited_across_hosts(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path, postgres_url: str
) -> None:
    async with hosts(3, tiny_model_dir, tmp_path, tiny_engine, postgres_url,
                     settings_write_limit=4, settings_write_window_s=60.0) as apps:
        limiters = [app.write_limiter for app in apps]
        for i in range(4):
            await limiters[i % 3].take(ADA.id)  # four writes, spread over the hosts
        for limiter in limiters:
            with pytest.raises(TooManyWrites) as caught:
                await limiter.check(ADA.id)
            assert 58 <= caught.value.retry_in_s <= 60
        await limiters[2].take(BOB.id)  # another member's writes are their own
        # A check alone counts nothing: Bob still has three left, on any host.
        for limiter in limiters:
            await limiter.check(BOB.id)
            await limiter.take(BOB.id)
        with pytest.raises(TooManyWrites):
            await limiters[0].check(BOB.id)


async def test_knobs_changes_on_two_shard_hosts_share_one_limit(
    smol_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """/knobs set in a server of each host: the member's third change is refused."""
    g0, g1 = (default_guild((n << 22) | n, f"Shard {n}") for n in (1000, 1001))
    manage = str(discord.Permissions(manage_channels=True).value)
    async with (
        FakeDiscord(guilds=[g0, g1], shard_count=2) as fake,
        shard_host(fake, smol_model_dir, tmp_path, postgres_url, 0, "hi", 0.005,
                   settings_write_limit=2),
        shard_host(fake, smol_model_dir, tmp_path, postgres_url, 1, "hi", 0.005,
                   settings_write_limit=2),
    ):
        async def knobs_set(guild: FakeGuild, top_k: int) -> str:
            itx = await fake.inject_interaction(
                "knobs set", {"top_k": top_k}, guild_id=guild.id,
                channel_id=guild.channels[0].id, user=ADA, permissions=manage)
            return str((await itx.wait_response()).data["content"])

        assert "top_k" in await knobs_set(g0, 3)
        assert "top_k" in await knobs_set(g1, 4)
        assert "changing settings too quickly" in await knobs_set(g0, 5)
        assert "changing settings too quickly" in await knobs_set(g1, 6)


async def test_a_slot_left_by_a_dead_host_expires(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path, postgres_url: str
) -> None:
    """A host holding Ada's slot renews it past its lease; killed, its slot expires
    a lease later, and another host answers her."""
    lease = 1.0
    async with hosts(1, tiny_model_dir, tmp_path, tiny_engine, postgres_url) as apps:
        gate = AskRunner(apps[0]).gate
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "testing.slot_holder", postgres_url, str(ADA.id), str(lease),
            cwd=ROOT, env=clean_env(), stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(holder.stdout.readline(), timeout=60)
            assert line.strip() == b"holding"
            assert await refusal(gate, ADA.id) == wording.in_progress(1, 1)
            await asyncio.sleep(lease * 2)  # renewed: still held past its first lease
            assert await refusal(gate, ADA.id) == wording.in_progress(1, 1)
            holder.send_signal(signal.SIGKILL)
            await asyncio.wait_for(holder.wait(), timeout=30)
            killed = time.monotonic()
            while True:
                try:
                    slot = await gate.take(ADA.id)
                    break
                except UserFacingError:
                    assert time.monotonic() - killed < lease + 5, "the dead host's slot stayed"
                    await asyncio.sleep(0.05)
            slot.release()
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()


async def test_one_host_on_sqlite_keeps_its_limits_in_memory(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path
) -> None:
    """No shared limits, and taking a slot or checking a write never waits on anything
    (the coroutine ends on its first step: no statement, no round trip)."""
    async with core_app(tiny_model_dir, tmp_path, engine=tiny_engine,
                        settings_write_limit=1) as app:
        assert app.shared_limits is None and app.store.db.dialect == "sqlite"
        gate = AskRunner(app).gate
        step = gate.take(ADA.id)
        with pytest.raises(StopIteration) as done:
            step.send(None)
        slot = done.value.value
        assert gate.active(ADA.id) == 1
        assert await refusal(gate, ADA.id) == wording.in_progress(1, 1)
        slot.release()
        check = app.write_limiter.check(ADA.id)
        with pytest.raises(StopIteration):
            check.send(None)


async def test_hosts_identify_as_many_at_once_as_discord_allows(
    smol_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """GET /gateway/bot's max_concurrency reaches the identify gate before any shard
    identifies (discord.py fetches it only for a client that picks its own shard count)."""
    async with running_bot(smol_model_dir, tmp_path, scripted="hi", database_url=postgres_url,
                           max_concurrency=16) as h:
        assert h.bot.identify_gate is not None
        assert h.bot.identify_gate.max_concurrency == 16
        assert len(h.fake.requests_for(Routes.GATEWAY_BOT)) == 1
    async with running_bot(smol_model_dir, tmp_path / "one", scripted="hi",
                           max_concurrency=16) as h:
        # One host on SQLite: discord.py's own identify pacing, nothing fetched.
        assert h.bot.identify_gate is None
        assert not h.fake.requests_for(Routes.GATEWAY_BOT)


async def test_a_press_is_acknowledged_before_its_slot_is_claimed_on_every_host(
    smol_model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """The shared claim is a round trip that can queue (here: the member's row is held
    by another transaction, as by a busy host): Regenerate is acknowledged on this
    host's own count first, and the claim follows, before the reply is written."""
    import asyncpg

    async with running_bot(smol_model_dir, tmp_path, scripted="A fresh answer.",
                           database_url=postgres_url) as h:
        asked = await h.ask("hello")
        first = asked.original
        assert first is not None
        regen = next(i for i in buttons_of(first) if i.startswith("llm:regen:"))
        asker = h.guild.members[0].id
        await shared(h.app).settle()
        conn = await asyncpg.connect(postgres_url)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO member_limits (member_id) VALUES ($1) "
                               "ON CONFLICT DO NOTHING", asker)
            await conn.execute("SELECT 1 FROM member_limits WHERE member_id = $1 FOR UPDATE",
                               asker)
            press = await h.fake.inject_component(regen, message_id=first.id)
            ack = await press.wait_response(timeout=5)
            assert ack.type == 5  # acknowledged while the claim waits on the row
            await asyncio.sleep(0.3)
            assert press.original is not None and not press.original.content
            await tx.rollback()
        finally:
            await conn.close()
        await h.finished(press)
        assert "A fresh answer." in (press.original.content if press.original else "")


def buttons_of(message: Any) -> list[str]:
    return [c.get("custom_id", "") for row in message.components for c in row["components"]]


async def test_two_hosts_never_both_take_a_members_last_settings_write(
    tiny_model_dir: Path, tiny_engine: Engine, tmp_path: Path, postgres_url: str
) -> None:
    """The check and the count are one call on the database: a member with one write
    left changing settings on two hosts at the same moment gets one change, not two;
    a change that changes nothing gives its write back on every host."""
    async with hosts(2, tiny_model_dir, tmp_path, tiny_engine, postgres_url,
                     settings_write_limit=2, settings_write_window_s=60.0) as apps:
        here = Scope.channel(77, 78)
        a, b = (app.scope_settings for app in apps)
        await a.set_knobs(here, {"temperature": 0.3}, actor_id=ADA.id)
        await b.set_knobs(here, {"temperature": 0.3}, actor_id=ADA.id)  # no change: given back
        for _ in range(20):
            both = await asyncio.gather(
                a.set_knobs(here, {"top_k": 5}, actor_id=ADA.id),
                b.set_knobs(here, {"top_p": 0.5}, actor_id=ADA.id),
                return_exceptions=True)
            assert sum(isinstance(r, TooManyWrites) for r in both) == 1, both
            # The winner's write given back, the knobs unset: the race again.
            await apps[0].write_limiter.refund(
                WriteTaken(ADA.id, shared_id=await _newest_write(apps[0], ADA.id)))
            await apps[0].store.reset_knobs(here, ["top_k", "top_p"], actor_id=1)


async def _newest_write(app: App, member: int) -> int:
    """The id of `member`'s newest counted settings write."""
    row = await shared(app).db.pool.fetchrow(
        "SELECT id FROM settings_writes WHERE member_id = $1 ORDER BY at DESC LIMIT 1", member)
    assert row is not None
    return int(row[0])
