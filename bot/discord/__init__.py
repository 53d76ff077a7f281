"""The Discord front-end: the only part of `bot` that imports discord.py.

Modules: `client` (the one bot class, start-up, SIGTERM, metrics wiring),
`reply` (`AskRunner`: fairness, acknowledging, streaming a reply by edits),
`buttons` (Stop and Regenerate, found again after a restart), `pages`
(pagination and edit coalescing), `errors` (the one place errors become user
messages), `common` (location of an interaction, mentions off).
"""
