"""Per-member limits shared by every host on one PostgreSQL database.

With several hosts, `bot.limits` kept in each process's memory would give a
member one reply in progress (and one settings-write budget) per host. Here
the state is on the server every host already reaches:

- a reply in progress is a row of `member_slots` with a lease; the holding host
  renews its leases every `lease_s / 3`, so a host that dies mid-reply leaves a
  slot that expires `lease_s` later at most, never one taken for good;
- the cooldown is the time of the member's last accepted ask, in
  `member_limits`, whose row is also what one member's claims queue on;
- settings writes are rows of `settings_writes`, one per write, kept one window.

Taking a slot is one round trip: `member_slot_claim` locks the member's row,
drops expired leases, counts live ones, checks the cooldown and inserts the
new slot in one call (each of its statements sees claims committed before it,
so two hosts never both get a member's last slot). Marking the ask accepted
and releasing the slot are written in the background, in order, off the
reply's path; a later claim by this host for the same member waits for them.

The tables are UNLOGGED: leases and recent writes are worth nothing after the
database server crashes (they empty then), and they skip the write-ahead log.
Clocks are the server's, so hosts whose clocks differ agree on every lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, Final

import asyncpg

from bot import wording
from bot.errors import SettingsError
from bot.limits import Claim
from bot.store.postgres import MIGRATE_LOCK, PostgresDatabase

log = logging.getLogger(__name__)

#: Tables holding live state only: `bot.store.copy` leaves them out of a copy.
EPHEMERAL_TABLES: Final = ("member_limits", "member_slots", "settings_writes")
#: How long a slot outlives its host's last renewal.
LEASE_S: Final = 60.0

SCHEMA: Final = (
    """
    CREATE UNLOGGED TABLE IF NOT EXISTS member_limits (
        member_id   BIGINT PRIMARY KEY,
        accepted_at TIMESTAMPTZ
    )
    """,
    """
    CREATE UNLOGGED TABLE IF NOT EXISTS member_slots (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        member_id   BIGINT NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS member_slots_member ON member_slots (member_id)",
    """
    CREATE UNLOGGED TABLE IF NOT EXISTS settings_writes (
        member_id BIGINT NOT NULL,
        at        TIMESTAMPTZ NOT NULL
    )
    """,
    "ALTER TABLE settings_writes ADD COLUMN IF NOT EXISTS id BIGINT GENERATED ALWAYS AS IDENTITY",
    "CREATE INDEX IF NOT EXISTS settings_writes_member ON settings_writes (member_id, at)",
    "CREATE INDEX IF NOT EXISTS settings_writes_id ON settings_writes (id)",
    "CREATE INDEX IF NOT EXISTS settings_writes_at ON settings_writes (at)",
    # The member's row is locked by the upsert until COMMIT: one member's claims
    # queue there, and the statements after it see every claim committed before.
    """
    CREATE OR REPLACE FUNCTION member_slot_claim(
        member BIGINT, slot_limit INTEGER, cooldown_s DOUBLE PRECISION,
        lease_s DOUBLE PRECISION,
        OUT slot_id BIGINT, OUT active INTEGER, OUT wait_s DOUBLE PRECISION
    ) LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        last_accepted TIMESTAMPTZ;
    BEGIN
        INSERT INTO member_limits AS m (member_id) VALUES (member)
        ON CONFLICT (member_id) DO UPDATE SET member_id = m.member_id
        RETURNING m.accepted_at INTO last_accepted;
        DELETE FROM member_slots s
        WHERE s.member_id = member AND s.expires_at <= clock_timestamp();
        SELECT count(*) INTO active FROM member_slots s WHERE s.member_id = member;
        wait_s := 0;
        IF active >= slot_limit THEN
            RETURN;
        END IF;
        IF last_accepted IS NOT NULL AND cooldown_s > 0 THEN
            wait_s := cooldown_s - extract(epoch FROM clock_timestamp() - last_accepted);
            IF wait_s > 0 THEN
                RETURN;
            END IF;
            wait_s := 0;
        END IF;
        INSERT INTO member_slots (member_id, expires_at)
        VALUES (member, clock_timestamp() + lease_s * interval '1 second')
        RETURNING id INTO slot_id;
        active := active + 1;
    END
    $$
    """,
    # A settings write counted only if the member has one left in the window: the
    # check and the count in one call, under the member's row lock, so two hosts
    # never both take a member's last write. `wait_s`: until one leaves the window.
    """
    CREATE OR REPLACE FUNCTION settings_write_take(
        member BIGINT, write_limit INTEGER, window_s DOUBLE PRECISION,
        OUT write_id BIGINT, OUT wait_s DOUBLE PRECISION
    ) LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        recent INTEGER;
        oldest TIMESTAMPTZ;
    BEGIN
        INSERT INTO member_limits AS m (member_id) VALUES (member)
        ON CONFLICT (member_id) DO UPDATE SET member_id = m.member_id;
        DELETE FROM settings_writes WHERE at <= clock_timestamp() - window_s * interval '1 second';
        SELECT count(*), min(w.at) INTO recent, oldest FROM (
            SELECT at FROM settings_writes
            WHERE member_id = member AND at > clock_timestamp() - window_s * interval '1 second'
            ORDER BY at DESC LIMIT write_limit) w;
        wait_s := 0;
        IF recent >= write_limit THEN
            wait_s := extract(epoch FROM oldest + window_s * interval '1 second'
                              - clock_timestamp());
            RETURN;
        END IF;
        INSERT INTO settings_writes (member_id, at) VALUES (member, clock_timestamp())
        RETURNING id INTO write_id;
    END
    $$
    """,
)

_CLAIM: Final = "SELECT slot_id, active, wait_s FROM member_slot_claim($1, $2, $3, $4)"
_WRITE_TAKE: Final = "SELECT write_id, wait_s FROM settings_write_take($1, $2, $3)"
_WRITE_REFUND: Final = "DELETE FROM settings_writes WHERE id = $1"
_ACCEPTED: Final = "UPDATE member_limits SET accepted_at = clock_timestamp() WHERE member_id = $1"
_RELEASE: Final = "DELETE FROM member_slots WHERE id = $1"
_RENEW: Final = (
    "UPDATE member_slots SET expires_at = clock_timestamp() + $2 * interval '1 second' "
    "WHERE id = ANY($1::bigint[])"
)
# Past the longest cooldown (an hour) a member's row is only a lock target: it goes.
_FORGET_IDLE: Final = (
    "DELETE FROM member_limits m WHERE (m.accepted_at IS NULL "
    "OR m.accepted_at < clock_timestamp() - interval '2 hours') "
    "AND NOT EXISTS (SELECT 1 FROM member_slots s WHERE s.member_id = m.member_id)"
)
# The `limit`-th newest write inside the window: while it is there, the member waits
# until it leaves the window.
_WRITE_WAIT: Final = (
    "SELECT extract(epoch FROM at + $3 * interval '1 second' - clock_timestamp()) "
    "FROM settings_writes WHERE member_id = $1 "
    "AND at > clock_timestamp() - $3 * interval '1 second' "
    "ORDER BY at DESC OFFSET $2 - 1 LIMIT 1"
)


class MemberLimits:
    """The shared state behind `bot.limits.AskGate` and `SettingsWriteLimiter` on PostgreSQL."""

    def __init__(self, db: PostgresDatabase, *, lease_s: float = LEASE_S) -> None:
        """Use `open`, which makes sure the tables exist."""
        self.db = db
        self.lease_s = lease_s
        self._held: set[int] = set()  # slot ids this host renews
        self._pending: dict[int, asyncio.Task[None]] = {}  # member -> its last background write
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db: PostgresDatabase, *, lease_s: float = LEASE_S) -> MemberLimits:
        try:
            async with db.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                for statement in SCHEMA:
                    await conn.execute(statement)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SettingsError(
                f"Couldn't prepare the member limits on {db.where}: {exc}."
            ) from None
        return cls(db, lease_s=lease_s)

    # --- replies in progress and the cooldown -------------------------------------------

    async def claim(self, member: int, limit: int, cooldown_s: float) -> Claim:
        """Take one of `member`'s `limit` slots unless all are live or the cooldown runs."""
        pending = self._pending.get(member)
        if pending is not None:
            # This host's own release or cooldown of this member lands first.
            await asyncio.wait({pending})
        row = await self._fetchrow(_CLAIM, member, limit, cooldown_s, self.lease_s)
        assert row is not None  # the function returns one row
        claim = Claim(row[0], int(row[1]), float(row[2]))
        if claim.slot_id is not None:
            self._held.add(claim.slot_id)
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew_forever(), name="renew-slots")
        return claim

    def accepted(self, member: int) -> None:
        """Start `member`'s cooldown on every host (written in the background)."""
        self._after(member, self._execute(_ACCEPTED, member))

    def release(self, member: int, slot_id: int) -> None:
        """Free the slot on every host (written in the background, after earlier writes)."""
        self._held.discard(slot_id)
        self._after(member, self._execute(_RELEASE, slot_id))

    def _after(self, member: int, write: Coroutine[Any, Any, None]) -> None:
        """Run `write` after `member`'s earlier background write, so they land in order."""
        before = self._pending.get(member)

        async def run() -> None:
            if before is not None:
                with contextlib.suppress(BaseException):
                    await before
            await write

        task = asyncio.create_task(run(), name=f"member-limits-{member}")
        self._pending[member] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._pending.get(member) is t:
                del self._pending[member]
            if not t.cancelled() and t.exception() is not None:
                # The lease runs out by itself: the slot is not renewed any more.
                log.warning("member limits not updated for %d: %s", member, t.exception())

        task.add_done_callback(done)

    async def _renew_forever(self) -> None:
        """Renew this host's leases while it holds any; a failed round is retried."""
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self._held)
            if not held:
                return
            try:
                await self._execute(_RENEW, held, self.lease_s)
                await self._execute(_FORGET_IDLE)
            except Exception:  # the next round tries again; the loop must outlive a failure
                log.warning("member slots not renewed", exc_info=True)

    # --- settings writes ------------------------------------------------------------------

    async def write_wait(self, member: int, limit: int, window_s: float) -> float | None:
        """Seconds until `member` may write again, or None when they may now."""
        row = await self._fetchrow(_WRITE_WAIT, member, limit, window_s)
        return None if row is None else max(0.0, float(row[0]))

    async def write_take(self, member: int, limit: int, window_s: float,
                         ) -> tuple[int | None, float]:
        """Count a write by `member` if one is left: (its id, 0), else (None, seconds to wait)."""
        row = await self._fetchrow(_WRITE_TAKE, member, limit, window_s)
        assert row is not None  # the function returns one row
        return (None if row[0] is None else int(row[0])), max(0.0, float(row[1]))

    async def write_refund(self, write_id: int) -> None:
        """Uncount a write taken for a change that changed nothing (or failed)."""
        await self._execute(_WRITE_REFUND, write_id)

    # --- plumbing ------------------------------------------------------------------------

    async def settle(self, timeout_s: float | None = None) -> None:
        """Wait until the background writes made so far have landed (or failed)."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        """Land the background writes, stop renewing, free what is still held."""
        if self._renewer is not None:
            self._renewer.cancel()
        await self.settle(timeout_s=5)
        if self._held:
            with contextlib.suppress(SettingsError):
                await self._execute("DELETE FROM member_slots WHERE id = ANY($1::bigint[])",
                                    list(self._held))
            self._held.clear()

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        try:
            return await self.db.pool.fetchrow(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("member limits read failed: %s", exc, exc_info=True)
            raise SettingsError(wording.LIMITS_UNREACHABLE) from None

    async def _execute(self, sql: str, *args: object) -> None:
        try:
            await self.db.pool.execute(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SettingsError(f"Couldn't update the member limits: {exc}.") from None
