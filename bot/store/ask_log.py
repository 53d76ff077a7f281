"""Recent asks, kept so Regenerate still works after a restart.

One row per ask, keyed by the interaction id: only what Regenerate needs (prompt,
where, who, what the model was sent). Bounded three ways: the newest `keep` rows,
none older than `retention_days`, and a private ask's prompt only while its author
alone could still regenerate it (`private_ttl_s`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, timedelta
from typing import Any, Final

from bot.store.db import Database, Tx

log = logging.getLogger(__name__)

#: A private reply's interaction lives 15 minutes; its prompt is kept no longer.
PRIVATE_TTL_S: Final = 15 * 60


@dataclass(frozen=True)
class AskRecord:
    """What Regenerate needs to ask again, and whom the buttons belong to."""

    prompt: str
    knobs: dict[str, Any]
    system_prompt: str | None
    guild_id: int | None
    channel_id: int | None
    user_id: int
    private: bool = False
    prompt_author_id: int | None = None
    """Whose words the prompt is, when not `user_id`'s: Regenerate pressed by someone
    else asks the asker's question again, and erasing the asker erases this copy too."""
    reply_ids: tuple[int, ...] = ()
    """The token ids the model wrote for this ask's reply (Continue appends its own):
    Inspect walks the reply as generated, not its text encoded again."""

    @classmethod
    def from_json(cls, data: object) -> AskRecord | None:
        """A stored record, or None if it is not one (a hand edit, an older format)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                prompt=str(data["prompt"]),
                knobs=dict(data.get("knobs") or {}),
                system_prompt=data.get("system_prompt"),
                guild_id=data.get("guild_id"),
                channel_id=data.get("channel_id"),
                user_id=int(data.get("user_id") or 0),
                private=data.get("private") is True,
                prompt_author_id=(None if data.get("prompt_author_id") is None
                                  else int(data["prompt_author_id"])),
                reply_ids=tuple(int(i) for i in data.get("reply_ids") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None


class AskLog:
    def __init__(
        self, db: Database, *, retention_days: float = 7.0, private_ttl_s: float = PRIVATE_TTL_S
    ) -> None:
        self.db = db
        self.retention_days = retention_days
        self.private_ttl_s = private_ttl_s

    def _cutoff(self, seconds: float) -> str:
        """The stored-time text `seconds` ago (rows use one ISO format, so text compares)."""
        then = self.db.clock().astimezone(UTC) - timedelta(seconds=seconds)
        return then.isoformat(timespec="milliseconds")

    async def save(self, ask_id: int, record: AskRecord, keep: int = 5000) -> None:
        """Remember an ask, and forget those past their time (see the module docstring)."""
        await self.db.write(lambda conn: self.save_in(conn, ask_id, record, keep))

    async def save_in(
        self, conn: Tx, ask_id: int, record: AskRecord, keep: int = 5000
    ) -> None:
        """`save` inside the caller's transaction."""
        payload = json.dumps(asdict(record), ensure_ascii=False)
        await conn.execute(
            "INSERT INTO asks (id, guild_id, channel_id, user_id, payload, created_at, "
            "private) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "guild_id = excluded.guild_id, channel_id = excluded.channel_id, "
            "user_id = excluded.user_id, payload = excluded.payload, "
            "created_at = excluded.created_at, private = excluded.private",
            (ask_id, record.guild_id, record.channel_id, record.user_id, payload,
             self.db.now_iso(), int(record.private)),
        )
        await conn.execute(
            "DELETE FROM asks WHERE id NOT IN (SELECT id FROM asks ORDER BY id DESC LIMIT ?)",
            (keep,),
        )
        await self._prune(conn, self._cutoff(self.retention_days * 86400),
                          self._cutoff(self.private_ttl_s))

    async def extend_reply_in(self, conn: Tx, ask_id: int, more: Sequence[int]) -> None:
        """A Continue's ids after the reply's own, so Inspect walks the whole reply.

        Only onto ids already kept: a reply stored without them stays without.
        """
        row = await conn.fetchone("SELECT payload FROM asks WHERE id = ?", (ask_id,))
        if row is None or not more:
            return
        try:
            data = json.loads(row[0])
        except (TypeError, ValueError):
            return
        if not isinstance(data, dict) or not data.get("reply_ids"):
            return
        data["reply_ids"] = [*data["reply_ids"], *(int(i) for i in more)]
        await conn.execute("UPDATE asks SET payload = ? WHERE id = ?",
                           (json.dumps(data, ensure_ascii=False), ask_id))

    async def prune(self) -> int:
        """Forget asks past their time now (at start, or from a periodic task); returns rows."""
        old = self._cutoff(self.retention_days * 86400)
        private_old = self._cutoff(self.private_ttl_s)
        return await self.db.write(lambda conn: self._prune(conn, old, private_old))

    @staticmethod
    async def _prune(conn: Tx, old: str, private_old: str) -> int:
        return await conn.execute(
            "DELETE FROM asks WHERE created_at < ? OR (created_at < ? AND private = 1)",
            (old, private_old),
        )

    async def latest_id(self, user_id: int, channel_id: int | None) -> int | None:
        """The id of `user_id`'s newest ask in that channel still kept (the lab's "try it
        on my last prompt"); None when there is none."""
        rows = await self.db.read(
            "SELECT id FROM asks WHERE user_id = ? AND channel_id IS ? AND created_at >= ? "
            "AND NOT (created_at < ? AND private = 1) ORDER BY created_at DESC, id DESC LIMIT 1",
            (user_id, channel_id, self._cutoff(self.retention_days * 86400),
             self._cutoff(self.private_ttl_s)),
        )
        return int(rows[0][0]) if rows else None

    async def load(self, ask_id: int) -> AskRecord | None:
        """The ask, or None if it is unknown or past its time (not yet pruned is not enough)."""
        rows = await self.db.read(
            "SELECT payload FROM asks WHERE id = ? AND created_at >= ? AND NOT "
            "(created_at < ? AND private = 1)",
            (ask_id, self._cutoff(self.retention_days * 86400), self._cutoff(self.private_ttl_s)),
        )
        if not rows:
            return None
        try:
            data = json.loads(rows[0][0])
        except (TypeError, ValueError):
            data = None
        record = AskRecord.from_json(data)
        if record is None:
            log.warning("ignoring unreadable stored ask %d", ask_id)
        return record
