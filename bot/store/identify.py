"""Gateway logins (IDENTIFY) spaced across every host that shares one PostgreSQL database.

Discord allows `max_concurrency` sessions per 5 seconds (1 for most bots). A host
takes its bucket's session advisory lock before identifying and releases it
`spacing_s` later, so no two identifies of a bucket start closer than that on any
host; a host that dies loses its connection and its lock with it. Session locks
are re-entrant within a connection, so an `asyncio.Lock` per bucket keeps this
process's own shards apart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import asyncpg

log = logging.getLogger(__name__)

#: Advisory-lock keys of the identify buckets: this base plus the bucket number.
IDENTIFY_LOCK_BASE: Final = 0x6C6C_6D63_1000
#: Discord's window: `max_concurrency` identifies per this many seconds.
IDENTIFY_SPACING_S: Final = 5.0


class IdentifyGate:
    """Waits for this shard's turn to identify, across processes, then holds it a while."""

    def __init__(
        self, url: str, *, max_concurrency: int = 1, spacing_s: float = IDENTIFY_SPACING_S
    ) -> None:
        self.url = url
        self.max_concurrency = max(1, int(max_concurrency))
        self.spacing_s = spacing_s
        self._conns: dict[int, asyncpg.Connection] = {}
        self._local: dict[int, asyncio.Lock] = {}
        self._releases: set[asyncio.Task[None]] = set()

    async def wait_turn(self, shard_id: int) -> None:
        """Return when shard `shard_id` may identify; its bucket stays taken `spacing_s`."""
        bucket = shard_id % self.max_concurrency
        local = self._local.setdefault(bucket, asyncio.Lock())
        await local.acquire()
        try:
            conn = self._conns.get(bucket)
            if conn is None or conn.is_closed():
                conn = self._conns[bucket] = await asyncpg.connect(self.url)
            await conn.execute("SELECT pg_advisory_lock($1)", IDENTIFY_LOCK_BASE + bucket)
        except BaseException:
            local.release()
            raise
        task = asyncio.create_task(self._release_later(conn, bucket, local))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_later(
        self, conn: asyncpg.Connection, bucket: int, local: asyncio.Lock
    ) -> None:
        try:
            await asyncio.sleep(self.spacing_s)
            await conn.execute("SELECT pg_advisory_unlock($1)", IDENTIFY_LOCK_BASE + bucket)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The connection is gone, and the server released the lock with it.
            log.warning("identify lock of bucket %d not released cleanly: %s", bucket, exc)
            self._conns.pop(bucket, None)
        finally:
            local.release()

    async def close(self) -> None:
        """Drop every connection (and with them any lock still held)."""
        for task in list(self._releases):
            task.cancel()
        for conn in self._conns.values():
            if not conn.is_closed():
                await conn.close()
        self._conns.clear()
