"""Test and bench tooling, outside the installed `bot` package.

`fake_discord` (a Discord REST + gateway on 127.0.0.1 that the real discord.py
client talks to), `discord_harness` (a running bot around it, for tests),
`apps` (the App built through `bot.app.open_app`), `scripted` (an engine over a
model's tokenizer whose model is scripted, no weights), `stories` (what stories
read off the fake Discord, recording scripts), `processes` and `bot_process`
(`python -m bot` in a real process), `backends` (scripted and failing generator
backends for the engine's seam), `model_factory` (tiny random CTranslate2 models
and the embedded one) and `model_cache` (the embedded conversion kept across runs).
"""
