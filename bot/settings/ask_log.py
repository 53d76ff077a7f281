"""Recent asks, kept so Stop and Regenerate still work after a restart.

Not settings: a bounded log of what each ask was (prompt, where, who, what was
sent to the model), one row per ask keyed by the interaction id. Only the newest
`keep` rows are kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import aiosqlite

from bot.settings.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AskRecord:
    """What Regenerate needs to ask again, and whom the buttons belong to."""

    prompt: str
    knobs: dict[str, Any]
    system_prompt: str | None
    guild_id: int | None
    channel_id: int | None
    user_id: int

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
            )
        except (KeyError, TypeError, ValueError):
            return None


class AskLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, ask_id: int, record: AskRecord, keep: int = 5000) -> None:
        """Remember an ask; only the newest `keep` are kept."""
        payload = json.dumps(asdict(record), ensure_ascii=False)

        async def work(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO asks (id, guild_id, channel_id, user_id, payload, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (ask_id, record.guild_id, record.channel_id, record.user_id, payload,
                 self.db.now_iso()),
            )
            await conn.execute(
                "DELETE FROM asks WHERE id NOT IN (SELECT id FROM asks ORDER BY id DESC LIMIT ?)",
                (keep,),
            )

        await self.db.write(work)

    async def load(self, ask_id: int) -> AskRecord | None:
        rows = await self.db.read("SELECT payload FROM asks WHERE id = ?", (ask_id,))
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
