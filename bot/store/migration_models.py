"""The schema change and queries that several models need.

`MODEL_MIGRATION` is migration 6: `turns.model`, the model that answered (or was
in force for a user turn); NULL for older turns, which
`bot.hosting.choice.model_for_turn` treats as "nothing to keep". A scope's choice
needs no schema change: it is a `settings` row with key `model`.
"""

from __future__ import annotations

from typing import Final

MODEL_MIGRATION: Final[tuple[str, ...]] = (
    "ALTER TABLE turns ADD COLUMN model TEXT",
)

#: Which scopes of a server choose which model (`/model list`: "in use where").
#: One primary-key-prefix scan per server; DM choices are per user and not listed.
MODEL_CHOICES_IN_GUILD_SQL: Final = (
    "SELECT value, scope_kind, scope_id FROM settings "
    "WHERE key = 'model' AND guild_id = ? ORDER BY scope_kind DESC, scope_id"
)
