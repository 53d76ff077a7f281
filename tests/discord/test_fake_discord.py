"""The fake Discord API, exercised by the real discord.py client.

These tests pin down that discord.py accepts what the fake serves (READY, GUILD_CREATE,
INTERACTION_CREATE, callback responses, rate-limit headers) and that the fake records
what the bot did, so other tests can rely on it as a stand-in for Discord.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from testing.fake_discord import (
    INTENT_MESSAGE_CONTENT,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    Routes,
    default_guild,
)

GUILD = default_guild()
GENERAL = GUILD.channels[0]
THREAD = GUILD.channels[2]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guilds=[GUILD]) as server:
        server.patch_discord()
        yield server


def streaming_bot(fake: FakeDiscord, *, edits: int = 3) -> commands.Bot:
    """A bot whose /ask defers, edits the original `edits` times, then sends a follow-up."""
    bot: commands.Bot = fake.make_bot()

    @bot.tree.command(name="ask", description="Ask the model")
    @app_commands.describe(prompt="What to ask")
    async def ask(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer(thinking=True)
        text = ""
        for index in range(edits):
            text += f"{prompt}-{index} "
            await interaction.edit_original_response(content=text.strip())
        await interaction.followup.send("done", wait=True)

    return bot


async def test_login_ready_and_guild_available(fake: FakeDiscord) -> None:
    bot = fake.make_bot()
    available: list[int] = []

    @bot.event
    async def on_guild_available(guild: discord.Guild) -> None:
        available.append(guild.id)

    async with fake.run_bot(bot):
        assert bot.user is not None and bot.user.id == fake.application_id
        assert bot.application_id == fake.application_id
        guild = bot.get_guild(GUILD.id)
        assert guild is not None and guild.name == GUILD.name and not guild.unavailable
        channel = bot.get_channel(GENERAL.id)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        thread = guild.get_thread(THREAD.id)
        assert thread is not None and thread.parent_id == GENERAL.id
        assert guild.get_role(GUILD.roles[1].id) is not None
        assert available == [GUILD.id]
    assert [r.key for r in fake.requests[:2]] == [Routes.USERS_ME, Routes.APPLICATION_INFO]
    assert fake.gateway_paths == ["/gateway"]
    assert fake.stats.identifies == 1


async def test_sync_global_and_guild_commands(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake)

    @app_commands.command(name="admin", description="Guild only")
    async def admin(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("ok")

    bot.tree.add_command(admin, guild=discord.Object(GUILD.id))
    async with fake.run_bot(bot):
        synced = await bot.tree.sync()
        guild_synced = await bot.tree.sync(guild=discord.Object(GUILD.id))
    assert [c.name for c in synced] == ["ask"] and synced[0].id > 0
    assert synced[0].options[0].name == "prompt"
    assert [c.name for c in guild_synced] == ["admin"]
    assert fake.requests_for(Routes.SYNC_GLOBAL)[0].json[0]["name"] == "ask"
    assert fake.commands[GUILD.id][0]["guild_id"] == str(GUILD.id)


async def test_slash_command_defer_edits_and_followup(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        itx = await fake.inject_interaction("ask", {"prompt": "hi"})
        [followup] = await itx.wait_followups(1)
    callback = fake.requests_for(Routes.CALLBACK)[0]
    assert callback.query == {"with_response": "1"} and callback.json == {"type": 5}
    assert itx.response is not None and itx.response.type == 5
    assert fake.edits(itx.token) == ["hi-0", "hi-0 hi-1", "hi-0 hi-1 hi-2"]
    original = fake.original(itx.token)
    assert original is not None and original.content == "hi-0 hi-1 hi-2"
    assert original.flags == 0  # the LOADING flag went with the first edit
    assert followup.content == "done"
    assert fake.requests_for(Routes.FOLLOWUP)[0].query["wait"] == "1"
    assert len(fake.requests_for(Routes.EDIT_ORIGINAL)) == 3


async def test_a_forgotten_interaction_leaves_no_records(fake: FakeDiscord) -> None:
    """The soak bench forgets finished replies so the fake's stores do not grow with them."""
    bot = streaming_bot(fake, edits=1)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        kept = await fake.inject_interaction("ask", {"prompt": "keep"})
        gone = await fake.inject_interaction("ask", {"prompt": "drop"})
        await kept.wait_followups(1)
        [followup] = await gone.wait_followups(1)
        original = gone.original_id
        assert original is not None
        fake.forget_interaction(gone.token)
        fake.forget_interaction("never-issued")  # unknown tokens are ignored
    assert gone.id not in fake.interactions and kept.id in fake.interactions
    assert original not in fake.messages and followup.id not in fake.messages
    with pytest.raises(KeyError):
        fake.interaction(gone.token)
    assert fake.edits(kept.token) == ["keep-0"]


async def test_429_and_500_on_edits_are_retried(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake, edits=2)
    # 500 first: discord.py waits 1 s, 3 s, ... by attempt number after a 5xx.
    broken = fake.fail_next(Routes.EDIT_ORIGINAL, 500)
    limited = fake.fail_next(Routes.EDIT_ORIGINAL, 429, retry_after=0.05)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        itx = await fake.inject_interaction("ask", {"prompt": "x"})
        await itx.wait_followups(1, timeout=8)
    assert limited.hits == 1 and broken.hits == 1
    statuses = [r.status for r in fake.requests_for(Routes.EDIT_ORIGINAL)]
    assert statuses == [500, 429, 200, 200]
    assert fake.edits(itx.token) == ["x-0", "x-0 x-1"]


async def test_reconnect_resumes_and_interactions_still_work(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake, edits=1)
    resumed = asyncio.Event()

    @bot.event
    async def on_resumed() -> None:
        resumed.set()

    async with fake.run_bot(bot):
        await bot.tree.sync()
        await fake.send_reconnect()
        await asyncio.wait_for(resumed.wait(), 5)
        itx = await fake.inject_interaction("ask", {"prompt": "after"})
        await itx.wait_followups(1)
        assert fake.gateway_paths == ["/gateway", "/gateway/resume"]
        assert fake.stats.resumes == 1 and fake.stats.identifies == 1

        # A close with a resumable code resumes; a session timeout (4009) re-identifies.
        await fake.close_gateway(4000)
        await fake.wait_for(lambda: fake.stats.resumes == 2)
        await fake.close_gateway(4009)
        await fake.wait_for(lambda: fake.stats.identifies == 2)
        await fake.wait_session()
        itx = await fake.inject_interaction("ask", {"prompt": "again"})
        await itx.wait_followups(1)
    assert fake.edits(itx.token) == ["again-0"]


async def test_events_sent_while_disconnected_are_replayed_on_resume(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake, edits=1)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        await fake.send_reconnect()
        # Sent right behind RECONNECT: the client drops it and gets it again on RESUME.
        itx = await fake.inject_interaction("ask", {"prompt": "late"})
        await itx.wait_followups(1)
    [resume] = [f["d"] for f in fake.gateway_received if f["op"] == 6]
    [dispatch] = fake.requests_for(Routes.CALLBACK)
    assert fake.edits(itx.token) == ["late-0"] and dispatch.status == 200
    [session] = fake.sessions
    [created] = [f for f in session.history if f["t"] == "INTERACTION_CREATE"]
    assert created["s"] > resume["seq"]


async def test_invalidate_session(fake: FakeDiscord) -> None:
    bot = streaming_bot(fake, edits=1)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        await fake.invalidate_session(resumable=True)
        await fake.wait_for(lambda: fake.stats.resumes == 1)
        await fake.invalidate_session(resumable=False)
        await fake.wait_for(lambda: fake.stats.identifies == 2)
        await fake.wait_session()
        itx = await fake.inject_interaction("ask", {"prompt": "new"})
        await itx.wait_followups(1)
    # discord.py keeps the resume URL for the fresh IDENTIFY; Discord accepts either.
    assert fake.gateway_paths == ["/gateway", "/gateway/resume", "/gateway/resume"]
    assert fake.stats.resume_rejected == 0


async def test_subcommand_group_options_permissions_and_locale(fake: FakeDiscord) -> None:
    bot = fake.make_bot()
    seen: list[tuple[str, int, bool, float, str, bool, int]] = []
    llama = app_commands.Group(name="llama", description="Model")
    admin = app_commands.Group(name="admin", description="Admin", parent=llama)

    @admin.command(name="set", description="Set knobs")
    async def set_knobs(
        interaction: discord.Interaction, name: str, tokens: int, greedy: bool, temperature: float
    ) -> None:
        assert isinstance(interaction.user, discord.Member)
        perms = interaction.permissions
        seen.append(
            (
                name,
                tokens,
                greedy,
                temperature,
                str(interaction.locale),
                perms.manage_guild,
                interaction.user.id,
            )
        )
        await interaction.response.send_message("ok", ephemeral=True)

    bot.tree.add_command(llama)
    user = GUILD.members[0]
    perms = str(discord.Permissions(manage_guild=True).value)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        itx = await fake.inject_interaction(
            "llama admin set",
            {"name": "n", "tokens": 5, "greedy": True, "temperature": 0.5},
            channel_id=THREAD.id,
            user=user,
            roles=[GUILD.roles[1].id],
            permissions=perms,
            locale="de",
        )
        original = await itx.wait_original()
    assert seen == [("n", 5, True, 0.5, "de", True, user.id)]
    assert original.flags & 64 and original.channel_id == THREAD.id


async def test_prefix_command_dm_interaction_and_expired_token(fake: FakeDiscord) -> None:
    intents = discord.Intents.default()
    intents.message_content = True
    fake.privileged_intents = INTENT_MESSAGE_CONTENT  # switched on in the Developer Portal
    bot = fake.make_bot(intents=intents, command_prefix="!")

    @bot.command()
    async def ping(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send("pong")

    @bot.tree.command(name="late", description="Answers after its token expired")
    async def late(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        fake.expire_token(interaction.token)
        with pytest.raises(discord.HTTPException) as info:
            await interaction.edit_original_response(content="too late")
        assert info.value.status == 401 and info.value.code == 50027
        await interaction.channel.send("posted instead")  # type: ignore[union-attr]

    async with fake.run_bot(bot):
        await bot.tree.sync()
        fake.fail_next(Routes.SEND_MESSAGE, 429, retry_after=0.05, global_=True)
        await fake.inject_message("!ping")
        await fake.wait_for(lambda: any(m.content == "pong" for m in fake.messages.values()))
        itx = await fake.inject_interaction("late", dm=True)
        await fake.wait_for(
            lambda: any(m.content == "posted instead" for m in fake.messages.values())
        )
    assert "guild_id" not in itx.payload and itx.payload["user"]["id"]
    assert [r.status for r in fake.requests_for(Routes.SEND_MESSAGE)][:2] == [429, 200]


async def test_autosharded_bot_gets_each_guild_on_its_shard() -> None:
    guilds = [FakeGuild(id=(n << 22) + n, name=f"g{n}") for n in (2, 3, 4, 5)]
    async with FakeDiscord(guilds=guilds, shard_count=2) as fake:
        bot = fake.make_bot(commands.AutoShardedBot)
        async with fake.run_bot(bot):
            assert bot.shard_count == 2
            for guild in guilds:
                got = bot.get_guild(guild.id)
                assert got is not None and got.shard_id == guild.shard_id(2)
        assert fake.requests_for(Routes.GATEWAY_BOT)
        assert set(fake.gateway_paths) == {"/gateway/sharded"}  # the URL /gateway/bot gave
        identifies = [f["d"]["shard"] for f in fake.gateway_received if f["op"] == 2]
        assert sorted(identifies) == [[0, 2], [1, 2]]
        for session in fake.sessions:
            assert session.shard is not None
            ready = session.history[0]
            assert ready["t"] == "READY"
            ids = {int(g["id"]) for g in ready["d"]["guilds"]}
            assert ids == {g.id for g in guilds if g.shard_id(2) == session.shard[0]}


class Confirm(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)

    @discord.ui.button(label="Yes", custom_id="confirm-yes")
    async def yes(
        self, interaction: discord.Interaction, button: discord.ui.Button[Confirm]
    ) -> None:
        await interaction.response.edit_message(content="confirmed", view=None)


async def test_button_component_interaction(fake: FakeDiscord) -> None:
    bot = fake.make_bot()

    @bot.tree.command(name="confirm", description="Ask for confirmation")
    async def confirm(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("sure?", view=Confirm())

    async with fake.run_bot(bot):
        await bot.tree.sync()
        itx = await fake.inject_interaction("confirm")
        original = await itx.wait_original()
        assert original.components[0]["components"][0]["custom_id"] == "confirm-yes"
        click = await fake.inject_component("confirm-yes", message_id=original.id)
        await click.wait_response()
        updated = await fake.wait_for(lambda: original if original.content == "confirmed" else None)
    assert click.response is not None and click.response.type == 7
    assert updated.components == []


async def test_bucket_answers_429_to_a_raw_client() -> None:
    async with FakeDiscord(enforce_buckets=True, bucket_window=1.0) as fake:
        bot = fake.make_bot()

        @bot.tree.command(name="hold", description="Defer only")
        async def hold(interaction: discord.Interaction) -> None:
            await interaction.response.defer()

        async with fake.run_bot(bot):
            await bot.tree.sync()
            itx = await fake.inject_interaction("hold")
            await itx.wait_original()
        url = f"{fake.api_base}/webhooks/{fake.application_id}/{itx.token}/messages/@original"
        async with aiohttp.ClientSession() as session:
            results = []
            for n in range(8):
                async with session.patch(url, json={"content": f"edit {n}"}) as resp:
                    results.append((resp.status, dict(resp.headers)))
        assert [s for s, _ in results] == [200] * 5 + [429] * 3
        assert [h["X-RateLimit-Remaining"] for _, h in results[:5]] == ["4", "3", "2", "1", "0"]
        limited = results[5][1]
        assert limited["Via"] == "1.1 google" and limited["X-RateLimit-Scope"] == "user"
        assert limited["Content-Type"] == "application/json"
        assert fake.stats.rate_limited == 3


async def test_discord_py_paces_itself_on_bucket_headers() -> None:
    async with FakeDiscord(enforce_buckets=True, bucket_window=1.0) as fake:
        bot = streaming_bot(fake, edits=8)
        async with fake.run_bot(bot):
            await bot.tree.sync()
            itx = await fake.inject_interaction("ask", {"prompt": "p"})
            await itx.wait_followups(1, timeout=10)
        edits = fake.requests_for(Routes.EDIT_ORIGINAL)
        assert [r.status for r in edits] == [200] * 8
        assert fake.stats.rate_limited == 0
        assert edits[5].time - edits[4].time >= 0.5  # discord.py waited for the window
        assert len(fake.edits(itx.token)) == 8


async def test_channel_messages_and_modal(fake: FakeDiscord) -> None:
    bot = fake.make_bot()

    class Prompt(discord.ui.Modal, title="Prompt"):
        text: discord.ui.TextInput[Prompt] = discord.ui.TextInput(label="Text", custom_id="text")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"got {self.text.value}")

    @bot.tree.command(name="open", description="Open a modal")
    async def open_modal(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(Prompt())

    async with fake.run_bot(bot):
        await bot.tree.sync()
        channel = bot.get_channel(GENERAL.id)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("hello")
        await sent.edit(content="hello again")
        assert fake.message(sent.id).content == "hello again"
        itx = await fake.inject_interaction("open")
        await itx.wait_response()
        assert itx.modal is not None and itx.modal["custom_id"]
        submit = await fake.inject_modal_submit(itx.modal["custom_id"], {"text": "abc"})
        reply = await submit.wait_original()
    assert reply.content == "got abc"
    assert fake.channel_messages(GENERAL.id)[0].content == "hello again"


async def test_errors_discord_would_give(fake: FakeDiscord) -> None:
    bot = fake.make_bot()
    errors: list[Exception] = []

    @bot.tree.command(name="twice", description="Responds twice")
    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        try:
            await interaction.edit_original_response(content="x" * 2001)
        except discord.HTTPException as exc:
            errors.append(exc)
        fake.fail_next(Routes.FOLLOWUP, 404)
        try:
            await interaction.followup.send("gone")
        except discord.NotFound as exc:
            errors.append(exc)

    fake.delay(Routes.CALLBACK, 0.2, times=1)
    async with fake.run_bot(bot):
        await bot.tree.sync()
        itx = await fake.inject_interaction("twice")
        await fake.wait_for(lambda: len(errors) == 2)
    [callback] = fake.requests_for(Routes.CALLBACK)
    assert callback.finished is not None and callback.finished - callback.time >= 0.2
    too_long, gone = errors
    assert isinstance(too_long, discord.HTTPException) and too_long.code == 50035
    assert isinstance(gone, discord.NotFound) and gone.code == 10015
    assert fake.edits(itx.token) == []
    [(refused, refusal)] = fake.take_refusals()
    assert refused.key == Routes.EDIT_ORIGINAL and refusal.errors is not None
    assert "content" in refusal.errors


async def test_plain_http_and_patch_is_undone() -> None:
    original_base = discord.http.Route.BASE
    async with FakeDiscord(
        guilds=[FakeGuild(1 << 22, "x", channels=[FakeChannel(5, "c")])]
    ) as fake:
        fake.patch_discord()
        assert fake.api_base == discord.http.Route.BASE
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{fake.api_base}/users/@me") as resp:
                assert resp.headers["Content-Type"] == "application/json"
                assert (await resp.json())["id"] == str(fake.application_id)
            async with session.get(f"{fake.api_base}/no/such/route") as resp:
                assert resp.status == 404 and (await resp.json())["message"] == "404: Not Found"
        assert [r.route for r in fake.requests] == ["/users/@me", ""]
    assert original_base == discord.http.Route.BASE
