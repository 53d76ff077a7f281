"""The settings audit trail: who changed which setting where, when, from what to what.

One row per change (a reset stores ``new_value`` NULL), written in the change's
own transaction. Bounded, since every DM user may write: each scope keeps its
newest `per_scope` changes, none older than `retention_days` (a table scan, so
at most hourly).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from bot.store.db import Database, Tx
from bot.store.scopes import Change, Scope
from bot.store.validation import decode_loosely

_INSERT_SQL: Final = """
    INSERT INTO settings_history
        (scope_kind, scope_id, guild_id, key, old_value, new_value, actor_id, changed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

_TRIM_SCOPE_SQL: Final = (
    "DELETE FROM settings_history WHERE scope_kind = ? AND scope_id = ? AND id <= "
    "(SELECT id FROM settings_history WHERE scope_kind = ? AND scope_id = ? "
    "ORDER BY id DESC LIMIT 1 OFFSET ?)"
)

#: The age cut scans the whole table: run it on the first write after start, then hourly.
AGE_CUT_EVERY_S: Final = 3600.0


class AuditLog:
    """The `settings_history` table of one `Database`, bounded by count and age."""

    def __init__(
        self,
        db: Database,
        *,
        per_scope: int = 200,
        retention_days: float = 365.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.per_scope = max(1, int(per_scope))
        self.retention_days = retention_days
        self._monotonic = monotonic
        self._age_cut_at: float | None = None

    async def record(
        self,
        conn: Tx,
        scope: Scope,
        key: str,
        old: str | None,
        new: str | None,
        *,
        actor_id: int,
        at: str,
    ) -> None:
        """Add one change inside the caller's write transaction (`old`/`new` as stored JSON)."""
        await conn.execute(
            _INSERT_SQL,
            (scope.kind.value, scope.id, scope.guild_id, key, old, new, actor_id, at),
        )

    async def trim(self, conn: Tx, scope: Scope) -> None:
        """Keep `scope`'s newest `per_scope` changes; at most hourly, drop old ones everywhere.

        The per-scope cap uses the (scope_kind, scope_id, id) index, so it is
        cheap on every write.
        """
        await conn.execute(
            _TRIM_SCOPE_SQL,
            (scope.kind.value, scope.id, scope.kind.value, scope.id, self.per_scope),
        )
        now = self._monotonic()
        if self._age_cut_at is None or now - self._age_cut_at >= AGE_CUT_EVERY_S:
            self._age_cut_at = now
            await conn.execute(
                "DELETE FROM settings_history WHERE changed_at < ?", (self.cutoff(),)
            )

    def cutoff(self) -> str:
        """The stored-time text `retention_days` ago (rows use one ISO format, so text compares)."""
        then = self.db.clock().astimezone(UTC) - timedelta(days=self.retention_days)
        return then.isoformat(timespec="milliseconds")

    async def history(self, scope: Scope, limit: int = 20) -> list[Change]:
        """The latest `limit` changes at `scope`, newest first (who, what, when)."""
        limit = max(1, min(int(limit), 1000))
        rows = await self.db.read(
            "SELECT key, old_value, new_value, actor_id, changed_at FROM settings_history "
            "WHERE scope_kind = ? AND scope_id = ? ORDER BY id DESC LIMIT ?",
            (scope.kind.value, scope.id, limit),
        )
        return [
            Change(
                scope=scope,
                key=key,
                old_value=decode_loosely(old),
                new_value=decode_loosely(new),
                actor_id=int(actor),
                changed_at=datetime.fromisoformat(at),
            )
            for key, old, new, actor, at in rows
        ]
