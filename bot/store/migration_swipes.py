"""Migration 5: swipes, Continue, stored reasoning, named personas.

`bot.store.migrations.MIGRATIONS` lists `STATEMENTS` as migration 5; they
live here beside their design notes. Released: never edit, only add a migration.

The design, over migration 4's `turns` tree:

* Swipes are the answers of ONE question: Regenerate adds another assistant turn
  whose parent is the same user turn (rather than a copy of the question), so the
  versions of an answer are the assistant children of a question, in creation
  order (id). `swipe_choices` records which one is shown; the conversation
  continues from the shown one (a follow-up's parent), and browsing re-points
  that message's `turn_messages` rows and any head that named a sibling. Without
  a row the newest answer is shown. Regenerations stored before this migration
  (a copied question + answer) stay separate branches; nothing is rewritten.
* Continue appends to the same assistant turn: its `text` grows, `continuations`
  counts the extra budgets it got, `tokens` the generated tokens in all, and
  `finish` says why the last part stopped ('length' is what Continue is for).
* `reasoning` keeps a reasoning model's ``<think>`` text apart from `text`, which
  is the answer alone, so later turns never read the reasoning as said.
* `personas`: named personas per server (`/system save|load|list`), the name
  unique case-insensitively (`name_key` is its casefolded NFC form), with an
  optional JSON object of knobs and an optional greeting from a character card.
"""

from __future__ import annotations

from typing import Final

STATEMENTS: Final[tuple[str, ...]] = (
    "ALTER TABLE turns ADD COLUMN reasoning TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE turns ADD COLUMN finish TEXT",
    "ALTER TABLE turns ADD COLUMN continuations INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE turns ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0",
    """
    CREATE TABLE swipe_choices (
        question_id INTEGER PRIMARY KEY REFERENCES turns (id) ON DELETE CASCADE,
        answer_id   INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
        updated_at  TEXT    NOT NULL
    )
    """,
    "CREATE INDEX swipe_choices_answer ON swipe_choices (answer_id)",
    """
    CREATE TABLE personas (
        guild_id      INTEGER NOT NULL,
        name_key      TEXT    NOT NULL,
        name          TEXT    NOT NULL,
        system_prompt TEXT    NOT NULL,
        knobs         TEXT,
        greeting      TEXT,
        created_by    INTEGER NOT NULL,
        updated_by    INTEGER NOT NULL,
        created_at    TEXT    NOT NULL,
        updated_at    TEXT    NOT NULL,
        PRIMARY KEY (guild_id, name_key)
    ) WITHOUT ROWID
    """,
)
