"""The schema change and queries that several models need.

`MODEL_MIGRATION` is appended to `bot.store.migrations.MIGRATIONS` (migration 6,
after the versions' migration 5; it only adds a nullable column, so its position
does not matter).

- `turns.model`: the model that answered (assistant turns) or was in force
  (user turns). NULL for turns stored before this migration, which
  `bot.hosting.choice.model_for_turn` treats as "nothing to keep".
- A scope's choice needs no schema change: it is a `settings` row with key
  `model` and a JSON string value, like the persona.
"""

from __future__ import annotations

from typing import Final

MODEL_MIGRATION: Final[tuple[str, ...]] = (
    "ALTER TABLE turns ADD COLUMN model TEXT",
)

#: The model of one stored turn (the turn a follow-up continues).
TURN_MODEL_SQL: Final = "SELECT model FROM turns WHERE id = ?"

#: Which scopes of a server choose which model (`/model list`: "in use where").
#: One primary-key-prefix scan per server; DM choices are per user and not listed.
MODEL_CHOICES_IN_GUILD_SQL: Final = (
    "SELECT value, scope_kind, scope_id FROM settings "
    "WHERE key = 'model' AND guild_id = ? ORDER BY scope_kind DESC, scope_id"
)
