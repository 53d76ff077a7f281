"""The Discord front-end: the only part of `bot` that imports discord.py.

Modules: `client` (the one bot class, start-up, SIGTERM, metrics wiring),
`runner` (`AskRunner`: every ask's one lifecycle, from slash command, button,
modal, mention, reply or DM to its last edit), `reply` (`ReplyWriter`, the one
streaming loop, on an interaction or a message surface), `buttons` (Stop,
Regenerate, Reply and the Reply modal, found again after a restart),
`conversation` (which messages address the bot, where an ask continues),
`pages` (pagination and edit coalescing), `errors` (the one place errors
become user messages), `common` (location of an interaction, mentions off).
"""
