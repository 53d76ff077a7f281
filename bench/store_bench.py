"""Latency of `SettingsStore.resolve`, the lookup every message makes.

Builds a throw-away database with 100 guilds × 100 channels (10,000 channels,
each with overrides), threads and DM users, then times `resolve` at random
locations (channels, threads, DMs, channels with nothing set) and, for scale,
`set_knobs`. Prints one JSON object with median/p99 in milliseconds.

``--shared`` measures the two backends instead (SQLite file, PostgreSQL: the
server at ``--postgres-url``, else a throwaway one from `testing.postgres`):
the SQL time of one `/ask` (what `bot.chat` and the runner ask of the store for
a DM follow-up: resolve, head, chain, ask log, the exchange with its head, the
finish), `--writers` processes × `--writes-per-writer` concurrent writes to one
scope with the lost-update check of `testing.store_writers`, and a copy round
trip SQLite → PostgreSQL → SQLite compared by counts and content hashes.

Run: ``.venv/bin/python bench/store_bench.py [--lookups N] [--seed S]``
     ``.venv/bin/python bench/store_bench.py --shared [--asks N] [--writes-per-writer N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.store.ask_log import AskLog, AskRecord
from bot.store.connect import open_database
from bot.store.copy import copy_database
from bot.store.scopes import Location, Scope
from bot.store.store import SettingsStore
from bot.store.swipes import SwipeStore
from bot.store.transfer import EXPORT_FORMAT, import_rows
from bot.store.turns import NewExchange, TurnStore
from testing.store_writers import check_writes, run_writers

GUILDS = 100
CHANNELS_PER_GUILD = 100
THREADS = 2_000
DM_USERS = 1_000


def _row(kind: str, sid: int, gid: int | None, key: str, value: Any) -> dict[str, Any]:
    return {
        "scope_kind": kind, "scope_id": sid, "guild_id": gid, "key": key, "value": value,
        "updated_by": 1, "updated_at": "2025-01-01T00:00:00+00:00",
    }


def build_dump(rng: random.Random) -> tuple[dict[str, Any], list[Location]]:
    """Settings rows for the synthetic population, and the locations to look up."""
    rows: list[dict[str, Any]] = []
    channels: list[tuple[int, int]] = []
    for g in range(GUILDS):
        guild = ((1_000_000 + g) << 22) | g
        rows.append(_row("server", guild, guild, "temperature", round(rng.uniform(0.2, 1.5), 2)))
        rows.append(_row("server", guild, guild, "system_prompt", f"Server {g} persona. " * 20))
        for c in range(CHANNELS_PER_GUILD):
            channel = (guild + 1) * 1000 + c
            channels.append((guild, channel))
            rows.append(_row("channel", channel, guild, "top_k", rng.randint(-1, 50)))
            rows.append(_row("channel", channel, guild, "top_p", round(rng.random(), 2)))
            if rng.random() < 0.3:
                rows.append(_row("channel", channel, guild, "stop", ["\nUser:"]))
                rows.append(_row("channel", channel, guild, "system_prompt", "Channel. " * 50))
    threads: list[tuple[int, int, int]] = []
    for t in range(THREADS):
        guild, parent = rng.choice(channels)
        thread = 9_000_000_000 + t
        threads.append((guild, parent, thread))
        rows.append(_row("channel", thread, guild, "max_new_tokens", rng.randint(16, 512)))
    for u in range(DM_USERS):
        rows.append(_row("dm", 5_000_000 + u, None, "temperature", 0.5))

    locations: list[Location] = []
    for _ in range(20_000):
        pick = rng.random()
        if pick < 0.6:
            guild, channel = rng.choice(channels)
            locations.append(Location(guild, channel))
        elif pick < 0.8:
            guild, parent, thread = rng.choice(threads)
            locations.append(Location(guild, thread, parent_channel_id=parent))
        elif pick < 0.9:
            locations.append(Location(None, 1, user_id=5_000_000 + rng.randrange(DM_USERS * 2)))
        else:
            guild, _ = rng.choice(channels)
            locations.append(Location(guild, 7_000_000 + rng.randrange(10**6)))
    dump = {"format": EXPORT_FORMAT, "format_version": 1, "settings": rows, "history": []}
    return dump, locations


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "median_ms": round(statistics.median(ordered) / 1e6, 4),
        "p99_ms": round(p99 / 1e6, 4),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 4),
        "max_ms": round(ordered[-1] / 1e6, 4),
        "n": len(ordered),
    }


async def run(lookups: int, writes: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    dump, locations = build_dump(rng)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SettingsStore.open(Path(tmp) / "bench.sqlite3")
        try:
            t0 = time.perf_counter()
            rows = await import_rows(store, dump)
            load_s = time.perf_counter() - t0

            for loc in locations[:500]:  # warm the page cache and the worker threads
                await store.resolve(loc)
            resolve_ns: list[int] = []
            for i in range(lookups):
                loc = locations[i % len(locations)]
                start = time.perf_counter_ns()
                await store.resolve(loc)
                resolve_ns.append(time.perf_counter_ns() - start)

            write_ns: list[int] = []
            for i in range(writes):
                loc = locations[i]
                start = time.perf_counter_ns()
                await store.set_knobs(
                    loc.own_scope(), {"temperature": 0.1 + (i % 40) / 10}, actor_id=1
                )
                write_ns.append(time.perf_counter_ns() - start)
        finally:
            await store.close()
    return {
        "rows": rows,
        "channels": GUILDS * CHANNELS_PER_GUILD,
        "threads": THREADS,
        "dm_users": DM_USERS,
        "load_s": round(load_s, 3),
        "resolve": _percentiles(resolve_ns),
        "set_knobs": _percentiles(write_ns),
        "python": sys.version.split()[0],
    }


async def ask_sql(target: Path | str, asks: int, seed: int) -> dict[str, Any]:
    """SQL time per `/ask` (a DM conversation of `asks` follow-ups, two members), and per step."""
    rng = random.Random(seed)
    steps: dict[str, list[int]] = {}
    totals: list[int] = []
    db = await open_database(target)
    try:
        store, log, turns, swipes = SettingsStore(db), AskLog(db), TurnStore(db), SwipeStore(db)
        for user in (11, 12):
            await store.set_knobs(Scope.dm(user), {"temperature": 0.7}, actor_id=user)

        async def timed(name: str, coro: Any) -> Any:
            start = time.perf_counter_ns()
            result = await coro
            steps.setdefault(name, []).append(time.perf_counter_ns() - start)
            return result

        for i in range(asks):
            user = rng.choice((11, 12))
            place = f"dm:{user}"
            began = time.perf_counter_ns()
            await timed("resolve", store.resolve(Location(None, 1, user_id=user)))
            parent = await timed("head", turns.head(place))
            await timed("chain", turns.chain(parent))
            await timed("ask_log.save", log.save(10_000 + i, AskRecord(
                prompt=f"question {i} " * 10, knobs={}, system_prompt=None, guild_id=None,
                channel_id=1, user_id=user)))
            _, answer = await timed("add_exchange", turns.add_exchange(NewExchange(
                parent_id=parent, question=f"question {i} " * 10, answer="answer " * 80,
                author_id=user, author_name="m", ask_id=10_000 + i, guild_id=None,
                channel_id=1, private=False, answer_message_ids=(50_000 + i,), head=place)))
            await timed("record_finish", swipes.record_finish(answer.id, finish="stop",
                                                              tokens=80))
            totals.append(time.perf_counter_ns() - began)
    finally:
        await db.close()
    return {"per_ask": _percentiles(totals[10:]),
            "steps_median_ms": {k: round(statistics.median(v) / 1e6, 4) for k, v in steps.items()}}


async def _check(target: Path | str, processes: int, writes: int) -> dict[str, Any]:
    async with await open_database(target) as db:
        return await check_writes(db, processes, writes)


async def round_trip(first: Path, postgres_url: str, last: Path) -> dict[str, Any]:
    """SQLite (the /ask bench's file) → PostgreSQL → SQLite, compared table by table."""
    async with await open_database(first) as src, await open_database(postgres_url) as mid:
        t0 = time.perf_counter()
        there = await copy_database(src, mid)
        to_pg = time.perf_counter() - t0
    async with await open_database(postgres_url) as mid, await open_database(last) as dst:
        t0 = time.perf_counter()
        back = await copy_database(mid, dst)
        to_sqlite = time.perf_counter() - t0
    return {
        "rows": {t: s.rows for t, s in there.source.items()},
        "to_postgres_s": round(to_pg, 3), "to_sqlite_s": round(to_sqlite, 3),
        "identical": there.identical and back.identical
        and there.source == back.destination,
    }


def run_shared(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    urls: list[str]
    if args.postgres_url:
        urls = [args.postgres_url] * 3
    else:
        from testing.postgres import PostgresServer

        server = PostgresServer.start()
        urls = [server.create_database() for _ in range(3)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_file = Path(tmp) / "ask.sqlite3"
            ask_url, writers_url, copy_url = urls
            out: dict[str, Any] = {"ask_sql": {
                "sqlite": asyncio.run(ask_sql(sqlite_file, args.asks, args.seed)),
                "postgresql": asyncio.run(ask_sql(ask_url, args.asks, args.seed)),
            }}
            writers: dict[str, Any] = {}
            for name, target in (("sqlite", str(Path(tmp) / "writers.sqlite3")),
                                 ("postgresql", writers_url)):
                if name == "sqlite":
                    asyncio.run(_check(Path(target), 0, 0))  # create and migrate it once
                wall = run_writers(target, args.writers, args.writes_per_writer)
                found = asyncio.run(_check(
                    Path(target) if name == "sqlite" else target,
                    args.writers, args.writes_per_writer))
                writers[name] = {"processes": args.writers, "wall_s": round(wall, 2), **found}
            out["concurrent_writes"] = writers
            out["copy_round_trip"] = asyncio.run(
                round_trip(sqlite_file, copy_url, Path(tmp) / "back.sqlite3"))
    finally:
        if server is not None:
            server.stop()
    out["python"] = sys.version.split()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shared", action="store_true",
                        help="SQLite vs PostgreSQL: SQL per /ask, concurrent writers, copy")
    parser.add_argument("--postgres-url", help="an empty database (default: a throwaway server)")
    parser.add_argument("--asks", type=int, default=500)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--writes-per-writer", type=int, default=1000)
    args = parser.parse_args()
    if args.shared:
        print(json.dumps(run_shared(args), indent=2))
        return
    print(json.dumps(asyncio.run(run(args.lookups, args.writes, args.seed)), indent=2))


if __name__ == "__main__":
    main()
