"""Stop and Regenerate: buttons that survive restarts and reach the runner by a protocol.

Each button is a `DynamicItem` parsed back from its custom id, so a reply sent
before a restart still answers clicks. The buttons know nothing of how replies
run: they find the client's `ReplyControls` (the `AskRunner`) through
`runner_of`, which checks the type instead of trusting an untyped attribute.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

import discord

from bot.discord.errors import send_error

STOP_ID = "llm:stop:{ask_id}:{user_id}"
REGEN_ID = "llm:regen:{ask_id}"


@runtime_checkable
class ReplyControls(Protocol):
    """What the buttons ask of the reply runner."""

    async def stop(self, interaction: discord.Interaction, ask_id: int, owner_id: int) -> None: ...

    async def regenerate(self, interaction: discord.Interaction, ask_id: int) -> None: ...


def runner_of(interaction: discord.Interaction) -> ReplyControls:
    """The runner of the client that received `interaction`."""
    runner = getattr(interaction.client, "runner", None)
    if not isinstance(runner, ReplyControls):
        raise TypeError("this client has no reply runner")
    return runner


class StopButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:stop:(?P<ask>[0-9]+):(?P<user>[0-9]+)",
):
    """Stop a streaming reply; parsed from its custom id, so it survives restarts."""

    def __init__(self, ask_id: int, user_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Stop", style=discord.ButtonStyle.danger,
            custom_id=STOP_ID.format(ask_id=ask_id, user_id=user_id),
        ))
        self.ask_id = ask_id
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> StopButton:
        return cls(int(match["ask"]), int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).stop(interaction, self.ask_id, self.user_id)
        except Exception as exc:
            await send_error(interaction, exc)


class RegenerateButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llm:regen:(?P<ask>[0-9]+)",
):
    """Ask again with the same prompt and settings; the prompt is kept in the database."""

    def __init__(self, ask_id: int) -> None:
        super().__init__(discord.ui.Button(
            label="Regenerate", style=discord.ButtonStyle.secondary,
            custom_id=REGEN_ID.format(ask_id=ask_id),
        ))
        self.ask_id = ask_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RegenerateButton:
        return cls(int(match["ask"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await runner_of(interaction).regenerate(interaction, self.ask_id)
        except Exception as exc:
            await send_error(interaction, exc)


def _static(item: discord.ui.Item[Any]) -> discord.ui.View:
    """A view that is only sent, never stored: the dynamic items above handle clicks.

    A stopped view is not kept in discord.py's view store, so thousands of
    replies do not accumulate views in memory.
    """
    view = discord.ui.View(timeout=None)
    view.add_item(item)
    view.stop()
    return view


def stop_view(ask_id: int, user_id: int) -> discord.ui.View:
    return _static(StopButton(ask_id, user_id))


def regen_view(ask_id: int) -> discord.ui.View:
    return _static(RegenerateButton(ask_id))


