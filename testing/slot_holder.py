"""A host that takes a member's reply slot on the shared database and keeps it until killed.

Run ``python -m testing.slot_holder URL MEMBER LEASE_S``: it opens the store and
the shared member limits (leases of `LEASE_S`, renewed as the bot renews them),
takes one slot for `MEMBER` through a real `AskGate`, prints ``holding``, and
waits. A test kills it (SIGKILL: no release, no goodbye) to play a host that
died mid-reply.
"""

from __future__ import annotations

import asyncio
import sys

from bot.limits import AskGate
from bot.store.member_limits import MemberLimits
from bot.store.postgres import PostgresDatabase


async def _hold(url: str, member: int, lease_s: float) -> None:
    db = await PostgresDatabase.connect(url)
    limits = await MemberLimits.open(db, lease_s=lease_s)
    gate = AskGate(1, shared=limits)
    await gate.take(member)
    print("holding", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_hold(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
