"""Latency of `SettingsStore.resolve`, the lookup every message makes.

Builds a throw-away database with 100 guilds × 100 channels (10,000 channels,
each with overrides), threads and DM users, then times `resolve` at random
locations (channels, threads, DMs, channels with nothing set) and, for scale,
`set_knobs`. Prints one JSON object with median/p99 in milliseconds.

Run: ``.venv/bin/python bench/store_bench.py [--lookups N] [--seed S]``
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

from bot.store.scopes import Location
from bot.store.store import SettingsStore
from bot.store.transfer import EXPORT_FORMAT, import_rows

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.lookups, args.writes, args.seed)), indent=2))


if __name__ == "__main__":
    main()
