"""Test and bench tooling, outside the installed `bot` package.

`fake_discord` (a Discord REST + gateway on 127.0.0.1 that the real discord.py
client talks to), `discord_harness` (a running bot around it, for tests),
`backends` (scripted and failing generator backends for the engine's seam),
`model_factory` (tiny random CTranslate2 models and the embedded one).
"""
