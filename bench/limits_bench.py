"""What a member's limits cost an ask: in memory (one host) and shared on PostgreSQL.

Times `AskGate.take` (the slot check on the acknowledgement path) in memory and
against a PostgreSQL server, with a bare ``SELECT 1`` for scale, interleaved (one
of each per round, several
members, three hosts each with its own pool), the background release until it
has landed, three hosts racing for one member's slot at once (exactly one must
win each race), and the settings-write check and take. The server is the one
at ``--postgres-url``, else a throwaway one from `testing.postgres` (on this
machine: 127.0.0.1, fsync off, as the tests run it). Prints one JSON object,
times in milliseconds.

Run: ``.venv/bin/python bench/limits_bench.py [--takes N] [--races N] [--seed S]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.errors import UserFacingError
from bot.limits import AskGate, SettingsWriteLimiter
from bot.store.member_limits import MemberLimits
from bot.store.postgres import PostgresDatabase

HOSTS = 3


def _ms(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1e6, 4)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1] / 1e6, 4),
            "mean": round(statistics.fmean(ordered) / 1e6, 4), "n": len(ordered)}


@contextlib.asynccontextmanager
async def _hosts(url: str) -> AsyncIterator[list[MemberLimits]]:
    dbs = [await PostgresDatabase.connect(url) for _ in range(HOSTS)]
    limits = [await MemberLimits.open(db) for db in dbs]
    try:
        yield limits
    finally:
        for one, db in zip(limits, dbs, strict=True):
            await one.close()
            await db.close()


async def run(url: str, takes: int, races: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    async with _hosts(url) as limits:
        memory = AskGate(1)
        gates = [AskGate(1, shared=one) for one in limits]
        samples: dict[str, list[int]] = {"memory_take": [], "postgres_select_1": [],
                                         "postgres_take": [], "postgres_release_landed": []}
        for warm in range(50):  # every pooled connection prepares its statements
            (await gates[warm % HOSTS].take(10_000 + warm)).release()
        for one in limits:
            await one.settle()
        for i in range(takes):
            member = 1000 + rng.randrange(200)
            t0 = time.perf_counter_ns()
            slot = await memory.take(member)
            samples["memory_take"].append(time.perf_counter_ns() - t0)
            slot.release()
            host = i % HOSTS
            t0 = time.perf_counter_ns()
            await limits[host].db.pool.fetchval("SELECT 1")  # the round trip itself, for scale
            samples["postgres_select_1"].append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            slot = await gates[host].take(member)
            samples["postgres_take"].append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            slot.release()
            await limits[host].settle()
            samples["postgres_release_landed"].append(time.perf_counter_ns() - t0)

        race_ns: list[int] = []
        single_winner = 0
        for r in range(races):
            member = 5000 + r
            t0 = time.perf_counter_ns()
            results = await asyncio.gather(*(g.take(member) for g in gates),
                                           return_exceptions=True)
            race_ns.append(time.perf_counter_ns() - t0)
            won = [s for s in results if not isinstance(s, BaseException)]
            refused = [e for e in results if isinstance(e, UserFacingError)]
            single_winner += len(won) == 1 and len(refused) == HOSTS - 1
            for slot in won:
                slot.release()
            for one in limits:
                await one.settle()

        writers = [SettingsWriteLimiter(10, 60.0, shared=one) for one in limits]
        check_ns: list[int] = []
        take_ns: list[int] = []
        for i in range(min(takes, 500)):
            member = 20_000 + i
            t0 = time.perf_counter_ns()
            await writers[i % HOSTS].check(member)
            check_ns.append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            await writers[i % HOSTS].take(member)
            take_ns.append(time.perf_counter_ns() - t0)

    out: dict[str, Any] = {name: _ms(v) for name, v in samples.items()}
    out["three_hosts_race_one_slot"] = {**_ms(race_ns), "rounds": races,
                                        "exactly_one_winner": single_winner}
    out["settings_write_check"] = _ms(check_ns)
    out["settings_write_take"] = _ms(take_ns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--postgres-url", help="a database (default: a throwaway server)")
    parser.add_argument("--takes", type=int, default=2000)
    parser.add_argument("--races", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    server = None
    url = args.postgres_url
    if url is None:
        from testing.postgres import PostgresServer

        server = PostgresServer.start()
        url = server.create_database()
    try:
        out = asyncio.run(run(url, args.takes, args.races, args.seed))
    finally:
        if server is not None:
            server.stop()
    out["python"] = sys.version.split()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
