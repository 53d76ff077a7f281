"""What the database keeps of people's text, for how long, and erasing it on request.

Each table that holds text people wrote or the model wrote for them keeps it for
a bounded time (the README's "What is stored" lists them):

- `asks`: a prompt for Regenerate, `BOT_ASK_RETENTION_DAYS`; a private ask's
  `PRIVATE_TTL_S`;
- `turns` (with `turn_messages`, ids only, and `conversation_heads`):
  conversations, `BOT_CONVERSATION_RETENTION_DAYS`; a private ask's turns in a
  server `PRIVATE_TTL_S`, like its prompt;
- `settings` / `settings_history`: personas and knobs admins (or a DM user, for
  their DMs) chose, kept until changed; the trail by count and age;
- `personas` (named, per server) and `swipe_choices` (ids only, cascading with
  `turns`): kept like settings / like their turns.

Reads already ignore what is past its time; `prune_expired` deletes it, so an
idle bot holds no more than a busy one (`bot.app.open_app` runs it every
`PRUNE_EVERY_S`). `forget` erases one user's or one server's text at once, for
`python -m bot forget`. SQLite's `secure_delete` (set on every connection by
`bot.store.db`) overwrites deleted rows in the file; on PostgreSQL a deleted row
is gone for every host at once, and its bytes go at the server's next vacuum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bot.store.ask_log import PRIVATE_TTL_S, AskLog
from bot.store.db import Database, Tx
from bot.store.scopes import check_id
from bot.store.turns import TurnStore

#: How often expired rows are deleted. Well inside `PRIVATE_TTL_S`, so a private
#: prompt is gone from the file at most a minute after its time.
PRUNE_EVERY_S: Final = 60.0


async def prune_expired(
    db: Database,
    *,
    ask_retention_days: float,
    conversation_retention_days: int,
    private_ttl_s: float = PRIVATE_TTL_S,
) -> int:
    """Delete every ask and turn past its time now; returns the rows deleted."""
    asks = await AskLog(db, retention_days=ask_retention_days, private_ttl_s=private_ttl_s).prune()
    turns = await TurnStore(db, private_ttl_s=private_ttl_s).prune(conversation_retention_days)
    return asks + turns


@dataclass(frozen=True)
class Forgotten:
    """Rows `forget` deleted, per table."""

    asks: int = 0
    turns: int = 0
    settings: int = 0
    settings_history: int = 0

    def describe(self) -> str:
        return (
            f"deleted {self.asks} asks, {self.turns} conversation turns, {self.settings} "
            f"settings and {self.settings_history} audit-trail rows"
        )


async def forget(
    db: Database, *, user_id: int | None = None, guild_id: int | None = None
) -> Forgotten:
    """Erase everything stored of one user's or one server's text, in one transaction.

    A user: their asks and every copy of their prompts (Regenerate pressed by
    someone else logs the prompt again), every turn they asked or that answered
    them, every version of those answers included (so a shared conversation
    continues without them), their DM settings and those
    settings' trail. A card's greeting in a server was written by no member (its
    turns' author is 0, `bot.store.turns.is_opening`), so it stays; in a DM it is
    the member's and goes. Changes they made to a server's settings as its admin
    stay with that server. A server: its asks, turns, settings (server,
    channels, threads) and their trail. Turn-message ids go with their turns.
    """
    if (user_id is None) == (guild_id is None):
        raise ValueError("forget needs exactly one of user_id and guild_id")

    async def work(conn: Tx) -> Forgotten:
        async def delete(sql: str, *params: int) -> int:
            return await conn.execute(sql, params)

        if user_id is not None:
            uid = check_id("user id", user_id)
            # The prompt's author, kept in the ask's JSON payload (written by us, so valid).
            named = ("(payload::jsonb ->> 'prompt_author_id')::bigint = ?"
                     if db.dialect == "postgresql" else
                     "(json_valid(payload) AND json_extract(payload, '$.prompt_author_id') = ?)")
            return Forgotten(
                # Their asks, and every copy of their prompts: asks by others whose
                # answer is one of their turns (a version someone else regenerated)
                # or that name them as the prompt's author. Before their turns go.
                asks=await delete(
                    "DELETE FROM asks WHERE user_id = ? OR id IN (SELECT ask_id FROM turns "
                    f"WHERE author_id = ? AND ask_id IS NOT NULL) OR {named}", uid, uid, uid),
                turns=await delete("DELETE FROM turns WHERE author_id = ?", uid),
                settings=await delete(
                    "DELETE FROM settings WHERE scope_kind = 'dm' AND scope_id = ?", uid
                ),
                settings_history=await delete(
                    "DELETE FROM settings_history WHERE scope_kind = 'dm' AND scope_id = ?", uid
                ),
            )
        gid = check_id("server id", guild_id)
        return Forgotten(
            asks=await delete("DELETE FROM asks WHERE guild_id = ?", gid),
            turns=await delete("DELETE FROM turns WHERE guild_id = ?", gid),
            # Named personas (migration 5) are the server's settings too.
            settings=await delete("DELETE FROM settings WHERE guild_id = ?", gid)
            + await delete("DELETE FROM personas WHERE guild_id = ?", gid),
            settings_history=await delete(
                "DELETE FROM settings_history WHERE guild_id = ?", gid
            ),
        )

    return await db.write(work)
