"""Everything the bot keeps in its database (SQLite, or PostgreSQL when shared).

Modules: `scopes` (scope and location types; no database), `db`, `postgres`,
`connect` (backends), `migration*` (numbered schema steps), `store`
(`SettingsStore`), `audit`, `validation`, `personas`, `ask_log`, `turns`,
`swipes`, `retention`, `transfer`, `shards`, `copy` (moving data), `identify`.
"""
