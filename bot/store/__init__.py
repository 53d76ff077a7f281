"""Settings per server, channel, thread and DM user, and the recent-asks log, in SQLite.

Modules: `scopes` (scope and location types, value checks; no database),
`db` (connections, transactions, PRAGMAs), `migrations` (numbered schema steps),
`store` (`SettingsStore`: resolve and audited writes), `transfer` (export and
import between shard hosts), `shards` (the `settings` command), `ask_log`
(what Stop and Regenerate need).
"""
