"""The fake refuses what Discord refuses, as Discord does, and the test that caused it hears of it.

Each row is one body real Discord answers with 400: sent over plain HTTP to the
fake, it must come back 400 with Discord's code (50035 with the error at the
offending field, or 50006 for an empty message) and be recorded as a refusal.
The valid bodies next to them are accepted, so every row can fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import pytest

from testing.fake_discord import FakeDiscord, FakeInteraction, default_guild
from testing.fake_discord.schema import schema_errors, spec
from testing.fake_discord.validation import RefusedRequests

GUILD = default_guild()
GENERAL = GUILD.channels[0].id


@dataclass
class Sent:
    method: str
    path: str
    body: Any


Build = Callable[[FakeDiscord], Awaitable[Sent]]


def button(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": f"b{i}", "custom_id": f"c{i}", **extra}


def row(*components: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(components)}


def select(options: int) -> dict[str, Any]:
    return {"type": 3, "custom_id": "pick",
            "options": [{"label": f"o{i}", "value": str(i)} for i in range(options)]}


def text_input(i: int = 0, label: str = "Text") -> dict[str, Any]:
    return {"type": 4, "custom_id": f"t{i}", "style": 1, "label": label}


def modal(title: str = "A modal", rows: int = 1, label: str = "Text") -> dict[str, Any]:
    return {"custom_id": "m", "title": title,
            "components": [row(text_input(i, label)) for i in range(rows)]}


def message(**body: Any) -> Build:
    async def build(fake: FakeDiscord) -> Sent:
        return Sent("POST", f"/channels/{GENERAL}/messages", {"content": "x", **body})
    return build


def embed(**fields: Any) -> Build:
    return message(embeds=[{"title": "t", **fields}])


def callback(kind: str, body: dict[str, Any]) -> Build:
    """A callback to a fresh interaction: "command", "button", "modal" (a modal submit)."""

    async def build(fake: FakeDiscord) -> Sent:
        itx: FakeInteraction
        if kind == "command":
            itx = await fake.inject_interaction("ask", {"prompt": "hi"})
        elif kind == "button":
            itx = await fake.inject_component("press")
        else:
            itx = await fake.inject_modal_submit("m", {"t0": "hi"})
        return Sent("POST", f"/interactions/{itx.id}/{itx.token}/callback", body)
    return build


def commands(*defs: dict[str, Any]) -> Build:
    async def build(fake: FakeDiscord) -> Sent:
        return Sent("PUT", f"/applications/{fake.application_id}/commands", list(defs))
    return build


def command(**extra: Any) -> dict[str, Any]:
    return {"name": "ask", "type": 1, "description": "Ask", **extra}


def option(name: str, *, required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": 3, "description": name, "required": required, **extra}


async def edit_to_empty(fake: FakeDiscord) -> Sent:
    sent = await post_message(fake)
    return Sent("PATCH", f"/channels/{GENERAL}/messages/{sent['id']}", {"content": ""})


async def post_message(fake: FakeDiscord) -> dict[str, Any]:
    status, body = await send(fake, Sent("POST", f"/channels/{GENERAL}/messages",
                                         {"content": "x"}))
    assert status == 200
    return dict(body)


def thread(**body: Any) -> Build:
    async def build(fake: FakeDiscord) -> Sent:
        sent = await post_message(fake)
        return Sent("POST", f"/channels/{GENERAL}/messages/{sent['id']}/threads",
                    {"name": "t", **body})
    return build


EMBED_6000 = {"description": "d" * 4000, "fields": [{"name": "n", "value": "v" * 999}] * 2}
EMBED_6001 = {**EMBED_6000, "author": {"name": "a"}}

#: (name, request, where the error must be: a path into `errors`, or the code 50006)
REFUSED: list[tuple[str, Build, tuple[str, ...] | int]] = [
    # components
    ("six rows", message(components=[row(button(i)) for i in range(6)]), ("components",)),
    ("six buttons in a row", message(components=[row(*[button(i) for i in range(6)])]),
     ("components", "0", "components")),
    ("duplicate custom_id", message(components=[row(button(0), button(1, custom_id="c0"))]),
     ("components", "0", "components", "1", "custom_id")),
    ("label of 81", message(components=[row(button(0, label="l" * 81))]),
     ("components", "0", "components", "0", "label")),
    ("custom_id of 101", message(components=[row(button(0, custom_id="c" * 101))]),
     ("components", "0", "components", "0", "custom_id")),
    ("button without label or emoji",
     message(components=[row({"type": 2, "style": 1, "custom_id": "c"})]),
     ("components", "0", "components", "0", "label")),
    ("link button with custom_id",
     message(components=[row({"type": 2, "style": 5, "label": "l", "url": "https://a.example",
                              "custom_id": "c"})]),
     ("components", "0", "components", "0", "custom_id")),
    ("link button without url", message(components=[row({"type": 2, "style": 5, "label": "l"})]),
     ("components", "0", "components", "0", "url")),
    ("select with 26 options", message(components=[row(select(26))]),
     ("components", "0", "components", "0", "options")),
    ("select beside a button", message(components=[row(select(2), button(0))]),
     ("components", "0", "components")),
    # embeds and content
    ("field value of 1025", embed(fields=[{"name": "n", "value": "v" * 1025}]),
     ("embeds", "0", "fields", "0", "value")),
    ("26 fields", embed(fields=[{"name": "n", "value": "v"}] * 26), ("embeds", "0", "fields")),
    ("footer of 2049", embed(footer={"text": "f" * 2049}), ("embeds", "0", "footer", "text")),
    ("6,001 embed characters", message(embeds=[EMBED_6001]), ("embeds",)),
    ("title of 257", embed(title="t" * 257), ("embeds", "0", "title")),
    ("author name of 257", embed(author={"name": "a" * 257}), ("embeds", "0", "author", "name")),
    ("11 embeds", message(embeds=[{"title": "t"}] * 11), ("embeds",)),
    ("content of 2001", message(content="c" * 2001), ("content",)),
    # callbacks
    ("flags on a deferral", callback("command", {"type": 5, "data": {"flags": 4}}),
     ("data", "flags")),
    ("data on a deferred update", callback("button", {"type": 6, "data": {"flags": 64}}),
     ("data",)),
    ("type 8 to a slash command", callback("command", {"type": 8, "data": {"choices": []}}),
     ("type",)),
    ("a modal answering a modal submit", callback("modal", {"type": 9, "data": modal()}),
     ("type",)),
    ("update to a slash command", callback("command", {"type": 7, "data": {"content": "x"}}),
     ("type",)),
    ("component rules in a callback",
     callback("command", {"type": 4, "data": {"content": "x",
                                               "components": [row(button(0, label="l" * 81))]}}),
     ("data", "components", "0", "components", "0", "label")),
    # modals
    ("modal title of 46", callback("button", {"type": 9, "data": modal(title="t" * 46)}),
     ("data", "title")),
    ("modal with 0 components", callback("button", {"type": 9, "data": modal(rows=0)}),
     ("data", "components")),
    ("modal with 6 components", callback("button", {"type": 9, "data": modal(rows=6)}),
     ("data", "components")),
    ("modal label of 46", callback("button", {"type": 9, "data": modal(label="l" * 46)}),
     ("data", "components", "0", "components", "0", "label")),
    # messages that cannot be
    ("an edit to an empty message", edit_to_empty, 50006),
    ("an empty message", message(content=""), 50006),
    ("a reply to an unknown message",
     message(message_reference={"message_id": "123456789012345678"}), ("message_reference",)),
    # command registration
    ("capitals in a command name", commands(command(name="Ask")), ("0", "name")),
    ("a space in a command name", commands(command(name="ask me")), ("0", "name")),
    ("no description", commands({"name": "ask", "type": 1}), ("0", "description")),
    ("required option after an optional one",
     commands(command(options=[option("a"), option("b", required=True)])), ("0", "options")),
    ("26 options", commands(command(options=[option(f"o{i}") for i in range(26)])),
     ("0", "options")),
    ("min_length above max_length",
     commands(command(options=[option("a", min_length=10, max_length=5)])),
     ("0", "options", "0", "min_length")),
    ("capitals in an option name", commands(command(options=[option("Prompt")])),
     ("0", "options", "0", "name")),
    # threads
    ("auto_archive_duration of 42", thread(auto_archive_duration=42),
     ("auto_archive_duration",)),
    ("thread name of 101", thread(name="n" * 101), ("name",)),
]

ACCEPTED: list[tuple[str, Build]] = [
    ("a message with five rows of five buttons",
     message(components=[row(*[button(5 * r + i) for i in range(5)]) for r in range(5)])),
    ("a link button", message(components=[row({"type": 2, "style": 5, "label": "l",
                                                "url": "https://a.example"})])),
    ("an emoji-only button", message(components=[row({"type": 2, "style": 2, "custom_id": "e",
                                                      "emoji": {"name": "🔁"}})])),
    ("a select with 25 options", message(components=[row(select(25))])),
    ("6,000 embed characters", message(embeds=[EMBED_6000])),
    ("an ephemeral deferral", callback("command", {"type": 5, "data": {"flags": 64}})),
    ("a deferred update", callback("button", {"type": 6})),
    ("a modal for a button", callback("button", {"type": 9, "data": modal(rows=5)})),
    ("a loose reply to an unknown message",
     message(message_reference={"message_id": "123456789012345678",
                                "fail_if_not_exists": False})),
    ("commands by the rules",
     commands(command(options=[option("a", required=True),
                               option("b", min_length=1, max_length=5)]))),
    ("a thread archived after a day", thread(auto_archive_duration=1440)),
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(guilds=[GUILD]) as server, server.run_bot(
        server.make_bot(discord.Client)
    ):
        yield server


async def send(fake: FakeDiscord, sent: Sent) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
        sent.method, fake.api_base + sent.path, json=sent.body,
        headers={"Authorization": "Bot fake-token"},
    ) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


@pytest.mark.parametrize(("build", "where"), [pytest.param(b, w, id=n) for n, b, w in REFUSED])
async def test_discord_refuses(fake: FakeDiscord, build: Build,
                               where: tuple[str, ...] | int) -> None:
    sent = await build(fake)
    status, body = await send(fake, sent)
    assert status == 400
    [(record, refusal)] = fake.take_refusals()
    assert record.method == sent.method and record.path == sent.path
    assert body == refusal.body()
    if isinstance(where, int):
        assert body["code"] == where
        return
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    node = body["errors"]
    for key in where:
        node = node[key]
    assert node["_errors"] and all({"code", "message"} <= set(e) for e in node["_errors"])


@pytest.mark.parametrize("build", [pytest.param(b, id=n) for n, b in ACCEPTED])
async def test_discord_accepts(fake: FakeDiscord, build: Build) -> None:
    status, body = await send(fake, await build(fake))
    assert status < 300, body
    assert fake.refusals == []


async def test_an_untaken_refusal_fails_the_test() -> None:
    with pytest.raises(RefusedRequests, match="BASE_TYPE_MAX_LENGTH"):
        async with FakeDiscord(guilds=[GUILD]) as server:
            await send(server, await message(content="c" * 2001)(server))


async def test_the_fakes_answers_match_discords_schemas(fake: FakeDiscord) -> None:
    for _, build in ACCEPTED:
        await send(fake, await build(fake))
    member = GUILD.members[0]
    for schema, payload in [
        ("UserResponse", fake.bot_user.to_payload()),
        ("UserResponse", member.to_payload()),
        ("GuildResponse", GUILD.to_payload(fake.bot_user)),
        ("GuildRoleResponse", GUILD.roles[0].to_payload()),
        ("ThreadResponse", GUILD.channels[2].to_payload(GUILD.id, member.id)),
    ]:
        assert schema_errors(spec().schema_validator(schema), payload) == {}, schema
    assert fake.answer_mismatches == [], "\n".join(fake.answer_mismatches)


@pytest.mark.parametrize("layout", ["action rows", "labels"])
async def test_a_modal_submit_mirrors_the_modal_the_bot_sent(fake: FakeDiscord,
                                                              layout: str) -> None:
    press = await fake.inject_component("open")
    sent = modal(rows=2)
    if layout == "labels":
        sent["components"] = [
            {"type": 18, "label": "Text", "component": {"type": 4, "custom_id": f"t{i}",
                                                        "style": 1}}
            for i in range(2)
        ]
    status, _ = await send(fake, Sent("POST", f"/interactions/{press.id}/{press.token}/callback",
                                      {"type": 9, "data": sent}))
    assert status == 204
    submit = await fake.inject_modal_submit("m", {"t0": "hello", "t1": "there"})
    components = submit.payload["data"]["components"]
    if layout == "action rows":
        assert [c["type"] for c in components] == [1, 1]
        assert [c["components"][0]["value"] for c in components] == ["hello", "there"]
    else:
        assert [c["type"] for c in components] == [18, 18]
        assert [c["component"]["value"] for c in components] == ["hello", "there"]
    assert submit.payload["message"]["id"] == press.payload["message"]["id"]
    with pytest.raises(KeyError):
        await fake.inject_modal_submit("m", {"not-in-the-modal": "x"})
