"""A fake Discord (REST API and gateway) on 127.0.0.1, driven by the real discord.py client.

Why a fake rather than mocks: the behaviour worth testing lives in discord.py itself —
its rate-limit pacing, its retries on 429/5xx, RESUME after a RECONNECT, how it parses
READY and INTERACTION_CREATE. Mocking discord.py's classes would test our guesses about
it; pointing the real client at a small server tests the bot as it runs in production.
The benchmark (`python -m bot bench --discord`) uses the same fake to measure edit
pacing, which is why this lives in the package and not under `tests/`.

Usage::

    async with FakeDiscord(guilds=[default_guild()]) as fake:
        fake.patch_discord()              # Route.BASE and DEFAULT_GATEWAY -> the fake
        bot = fake.make_bot()             # commands.Bot with test-friendly defaults
        async with fake.run_bot(bot):     # login, connect, wait for on_ready; close after
            itx = await fake.inject_interaction("ask", {"prompt": "hi"})
            original = await itx.wait_original(lambda m: m.content.endswith("."))
            assert fake.edits(itx.token)[-1] == original.content

Route templates (`RecordedRequest.route`, `fail_next`, `delay`, `requests_for`) are
discord.py's own `Route` paths verbatim, e.g.
``"PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"``.

Limitations (by design): `Route.BASE` and `DEFAULT_GATEWAY` are process-wide, so only one
patched fake per process at a time; events are sent as plain JSON text frames even
though discord.py asks for zlib-stream (it accepts both); no voice, no zlib.

Layout: `world` (guilds, channels, threads, messages, interactions: the one state
every layer shares), `records` (the request log and its queries), `http` (aiohttp
plumbing, Discord's error bodies, rate buckets, planned faults), `rest` (the REST
routes and Discord's rules on them), `gateway` (sessions, READY/RESUME/RECONNECT,
close codes, sharding), `inject` (slash commands, components, modals, messages) and
`server` (`FakeDiscord`, the layers put together, with start/stop and bot helpers).
"""

from testing.fake_discord.gateway import NON_RESUMABLE_CLOSE_CODES, GatewaySession
from testing.fake_discord.http import Fault
from testing.fake_discord.records import FakeStats, RecordedRequest, Routes
from testing.fake_discord.server import FakeDiscord
from testing.fake_discord.world import (
    API_PREFIX,
    DEFAULT_MEMBER_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_DM_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeRole,
    FakeUser,
    InteractionCallback,
    JSONDict,
    StoredMessage,
    default_guild,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_MEMBER_PERMISSIONS",
    "FLAG_EPHEMERAL",
    "FLAG_LOADING",
    "INTENT_DM_MESSAGES",
    "INTENT_GUILD_MESSAGES",
    "INTENT_MESSAGE_CONTENT",
    "NON_RESUMABLE_CLOSE_CODES",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeRole",
    "FakeStats",
    "FakeUser",
    "Fault",
    "GatewaySession",
    "InteractionCallback",
    "JSONDict",
    "RecordedRequest",
    "Routes",
    "StoredMessage",
    "default_guild",
]
