"""What a member can find out on their own: /help names every command and button, knob
help is one press away from /help and /settings for everyone, and every knob option is
described in the words of that same help."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discord

from bot import wording
from bot.lab.help import KNOB_HELP
from testing.discord_harness import Harness, running_bot

MEMBER = "0"  # no permissions at all


def synced(h: Harness) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in h.fake.commands.get(None, [])}


def custom_ids(data: dict[str, Any]) -> list[str]:
    return [c.get("custom_id", "") for row in data.get("components") or []
            for c in row.get("components", [])]


async def test_help_lists_every_command_and_button_and_leads_to_knob_help(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        commands = synced(h)
        help_ = (await (await h.command("help", permissions=MEMBER)).wait_response()).data
        text = help_["content"]
        assert text == wording.HELP and len(text) <= 2000
        for name, command in commands.items():
            assert f"/{name}" in text, name
            subs = [o["name"] for o in command.get("options", []) if o.get("type") == 1]
            for sub in subs:
                assert f"`{sub}`" in text or f"/{name} {sub}" in text, (name, sub)
        for button in ("Stop", "Regenerate", "Reply", "Continue", "Reasoning",
                       wording.INSPECT):
            assert f"**{button}**" in text, button
        # Knob help, for a member with no permissions, from /help and from /settings.
        assert "lab:knobhelp" in custom_ids(help_)
        settings = (await (await h.command("settings", permissions=MEMBER)).wait_response()).data
        assert "lab:knobhelp" in custom_ids(settings)
        press = await h.fake.inject_component("lab:knobhelp", permissions=MEMBER,
                                              channel_id=h.general)
        shown = (await press.wait_response()).data
        description = shown["embeds"][0]["description"]
        assert all(name in description for name in KNOB_HELP)


async def test_every_knob_option_speaks_the_knob_helps_words(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with running_bot(tiny_model_dir, tmp_path) as h:
        commands = synced(h)
        ask = {o["name"]: o["description"] for o in commands["ask"]["options"]}
        knobs_set = next(o for o in commands["knobs"]["options"] if o["name"] == "set")
        setting = {o["name"]: o["description"] for o in knobs_set["options"]}
    for name, help_ in KNOB_HELP.items():
        first = help_.what.split(". ")[0].split(" (")[0].split(": ")[0].split("; ")[0]
        if name != "stop":
            assert setting[name].startswith(first), (name, setting[name])
        if name not in ("stop", "max_new_tokens"):
            assert ask[name].startswith("This ask only: " + first), (name, ask[name])
    every = " ".join([*ask.values(), *setting.values()])
    assert "Scales the distribution" not in every and "Nucleus" not in every


async def choices(h: Harness, command: str, option: str, typed: str,
                  **kw: Any) -> list[str]:
    itx = await h.command(command, {option: typed}, autocomplete=option, **kw)
    response = await itx.wait_response()
    assert response.type == 8, response
    return [c["value"] for c in response.data["choices"]]


async def test_persona_names_model_names_and_variants_autocomplete(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    manage = str(discord.Permissions(manage_channels=True, manage_guild=True).value)
    async with running_bot(tiny_model_dir, tmp_path) as h:
        for name in ("Pirate", "Librarian", "Pirate King"):
            await (await h.command("system set", {"text": f"You are {name}."},
                                   permissions=manage)).wait_response()
            await (await h.command("system save", {"name": name},
                                   permissions=manage)).wait_response()
        assert await choices(h, "system load", "name", "pir") == ["Pirate", "Pirate King"]
        assert await choices(h, "model set", "name", "") == list(h.app.models.names)
        offered = await choices(h, "compare", "b", "temperature=1.5 to")
        assert "temperature=1.5 top_k=5" in offered
        assert all(o.startswith("temperature=1.5 to") for o in offered), offered
        assert "precise" in await choices(h, "compare", "a", "")
        await (await h.command("knobs set", {"top_k": 5}, permissions=manage)).wait_response()
        saved = await (await h.command("system save", {"name": "Pirate", "knobs": True},
                                       permissions=manage)).wait_response()
        assert "with 1 knob." in saved.data["content"], saved.data["content"]
